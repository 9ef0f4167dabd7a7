"""The native protocol: images in (multipart ``file`` fields or a raw ``image/*`` body), top-k
out. ``POST /predict`` serves the default model; ``/models/{name}/predict`` any model of the
repository, with ``/versions/{v}`` or ``/labels/{label}`` to pin one.

Flow: API key, ``top_k`` -> model version -> body -> decode -> the model's batcher -> top-k per
image, in request order.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import dataplane
from service.deps import state_of
from service.http.auth import check_api_key
from service.http.direct_route import DirectRoute
from service.http.uploads import FIELD_NAME, read_uploads
from service.serving.inference import model_ref, top_k
from service.state import ServiceState

# DirectRoute: the endpoints read the request themselves; FastAPI's parameter handling would
# only cost time on the hot path.
router = APIRouter(tags=["inference"], route_class=DirectRoute)

_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD_NAME],
                    "properties": {
                        FIELD_NAME: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more images (PNG, JPEG, WebP, BMP, GIF)",
                        }
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad request (malformed body, corrupt image, bad top_k)"},
    401: {"description": "API key required"},
    404: {"description": "unknown model, version or label (the answer lists what exists)"},
    413: {"description": "body or image too large"},
    415: {"description": "not a supported image format"},
    422: {"description": "multipart field 'file' missing"},
    503: {"description": "no model ready, queue full or shutting down (see Retry-After)"},
    504: {"description": "deadline passed"},
}


async def _predict(
    request: Request,
    state: ServiceState,
    name: str | None = None,
    version: str | None = None,
    label: str | None = None,
) -> JSONResponse:
    check_api_key(request, state.settings.api_keys)
    k = dataplane.parse_top_k(request.query_params.get("top_k"), state.settings.max_top_k)
    served, model = dataplane.choose_model(state, name, version=version, label=label)
    uploads = await read_uploads(request, state.upload_limits)
    images = await dataplane.decode_uploads(state, uploads, model)
    predictions = await dataplane.predict(
        request, state, served, model, images, [upload.data for upload in uploads]
    )
    class_names = model.metadata.class_names
    request_id, ids = dataplane.answer_ids(request, len(predictions))
    results = [
        {
            "id": prediction_id,
            "filename": upload.filename,
            "predictions": top_k(p.probabilities, class_names, k),
        }
        for prediction_id, upload, p in zip(ids, uploads, predictions, strict=True)
    ]
    return JSONResponse({"id": request_id, "model": model_ref(model), "results": results})


@router.post(
    "/predict",
    summary="Classify one or more images with the default model",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_RESPONSES,
)
async def predict(request: Request) -> JSONResponse:
    """Top-k classes (at most every class) for each uploaded image, in request order."""
    return await _predict(request, state_of(request))


@router.post(
    "/models/{name}/predict",
    summary="Classify images with a model of the repository (its default version)",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_RESPONSES,
)
async def predict_model(name: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name)


@router.post(
    "/models/{name}/versions/{version}/predict",
    summary="Classify images with one version of a model",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_RESPONSES,
)
async def predict_version(name: str, version: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name, version=version)


@router.post(
    "/models/{name}/labels/{label}/predict",
    summary="Classify images with the version a label points to (e.g. stable, canary)",
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_RESPONSES,
)
async def predict_label(name: str, label: str, request: Request) -> JSONResponse:
    return await _predict(request, state_of(request), name, label=label)
