"""JSON request bodies of the tensor protocols: read within the limits (``gzip`` or ``deflate``
compressed ones inflated within the same limit), parsed with a clear 400."""

from __future__ import annotations

import json
import zlib

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.http.errors import ClientError
from service.http.uploads import UploadLimits, read_body

#: ``Content-Encoding`` values a body may carry, and the zlib window bits that inflate each
#: (``x-gzip``: RFC 9110 asks recipients to take it for ``gzip``). ``deflate`` is the zlib
#: format (RFC 9110, what tritonclient sends); a raw deflate stream, which some clients send
#: instead, is recognised by its missing zlib header.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = "gzip, deflate or identity (uncompressed)"
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


async def read_protocol_body(request: Request, limits: UploadLimits) -> bytes:
    """The raw body, inflated when ``Content-Encoding`` is ``gzip`` or ``deflate``.

    413 when the body, or what it inflates to, passes ``limits.max_body_bytes``; 408 when it
    arrives too slowly; 400 for a corrupt or truncated compressed stream; 415 for any other
    encoding, naming the accepted ones.
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity") and encoding not in ENCODINGS:
        raise ClientError(
            415,
            f"Content-Encoding {encoding[:20]!r} is not accepted; send {ACCEPTED}",
            reason="unsupported",
        )
    body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
    if encoding in ENCODINGS:
        # Off the event loop: up to the limit of output (tens of ms at 10 MiB); zlib lets go
        # of the GIL while it inflates.
        return await run_in_threadpool(inflate, body, encoding, limits.max_body_bytes)
    return body


def inflate(data: bytes, encoding: str, limit_bytes: int) -> bytes:
    """``data`` decompressed as ``encoding`` (a key of :data:`ENCODINGS`), never holding more
    than ``limit_bytes`` + 1 bytes of output: 413 as soon as the output passes the limit (a
    compression bomb stops there), 400 for a corrupt or truncated stream. Concatenated gzip
    members (RFC 1952) are inflated one after the other, as ``gunzip`` does."""
    wbits = ENCODINGS[encoding]
    if encoding == "deflate" and not _has_zlib_header(data):
        wbits = RAW_DEFLATE_WBITS
    chunks: list[bytes] = []
    produced = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            # max_length bounds the output buffer itself: the bomb is never inflated past it.
            chunk = inflater.decompress(rest, limit_bytes + 1 - produced)
        except zlib.error as exc:
            raise _corrupt(encoding, str(exc)) from None
        produced += len(chunk)
        if produced > limit_bytes:
            raise ClientError(
                413,
                f"the {encoding} request body inflates past the limit of {limit_bytes} bytes "
                "(IMGCLS_MAX_UPLOAD_BYTES); send less per request",
                reason="too_large",
            )
        chunks.append(chunk)
        if not inflater.eof:
            raise _corrupt(encoding, "the body ends before the compressed stream does")
        rest = inflater.unused_data
        if not rest:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if wbits != ENCODINGS["gzip"]:
            raise _corrupt(encoding, f"{len(rest)} bytes follow the end of the compressed stream")


def _has_zlib_header(data: bytes) -> bool:
    """RFC 1950: method 8 (deflate) in the low nibble, and the two bytes a multiple of 31."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _corrupt(encoding: str, problem: str) -> ClientError:
    return ClientError(
        400,
        f"the {encoding} request body is not a valid {encoding} stream ({problem[:120]}); "
        "compress the whole body, or send it uncompressed",
        reason="bad_request",
    )


def parse_json(data: bytes) -> object:
    """``data`` as JSON; 400 saying where it breaks.

    orjson first: a V2 tensor of one 28x28 RGB image (2,352 numbers) parses in ~27 µs instead
    of ~190 with ``json.loads`` (BENCHMARKS.md, issue 23's levers). What orjson refuses (NaN
    and Infinity literals, lone surrogates, numbers that overflow a double, nesting past 1024)
    goes to ``json.loads`` as before, so those bodies get the same answer and message as they
    did. One difference remains: orjson reads an integer beyond 64 bits as a float, which no
    pixel check tells apart (both are out of range: the same 400).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
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
