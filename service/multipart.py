"""``multipart/form-data`` parsed straight into bytes, with python-multipart's streaming parser.

Starlette's form parser writes every file part into a ``SpooledTemporaryFile`` through an
``UploadFile`` and hands back a ``FormData``: right for arbitrary forms, but on ``/predict`` the
body is already in memory, bounded by ``IMGCLS_MAX_UPLOAD_BYTES``, and the service only wants
each image's bytes. Creating, writing, seeking and reading a spooled file per upload was about a
fifth of the event loop's CPU per request (BENCHMARKS.md, "Per-request CPU budget").

The limits and the error messages are Starlette's (too many files, too many fields, a non-file
part over its size, a part without a name, invalid data), so clients see the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not valid ``multipart/form-data`` or breaks a limit; the message says how."""


@dataclass(slots=True)
class FilePart:
    """One part that carried a ``filename`` (possibly empty): its field, name and bytes."""

    field_name: str
    filename: str
    data: bytes


@dataclass(slots=True)
class _Current:
    disposition: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""
    field_name: str = ""
    filename: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


def parse_file_parts(
    body: bytes,
    content_type: str,
    *,
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
) -> list[FilePart]:
    """Every file part of ``body``, in order (form fields without a filename are checked
    against their limits and dropped).

    Args:
        body: The whole request body.
        content_type: The request's ``Content-Type`` header (its ``boundary`` and ``charset``).
        max_files: Most parts with a filename.
        max_fields: Most parts without one.
        max_field_bytes: Largest part without a filename, in bytes (file parts are bounded
            only by the body's own limit).

    Raises:
        MultipartError: With Starlette's message for the same problem.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("Missing boundary in multipart.")
    charset = _decode(params.get(b"charset", b"utf-8"), "latin-1")
    try:
        b"".decode(charset)
    except LookupError:
        charset = "latin-1"

    files: list[FilePart] = []
    counts = {"files": 0, "fields": 0}
    part = _Current()

    def on_part_begin() -> None:
        nonlocal part
        part = _Current()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        if part.header_name.lower() == b"content-disposition":
            part.disposition = part.header_value
        part.header_name = b""
        part.header_value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        part.field_name = _decode(options[b"name"], charset)
        if b"filename" in options:
            counts["files"] += 1
            if counts["files"] > max_files:
                raise MultipartError(f"Too many files. Maximum number of files is {max_files}.")
            part.filename = _decode(options[b"filename"], charset)
        else:
            counts["fields"] += 1
            if counts["fields"] > max_fields:
                raise MultipartError(f"Too many fields. Maximum number of fields is {max_fields}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.size += end - start
        if part.filename is None and part.size > max_field_bytes:
            raise MultipartError(f"Part exceeded maximum size of {int(max_field_bytes / 1024)}KB.")
        part.chunks.append(data[start:end])

    def on_part_end() -> None:
        if part.filename is not None:
            data = part.chunks[0] if len(part.chunks) == 1 else b"".join(part.chunks)
            files.append(FilePart(part.field_name, part.filename, data))

    callbacks: dict[str, Callable[..., None]] = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise MultipartError("Invalid multipart data.") from None
    return files
