"""``GET /models/{version}/report/{file}`` (default model) and
``/models/{name}/versions/{version}/report/{file}``: a published version's training report.

Only the report files training writes (curves, confusion matrix, per-class metrics, first-layer
filters) of versions the store lists are served; names come from a fixed list, and the resolved
path must stay inside the model repository, so no request can reach any other file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from contract.names import REPORT_DIR, REPORT_FILES
from service.deps import State
from service.http.errors import ClientError
from service.state import ServiceState

router = APIRouter(tags=["models"])

#: The files training/reports.py writes, with their media types; nothing else is served.


def report_path(state: ServiceState, name: str, version: str, file: str) -> Path:
    """The checked path of one report file; ClientError 404 for anything not served."""
    if file not in REPORT_FILES:
        raise ClientError(
            404, f"no report file {file[:60]!r}; one of: {', '.join(sorted(REPORT_FILES))}"
        )
    served = state.repository.get(name)
    listed = {row.version for row in served.store.statuses() if row.state != "invalid"}
    if not version.isdigit() or int(version) not in listed:
        raise ClientError(
            404,
            f"no version {version[:20]!r} of {name!r}; GET /models lists them",
        )
    root = state.settings.models_dir.resolve()
    path = (served.store.model_dir / str(int(version)) / REPORT_DIR / file).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ClientError(404, f"version {int(version)} has no {file} in its report")
    return path


async def _report_response(path: Path, file: str) -> Response:
    data = await asyncio.to_thread(path.read_bytes)
    return Response(
        data,
        media_type=REPORT_FILES[file],
        headers={"Cache-Control": "max-age=60", "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/models/{version}/report/{file}",
    summary="A training report file of a published version of the default model",
    responses={404: {"description": "unknown version or report file"}},
)
async def report_file(version: str, file: str, state: State) -> Response:
    path = report_path(state, state.repository.default_name, version, file)
    return await _report_response(path, file)


@router.get(
    "/models/{name}/versions/{version}/report/{file}",
    summary="A training report file of a published version of any model",
    responses={404: {"description": "unknown model, version or report file"}},
)
async def model_report_file(name: str, version: str, file: str, state: State) -> Response:
    path = report_path(state, name, version, file)
    return await _report_response(path, file)
