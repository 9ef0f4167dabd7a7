"""TensorFlow Serving's REST API: ``/v1/models/{name}[/versions/{v}|/labels/{l}]`` for status,
``.../metadata`` and ``...:predict``; same batcher, limits, metrics and API keys as ``/predict``.
Wire format in ``service.protocols.tfserving``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import dataplane
from service.deps import State, state_of
from service.http.auth import check_api_key
from service.http.direct_route import DirectRoute
from service.http.errors import ClientError
from service.protocols import tfserving
from service.protocols.body import parse_json, read_protocol_body
from service.state import ServiceState

router = APIRouter(prefix="/v1/models", tags=["tensorflow-serving"])
# The predict routes read the request themselves: FastAPI's parameter handling would only cost
# time on the hot path (service.http.direct_route).
predict_router = APIRouter(
    prefix="/v1/models", tags=["tensorflow-serving"], route_class=DirectRoute
)

#: Answer header naming the version that computed a prediction (a canary, say).
VERSION_HEADER = "X-Model-Version"


async def _predict(
    request: Request,
    state: ServiceState,
    name: str,
    version: str | None = None,
    label: str | None = None,
) -> JSONResponse:
    check_api_key(request, state.settings.api_keys)
    served, model = dataplane.choose_model(state, name, version=version, label=label)
    body = parse_json(await read_protocol_body(request, state.upload_limits))
    images_input, columnar = tfserving.parse_predict(
        body,
        max_images=state.settings.tensor_images_limit(served.limits.max_queue_size),
        max_pixels=state.settings.max_pixels,
    )
    probabilities = await dataplane.classify_tensors(request, state, served, model, images_input)
    return JSONResponse(
        tfserving.predict_answer(list(probabilities), columnar),
        headers={VERSION_HEADER: str(model.version)},
    )


@predict_router.post("/{name}:predict", summary="TF Serving predict (default version)")
async def predict(name: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name)


@predict_router.post(
    "/{name}/versions/{version}:predict", summary="TF Serving predict, one version"
)
async def predict_version(name: str, version: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name, version=version)


@predict_router.post(
    "/{name}/labels/{label}:predict", summary="TF Serving predict, a labelled version"
)
async def predict_label(name: str, label: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name, label=label)


def _status(state: ServiceState, name: str, version: int | None = None) -> dict[str, object]:
    served = state.repository.get(name)
    rows = served.store.statuses()
    if version is not None:
        rows = [row for row in rows if row.version == version]
    answer = tfserving.version_status(rows)
    if not answer["model_version_status"]:
        what = (
            f"version {version} of {name!r} is not managed (neither served, loading nor failed)"
            if version is not None
            else f"no managed version of {name!r}"
        )
        raise ClientError(
            404,
            f"{what}; served versions: "
            f"{', '.join(str(v) for v in sorted(served.store.served)) or 'none'}",
            reason="not_found",
        )
    return answer


@router.get("/{name}", summary="TF Serving model status: every managed version and its state")
async def status(name: str, state: State) -> dict[str, object]:
    return _status(state, name)


@router.get("/{name}/versions/{version}", summary="TF Serving model status, one version")
async def status_version(name: str, version: str, state: State) -> dict[str, object]:
    number = int(version) if version.isdigit() and len(version) < 12 else -1
    return _status(state, name, number)


@router.get("/{name}/labels/{label}", summary="TF Serving model status, a labelled version")
async def status_label(name: str, label: str, state: State) -> dict[str, object]:
    _, model = dataplane.choose_model(state, name, label=label)
    return _status(state, name, model.version)


@router.get("/{name}/metadata", summary="TF Serving model metadata (signature)")
async def metadata(name: str, state: State) -> dict[str, object]:
    served, _ = dataplane.choose_model(state, name)
    model = served.default_version()
    assert model is not None  # choose_model answered 503 otherwise
    return tfserving.metadata(model)


@router.get("/{name}/versions/{version}/metadata", summary="TF Serving metadata, one version")
async def metadata_version(name: str, version: str, state: State) -> dict[str, object]:
    _, model = dataplane.choose_model(state, name, version=version)
    return tfserving.metadata(model)


@router.get("/{name}/labels/{label}/metadata", summary="TF Serving metadata, a labelled version")
async def metadata_label(name: str, label: str, state: State) -> dict[str, object]:
    _, model = dataplane.choose_model(state, name, label=label)
    return tfserving.metadata(model)
