"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import State
from service.http.errors import ClientError
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={404: {"description": "metrics are served on a separate port (METRICS_PORT)"}},
)
async def metrics(state: State) -> Response:
    if state.settings.metrics_port is not None:
        # Kept off the public port: only the separate metrics server answers.
        raise ClientError(404, "not found: /metrics is not served on this port")
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
