"""``POST /predict``: images in (multipart ``file`` fields or a raw ``image/*`` body), top-k out.

Flow: size limits -> body -> decode each image on the decode pool (off the event loop; tiny
ones on the loop itself) -> one queue item per image -> the batcher's model call -> top-k per
image, in request order.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.batching import (
    BatchFunctionError,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
)
from service.deps import get_state
from service.disconnect import client_gone, unless_disconnected
from service.errors import ClientError
from service.images import ImageError, declared_pixels, decode_image, sniff_format
from service.inference import model_ref, top_k
from service.model_store import LoadedModel
from service.state import Prediction, ServiceState

router = APIRouter(tags=["inference"])

FIELD_NAME = "file"
MAX_FILENAME_CHARS = 255
NO_MODEL_HELP = (
    "no model is ready yet: publish one with `python training/train.py` "
    "(the service loads it within its poll interval)"
)

State = Annotated[ServiceState, Depends(get_state)]

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


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def check_api_key(request: Request, state: ServiceState) -> None:
    """When API keys are configured, require one (``X-API-Key`` or ``Authorization: Bearer``)."""
    keys = state.settings.api_keys
    if not keys:
        return
    offered = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not offered and auth.lower().startswith("bearer "):
        offered = auth[7:].strip()
    offered_bytes = offered.encode()
    # Compare against every key, in constant time, so timing reveals neither key nor match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered_bytes, key.get_secret_value().encode())
    if not matched:
        raise ClientError(
            401,
            "missing or wrong API key: send it in the X-API-Key header",
            reason="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


def parse_top_k(request: Request, state: ServiceState) -> int:
    raw = request.query_params.get("top_k")
    if raw is None:
        return 5
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(
            400, f"top_k must be an integer, got {raw[:40]!r}", reason="bad_request"
        ) from None
    if not 1 <= value <= state.settings.max_top_k:
        raise ClientError(
            400,
            f"top_k must be between 1 and {state.settings.max_top_k}, got {value}",
            reason="bad_request",
        )
    return value


async def read_body(request: Request, limit_bytes: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit_bytes``,
    and with 408 when it has not fully arrived ``timeout_s`` seconds after reading began
    (slow or stalled clients would otherwise hold their connection and memory forever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError(
                400, "Content-Length must be a non-negative integer", reason="bad_request"
            )
        if int(declared) > limit_bytes:
            raise ClientError(
                413,
                f"the request body is {int(declared)} bytes; the limit is {limit_bytes} bytes",
                reason="too_large",
            )
    try:
        if timeout_s is None:
            return await _read_stream(request, limit_bytes)
        return await asyncio.wait_for(_read_stream(request, limit_bytes), timeout_s)
    except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
        raise ClientError(
            408,
            f"the request body did not arrive within {timeout_s:g} s; send it faster, or smaller",
            reason="body_timeout",
            headers={"Connection": "close"},  # the rest of the body is not worth waiting for
        ) from None
    except ClientDisconnect:
        raise client_gone("while sending its body") from None


async def _read_stream(request: Request, limit_bytes: int) -> bytes:
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit_bytes:  # chunked bodies: stop reading at the limit
            raise ClientError(
                413,
                f"the request body exceeds the limit of {limit_bytes} bytes",
                reason="too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _clean_filename(name: str | None, index: int) -> str:
    """Keep filenames as labels only: strip any path, cap the length."""
    if not name:
        return f"image-{index + 1}"
    base = name.replace("\\", "/").rsplit("/", 1)[-1] or f"image-{index + 1}"
    return base[:MAX_FILENAME_CHARS]


async def read_uploads(request: Request, state: ServiceState) -> list[Upload]:
    """Multipart ``file`` fields or one raw ``image/*`` body, within the request limits."""
    settings = state.settings
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
        parser = MultiPartParser(
            request.headers,
            _once(body),
            max_files=settings.max_images_per_request,
            max_fields=16,
            max_part_size=64 * 1024,  # non-file fields only; files are bounded by the body limit
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ClientError(
                400,
                f"malformed multipart body: {exc.message} (parts must be separated by the "
                "boundary named in Content-Type and end with it; curl -F file=@digit.png ...)",
                reason="bad_request",
            ) from None
        try:
            files = [item for item in form.getlist(FIELD_NAME) if isinstance(item, UploadFile)]
            if not files:
                raise ClientError(
                    422,
                    f"multipart field {FIELD_NAME!r} with an image file is missing "
                    f"(curl -F {FIELD_NAME}=@digit.png ...)",
                    reason="bad_request",
                )
            return [
                Upload(_clean_filename(upload.filename, i), await upload.read())
                for i, upload in enumerate(files)
            ]
        finally:
            await form.close()
    if media_type.startswith("image/"):
        body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
        filename = _clean_filename(request.query_params.get("filename"), 0)
        return [Upload(filename, body)]
    raise ClientError(
        415,
        "send multipart/form-data with one or more 'file' fields, or a raw body with "
        f"Content-Type image/*; got {media_type or 'no Content-Type'!r}",
        reason="unsupported",
    )


def _decode_one(upload: Upload, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    return decode_image(upload.data, target_size=size, max_pixels=max_pixels).array


def _decode_inline(uploads: list[Upload], size: tuple[int, int], max_pixels: int) -> bool:
    """True when every upload and the model input have at most ``max_pixels`` pixels: such an
    image decodes in well under 0.1 ms, less than the hop to a decode thread and back costs
    (a GIL handoff that waits up to 5 ms while the event loop is busy)."""
    if size[0] * size[1] > max_pixels:
        return False
    for upload in uploads:
        pixels = declared_pixels(upload.data)
        if pixels is None or pixels > max_pixels:
            return False
    return True


async def decode_all(
    uploads: list[Upload], model: LoadedModel, state: ServiceState
) -> list[np.ndarray]:
    """Decode every upload, tiny ones on the loop and the rest on the decode pool; the first
    bad one fails the request (4xx)."""
    loop = asyncio.get_running_loop()
    settings = state.settings
    for index, upload in enumerate(uploads):
        # Cheap checks first, on the loop: no thread hop for empty or non-image bytes.
        if not upload.data or sniff_format(upload.data) is None:
            try:
                decode_image(
                    upload.data, target_size=model.input_size, max_pixels=settings.max_pixels
                )
            except ImageError as exc:
                raise _image_client_error(exc, index, upload, len(uploads)) from None
    if _decode_inline(uploads, model.input_size, settings.inline_decode_max_pixels):
        arrays: list[np.ndarray] = []
        for index, upload in enumerate(uploads):
            try:
                arrays.append(_decode_one(upload, model.input_size, settings.max_pixels))
            except ImageError as exc:
                raise _image_client_error(exc, index, upload, len(uploads)) from None
        return arrays
    futures = [
        loop.run_in_executor(
            state.decode_pool, _decode_one, upload, model.input_size, settings.max_pixels
        )
        for upload in uploads
    ]
    arrays = []
    for index, future in enumerate(futures):
        try:
            arrays.append(await future)
        except ImageError as exc:
            for other in futures[index + 1 :]:
                other.cancel()
            raise _image_client_error(exc, index, uploads[index], len(uploads)) from None
    return arrays


_REASONS = {400: "bad_request", 413: "too_large", 415: "unsupported"}


def _image_client_error(exc: ImageError, index: int, upload: Upload, count: int) -> ClientError:
    where = f"{upload.filename!r}" if count == 1 else f"image {index + 1} ({upload.filename!r})"
    return ClientError(
        exc.status_code, f"{where}: {exc.detail}", reason=_REASONS.get(exc.status_code)
    )


async def classify(arrays: list[np.ndarray], state: ServiceState) -> list[Prediction]:
    """Queue every image, await all; map batching errors to HTTP answers."""
    settings = state.settings
    retry = {"Retry-After": str(settings.retry_after_s)}
    tasks = [
        asyncio.ensure_future(state.batcher.submit(array, timeout_s=settings.request_timeout_s))
        for array in arrays
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except QueueFullError:
        raise ClientError(
            503,
            "the service is at capacity (queue full); retry after the Retry-After delay",
            headers=retry,
        ) from None
    except ShuttingDownError:
        raise ClientError(
            503, "the service is shutting down; retry on another replica", headers=retry
        ) from None
    except DeadlineExceededError:
        raise ClientError(
            504, f"no result within the {settings.request_timeout_s:g} s deadline; retry later"
        ) from None
    except BatchFunctionError as exc:
        cause = exc.__cause__ or exc
        if type(cause).__name__ == "NoModelError":
            raise ClientError(503, NO_MODEL_HELP, reason="no_model", headers=retry) from None
        raise ClientError(
            500, f"the model failed on this batch ({type(cause).__name__}); retry"
        ) from None
    finally:
        for task in tasks:  # one image failed: don't leave the others queued for nobody
            task.cancel()


@router.post(
    "/predict",
    summary="Classify one or more images",
    openapi_extra=_REQUEST_BODY_DOC,
    responses={
        400: {"description": "bad request (malformed body, corrupt image, bad top_k)"},
        401: {"description": "API key required"},
        413: {"description": "body or image too large"},
        415: {"description": "not a supported image format"},
        422: {"description": "multipart field 'file' missing"},
        503: {"description": "no model ready, queue full or shutting down (see Retry-After)"},
        504: {"description": "deadline passed"},
    },
)
async def predict(request: Request, state: State) -> JSONResponse:
    """Top-k classes for each uploaded image, in request order."""
    check_api_key(request, state)
    k = parse_top_k(request, state)
    model = state.store.current
    if model is None or state.shutting_down:
        detail = (
            NO_MODEL_HELP
            if model is None
            else "the service is shutting down; retry on another replica"
        )
        raise ClientError(
            503,
            detail,
            reason="no_model" if model is None else "shutting_down",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )
    uploads = await read_uploads(request, state)
    arrays = await decode_all(uploads, model, state)
    # A client that disconnects while queued frees its queue slots instead of being computed.
    predictions = await unless_disconnected(request.receive, classify(arrays, state))

    results = []
    top_labels: list[str] = []
    top_scores: list[float] = []
    for upload, prediction in zip(uploads, predictions, strict=True):
        ranked = top_k(prediction.probabilities, prediction.model.metadata.class_names, k)
        top_labels.append(ranked[0]["label"])
        top_scores.append(ranked[0]["score"])
        results.append({"filename": upload.filename, "predictions": ranked})
    state.metrics.observe_predictions(top_labels, top_scores)
    return JSONResponse({"model": model_ref(predictions[0].model), "results": results})
