"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.deps import get_state
from service.metrics import CONTENT_TYPE
from service.state import ServiceState

router = APIRouter(tags=["monitoring"])
State = Annotated[ServiceState, Depends(get_state)]


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
