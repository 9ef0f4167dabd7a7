"""``POST /explain``: one image in, top-k plus what the network looked at (Grad-CAM, feature maps).

Same inputs and errors as /predict (multipart ``file`` or a raw ``image/*`` body, ``top_k``,
API key), exactly one image, and ``label`` to explain a class other than the top one. ``model``,
``version`` and ``version_label`` choose what to explain as the model routes do (default: the
default model's default version). The model
computes the explanation itself (its ``gradcam`` and ``feature_maps`` endpoints); the call runs
on the explain thread, never in a /predict batch, one at a time with a short wait list: beyond
it, 503 + ``Retry-After`` (``imgcls_rejected_requests_total{reason="explain_busy"}``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from contract.names import GRADCAM_ENDPOINT
from service import dataplane
from service.deps import State
from service.http.auth import check_api_key
from service.http.disconnect import unless_disconnected
from service.http.errors import ClientError
from service.http.uploads import FIELD_NAME, read_uploads
from service.serving.bounded import BoundedRunner, RunnerBusyError
from service.serving.explain import explain_image
from service.serving.inference import model_ref
from service.serving.model_store import LoadedModel
from service.state import ServiceState

logger = logging.getLogger(__name__)
router = APIRouter(tags=["inference"])

#: Key of the per-app :class:`BoundedRunner` in ``ServiceState.extras`` (made on first use).
RUNNER_KEY = "explain_runner"

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
                            "type": "string",
                            "format": "binary",
                            "description": "exactly one image (PNG, JPEG, WebP, BMP, GIF)",
                        }
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def get_runner(state: ServiceState) -> BoundedRunner:
    runner = state.extras.get(RUNNER_KEY)
    if not isinstance(runner, BoundedRunner):
        max_waiting = state.settings.explain_max_waiting
        runner = BoundedRunner(max_waiting=max_waiting, concurrency=1, thread_name="explain")
        state.extras[RUNNER_KEY] = runner
    return runner


def explained_version(request: Request, state: ServiceState) -> LoadedModel:
    """The version the query names (``model``, ``version`` or ``version_label``); without one,
    the default version, never a canary's share of unpinned traffic."""
    params = request.query_params
    if params.get("version") and params.get("version_label"):
        raise ClientError(
            400,
            "give version or version_label, not both: each names a version to explain",
            reason="bad_request",
        )
    _, model = dataplane.choose_model(
        state,
        params.get("model") or None,
        version=params.get("version") or None,
        label=params.get("version_label") or None,
        split=False,
    )
    return model


def parse_label(request: Request, model: LoadedModel) -> int:
    """``?label=`` -> class index; absent -> -1 (the model explains its top class)."""
    label = request.query_params.get("label")
    if label is None or label == "":
        return -1
    names = model.metadata.class_names
    if label not in names:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ClientError(
            400,
            f"label {label[:40]!r} is not a class of this model; use one of: {shown}",
            reason="bad_request",
        )
    return names.index(label)


@router.post(
    "/explain",
    summary="Explain the classification of one image (Grad-CAM and first-layer feature maps)",
    openapi_extra=_REQUEST_BODY_DOC,
    responses={
        400: {"description": "bad request (not exactly one image, corrupt image, bad label)"},
        401: {"description": "API key required"},
        409: {"description": "the serving version was published without explanation endpoints"},
        413: {"description": "body or image too large"},
        415: {"description": "not a supported image format"},
        422: {"description": "multipart field 'file' missing"},
        503: {"description": "an explanation is running and the wait list is full (Retry-After)"},
        504: {"description": "no explanation slot within the deadline"},
    },
)
async def explain(request: Request, state: State) -> JSONResponse:
    """Top-k classes of one image, a Grad-CAM heatmap (PNG overlay and a 0..1 grid at the last
    conv layer's resolution) for the top class or ``label``, and the first layers' feature maps."""
    started = time.perf_counter()
    check_api_key(request, state.settings.api_keys)
    k = dataplane.parse_top_k(request.query_params.get("top_k"), state.settings.max_top_k)
    model = explained_version(request, state)
    dataplane.record_model(request, model)
    if not model.has_endpoint(GRADCAM_ENDPOINT):
        raise ClientError(
            409,
            f"version {model.version} of {model.name!r} was published without explanations; "
            "retrain to get them (python training/train.py); /predict still works",
        )
    class_index = parse_label(request, model)
    uploads = await read_uploads(request, state.upload_limits)
    if len(uploads) != 1:
        raise ClientError(
            400,
            f"/explain takes exactly one image, got {len(uploads)}; "
            "send one request per image (/predict takes several)",
            reason="bad_request",
        )
    (image,) = await dataplane.decode_uploads(state, uploads, model)
    retry = {"Retry-After": str(state.settings.retry_after_s)}
    try:
        # A client that hangs up while waiting gives its place back (a running job finishes).
        body: dict[str, Any] = await unless_disconnected(
            request.receive,
            get_runner(state).run(
                explain_image,
                model,
                image,
                class_index,
                k,
                wait_timeout_s=state.settings.request_timeout_s,
            ),
        )
    except RunnerBusyError:
        raise ClientError(
            503,
            "an explanation is already running and others are waiting; explanations run one "
            "at a time so they cannot slow down /predict: retry after the Retry-After delay",
            reason="explain_busy",
            headers=retry,
        ) from None
    except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11
        raise ClientError(
            504,
            f"no explanation slot within the {state.settings.request_timeout_s:g} s deadline; "
            "retry later",
            reason="deadline",
        ) from None
    except ClientError:
        raise  # the client hung up (499)
    except Exception as exc:
        logger.exception("explaining %r on version %d failed", uploads[0].filename, model.version)
        raise ClientError(
            500, f"the model failed to explain this image ({type(exc).__name__}); retry"
        ) from None
    return JSONResponse(
        {
            "model": model_ref(model),
            "filename": uploads[0].filename,
            **body,
            "duration_s": round(time.perf_counter() - started, 4),
        }
    )
