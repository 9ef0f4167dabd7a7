"""Reading a request's images: the body within its limits, multipart ``file`` fields or a raw
``image/*`` body.

Narrow arguments (the ASGI request, the limits), no routes: every protocol that receives
encoded images in a body (``/predict``, ``/explain``, the native model routes) reads them here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from service.http.disconnect import client_gone
from service.http.errors import ClientError
from service.http.multipart import MultipartError, parse_form
from service.serving.decode_step import Upload

FIELD_NAME = "file"
MAX_FILENAME_CHARS = 255
#: Non-file form fields tolerated beside the images (a comment, a CSRF token...).
MAX_OTHER_FIELDS = 16
MAX_OTHER_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Request limits, from the settings: body bytes, seconds for the body, images."""

    max_body_bytes: int
    body_timeout_s: float | None
    max_images: int


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
                f"the request body is {int(declared)} bytes; the limit is {limit_bytes} bytes "
                "(IMGCLS_MAX_UPLOAD_BYTES)",
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
    # ASGI messages straight from ``receive``: a body that came with its headers (the usual
    # small upload) is one message, returned without suspending or copying.
    receive = request.receive
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit_bytes:  # chunked bodies: stop reading at the limit
            raise ClientError(
                413,
                f"the request body exceeds the limit of {limit_bytes} bytes "
                "(IMGCLS_MAX_UPLOAD_BYTES)",
                reason="too_large",
            )
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def clean_filename(name: str | None, index: int) -> str:
    """Keep filenames as labels only: strip any path, cap the length."""
    if not name:
        return f"image-{index + 1}"
    base = name.replace("\\", "/").rsplit("/", 1)[-1] or f"image-{index + 1}"
    return base[:MAX_FILENAME_CHARS]


async def read_uploads(request: Request, limits: UploadLimits) -> list[Upload]:
    """Multipart ``file`` fields or one raw ``image/*`` body, within ``limits``."""
    uploads, _ = await read_uploads_and_fields(request, limits)
    return uploads


async def read_uploads_and_fields(
    request: Request, limits: UploadLimits
) -> tuple[list[Upload], dict[str, str]]:
    """:func:`read_uploads`, and the form's other fields (a raw body: the query string's)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        return _parse_multipart(content_type, body, limits.max_images)
    if media_type.startswith("image/"):
        body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        filename = clean_filename(request.query_params.get("filename"), 0)
        return [Upload(filename, body)], dict(request.query_params)
    raise ClientError(
        415,
        f"send multipart/form-data with one or more {FIELD_NAME!r} fields, or a raw body with "
        f"Content-Type image/*; got {media_type or 'no Content-Type'!r}",
        reason="unsupported",
    )


def _parse_multipart(
    content_type: str, body: bytes, max_images: int
) -> tuple[list[Upload], dict[str, str]]:
    try:
        parts, fields = parse_form(
            body,
            content_type,
            max_files=max_images,
            max_fields=MAX_OTHER_FIELDS,
            max_field_bytes=MAX_OTHER_FIELD_BYTES,
        )
    except MultipartError as exc:
        raise _multipart_error(str(exc), max_images) from None
    files = [part for part in parts if part.field_name == FIELD_NAME]
    if not files:
        raise ClientError(
            422,
            f"multipart field {FIELD_NAME!r} with an image file is missing "
            f"(curl -F {FIELD_NAME}=@digit.png ...)",
            reason="bad_request",
        )
    uploads = [Upload(clean_filename(part.filename, i), part.data) for i, part in enumerate(files)]
    return uploads, fields


def _multipart_error(message: str, max_images: int) -> ClientError:
    """Too many images is told the limit and the setting; other problems how parts look."""
    if message.startswith("Too many files"):
        return ClientError(
            400,
            f"too many files: this service takes at most {max_images} images per request "
            "(the IMGCLS_MAX_IMAGES_PER_REQUEST setting raises it); send the rest in another "
            "request",
            reason="bad_request",
        )
    if message.startswith("Part exceeded maximum size"):
        return ClientError(
            400,
            f"a form field without a filename is over {MAX_OTHER_FIELD_BYTES // 1024} KB: send "
            f"each image as a file part (curl -F {FIELD_NAME}=@digit.png ...); other fields "
            f"take at most {MAX_OTHER_FIELD_BYTES // 1024} KB",
            reason="bad_request",
        )
    return ClientError(
        400,
        f"malformed multipart body: {message} (parts must be separated by the boundary named "
        f"in Content-Type and end with it; curl -F {FIELD_NAME}=@digit.png ...)",
        reason="bad_request",
    )
