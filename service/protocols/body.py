"""JSON request bodies of the tensor protocols: read within the limits, parsed with a clear 400."""

from __future__ import annotations

import json

from starlette.requests import Request

from service.http.errors import ClientError
from service.http.uploads import UploadLimits, read_body


async def read_protocol_body(request: Request, limits: UploadLimits) -> bytes:
    """The raw body (413 over the upload limit, 408 when too slow); only identity encoding."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ClientError(
            415,
            f"Content-Encoding {encoding[:20]!r} is not accepted; send the body uncompressed",
            reason="unsupported",
        )
    return await read_body(request, limits.max_body_bytes, limits.body_timeout_s)


def parse_json(data: bytes) -> object:
    """``data`` as JSON; 400 saying where it breaks."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise ClientError(
            400,
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            reason="bad_request",
        ) from None
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise ClientError(
            400,
            "the body is not valid JSON (UTF-8, nesting at most ~1000 deep)",
            reason="bad_request",
        ) from None
