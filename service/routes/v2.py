"""The Open Inference Protocol V2 (KServe V2 / Triton) over REST: server and model health,
metadata and configuration, ``/v2/models/{name}[/versions/{v}]/infer`` with JSON or binary
tensors (gzip or deflate compressed bodies too), and Triton's model repository extension. Same
batcher, limits, metrics and API keys as ``/predict``; wire format in ``service.protocols.v2``
and ``service.protocols.v2_repository``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import dataplane
from service.deps import State, state_of
from service.http.auth import check_api_key
from service.http.direct_route import DirectRoute
from service.protocols import v2, v2_repository
from service.protocols.body import parse_json, read_protocol_body
from service.state import ServiceState

router = APIRouter(prefix="/v2", tags=["open-inference-v2"])
# The inference routes read the request themselves: FastAPI's parameter handling would only
# cost time on the hot path (service.http.direct_route).
infer_router = APIRouter(prefix="/v2", tags=["open-inference-v2"], route_class=DirectRoute)


@router.get("", summary="Server metadata: name, version, extensions")
async def server_metadata() -> dict[str, Any]:
    return {"name": v2.SERVER_NAME, "version": v2.SERVER_VERSION, "extensions": list(v2.EXTENSIONS)}


@router.get("/health/live", summary="200 while the process lives")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="200 when every model found is read and the default served")
async def ready(state: State) -> JSONResponse:
    is_ready = state.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _metadata(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    served, model = dataplane.choose_model(state, name, version=version)
    if version is None:
        model = served.default_version() or model
    return v2.model_metadata(name, list(served.store.served), model)


@router.get("/models/{name}", summary="Model metadata: inputs, outputs, datatypes, shapes")
async def model_metadata(name: str, state: State) -> dict[str, Any]:
    return _metadata(state, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def version_metadata(name: str, version: str, state: State) -> dict[str, Any]:
    return _metadata(state, name, version)


def _config(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    # Unpinned: the version unpinned requests get, never a canary's share (split=False).
    served, model = dataplane.choose_model(state, name, version=version, split=False)
    return v2_repository.served_config(name, served, model, state.settings)


@router.get("/models/{name}/config", summary="Model configuration (Triton's ModelConfig)")
async def model_config(name: str, state: State) -> dict[str, Any]:
    return _config(state, name, None)


@router.get("/models/{name}/versions/{version}/config", summary="Configuration of one version")
async def version_config(name: str, version: str, state: State) -> dict[str, Any]:
    return _config(state, name, version)


def _ready(state: ServiceState, name: str, version: str | None) -> JSONResponse:
    served = state.repository.get(name)  # 404 for an unknown model
    if version is None:
        is_ready = served.ready
    else:
        number = int(version) if version.isdigit() and len(version) < 12 else -1
        is_ready = served.batcher.running and number in served.store.served
    is_ready = is_ready and not state.shutting_down
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}/ready", summary="200 when the model has a served version")
async def model_ready(name: str, state: State) -> JSONResponse:
    return _ready(state, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="200 when that version is served")
async def version_ready(name: str, version: str, state: State) -> JSONResponse:
    return _ready(state, name, version)


async def _infer(
    request: Request, state: ServiceState, name: str, version: str | None = None
) -> Response:
    check_api_key(request, state.settings.api_keys)
    served, model = dataplane.choose_model(state, name, version=version)
    body = await read_protocol_body(request, state.upload_limits)
    json_part, binary = v2.split_body(body, request.headers.get(v2.HEADER_LENGTH))
    infer_request = v2.parse_infer(
        parse_json(json_part),
        binary,
        max_images=state.settings.tensor_images_limit(served.limits.max_queue_size),
        max_pixels=state.settings.max_pixels,
    )
    probabilities = await dataplane.classify_tensors(
        request, state, served, model, infer_request.images
    )
    request_id, _ = dataplane.answer_ids(request, 0)
    answer, tail = v2.infer_answer(infer_request, model, probabilities, request_id)
    if not tail and not infer_request.output.binary:
        return JSONResponse(answer)
    head = json.dumps(answer, separators=(",", ":")).encode()
    return Response(
        head + tail,
        media_type="application/octet-stream",
        headers={v2.HEADER_LENGTH: str(len(head))},
    )


@infer_router.post("/models/{name}/infer", summary="Inference (the default version)")
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, state_of(request), name)


@infer_router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version")
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(request, state_of(request), name, version)


# --- Triton's model repository extension ------------------------------------------------------


@router.post("/repository/index", summary="Every model and managed version, with its state")
async def repository_index(request: Request, state: State) -> list[dict[str, str]]:
    body = await read_protocol_body(request, state.upload_limits)
    ready_only = v2_repository.parse_index_request(parse_json(body) if body.strip() else None)
    repository = state.repository
    return v2_repository.repository_index(
        {name: repository.models[name].store.statuses() for name in repository.names()},
        ready_only=ready_only,
    )


def _model_control_refused(state: ServiceState, name: str, action: str) -> Exception:
    settings = state.settings
    return v2_repository.model_control_refused(
        action, name, settings.models_dir, settings.poll_interval_s
    )


@router.post(
    "/repository/models/{name}/load",
    summary="Refused: models are loaded from the repository folder (Triton's poll mode)",
    responses={400: {"description": "explicit model control is off; the answer says why"}},
)
async def load(name: str, state: State) -> JSONResponse:
    raise _model_control_refused(state, name, "load")


@router.post(
    "/repository/models/{name}/unload",
    summary="Refused: versions are unloaded by editing serving.yaml (Triton's poll mode)",
    responses={400: {"description": "explicit model control is off; the answer says why"}},
)
async def unload(name: str, state: State) -> JSONResponse:
    raise _model_control_refused(state, name, "unload")
