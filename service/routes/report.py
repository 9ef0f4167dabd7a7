"""``GET /models/{version}/report/{file}``: a published version's training report.

Only the report files training writes (curves, confusion matrix, per-class metrics, first-layer
filters) of versions the store lists are served; names come from a fixed list, and the resolved
path must stay inside the model repository, so no request can reach any other file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from service.deps import get_state
from service.errors import ClientError
from service.state import ServiceState

router = APIRouter(tags=["models"])
State = Annotated[ServiceState, Depends(get_state)]

REPORT_DIR = "report"
#: The files training/reports.py writes, with their media types; nothing else is served.
REPORT_FILES = {
    "curves.png": "image/png",
    "confusion_matrix.png": "image/png",
    "confusion_matrix.json": "application/json",
    "per_class.json": "application/json",
    "filters.png": "image/png",
}


def report_path(state: ServiceState, version: str, name: str) -> Path:
    """The checked path of one report file; ClientError 404 for anything not served."""
    if name not in REPORT_FILES:
        raise ClientError(
            404, f"no report file {name[:60]!r}; one of: {', '.join(sorted(REPORT_FILES))}"
        )
    listed = {row.version for row in state.store.statuses() if row.state != "invalid"}
    if not version.isdigit() or int(version) not in listed:
        raise ClientError(
            404,
            f"no version {version[:20]!r} of {state.settings.model_name!r}; GET /models lists them",
        )
    root = state.settings.models_dir.resolve()
    path = (state.settings.model_dir / str(int(version)) / REPORT_DIR / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ClientError(404, f"version {int(version)} has no {name} in its report")
    return path


@router.get(
    "/models/{version}/report/{name}",
    summary="A training report file of a published version",
    responses={404: {"description": "unknown version or report file"}},
)
async def report_file(version: str, name: str, state: State) -> Response:
    path = report_path(state, version, name)
    data = await asyncio.to_thread(path.read_bytes)
    return Response(
        data,
        media_type=REPORT_FILES[name],
        headers={"Cache-Control": "max-age=60", "X-Content-Type-Options": "nosniff"},
    )
