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
    against their limits and dropped). See :func:`parse_form`."""
    files, _ = parse_form(
        body,
        content_type,
        max_files=max_files,
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
    )
    return files


def parse_form(
    body: bytes,
    content_type: str,
    *,
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
) -> tuple[list[FilePart], dict[str, str]]:
    """Every file part of ``body``, in order, and the form fields without a filename (the
    first value of each name, decoded with the body's charset).

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
    collector = _FilePartCollector(charset, max_files, max_fields, max_field_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise MultipartError("Invalid multipart data.") from None
    if not collector.complete:
        # python-multipart's finalize() accepts a body cut off mid-part (its unfinished part
        # is dropped): without this, a truncated upload would look like a missing field.
        raise MultipartError("the body ends before the closing boundary (truncated?)")
    return collector.files, collector.fields


class _FilePartCollector:
    """The parser's callbacks: collect file parts, check the limits of the others."""

    def __init__(self, charset: str, max_files: int, max_fields: int, max_field_bytes: int):
        self.files: list[FilePart] = []
        self.fields: dict[str, str] = {}
        self._charset = charset
        self._max_files = max_files
        self._max_fields = max_fields
        self._max_field_bytes = max_field_bytes
        self._file_count = 0
        self._field_count = 0
        self._part = _Current()
        #: True once the closing boundary (``--boundary--``) has been read.
        self.complete = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._part = _Current()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.header_value += data[start:end]

    def on_header_end(self) -> None:
        part = self._part
        if part.header_name.lower() == b"content-disposition":
            part.disposition = part.header_value
        part.header_name = b""
        part.header_value = b""

    def on_headers_finished(self) -> None:
        part = self._part
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        part.field_name = _decode(options[b"name"], self._charset)
        if b"filename" in options:
            self._file_count += 1
            if self._file_count > self._max_files:
                raise MultipartError(
                    f"Too many files. Maximum number of files is {self._max_files}."
                )
            part.filename = _decode(options[b"filename"], self._charset)
        else:
            self._field_count += 1
            if self._field_count > self._max_fields:
                raise MultipartError(
                    f"Too many fields. Maximum number of fields is {self._max_fields}."
                )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.filename is None and part.size > self._max_field_bytes:
            raise MultipartError(
                f"Part exceeded maximum size of {int(self._max_field_bytes / 1024)}KB."
            )
        part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part = self._part
        if part.filename is not None:
            data = part.chunks[0] if len(part.chunks) == 1 else b"".join(part.chunks)
            self.files.append(FilePart(part.field_name, part.filename, data))
        else:
            value = _decode(b"".join(part.chunks), self._charset)
            self.fields.setdefault(part.field_name, value)

    def on_end(self) -> None:
        self.complete = True
