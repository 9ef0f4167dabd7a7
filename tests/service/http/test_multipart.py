"""The in-memory multipart parser (``service.http.multipart``) answers what Starlette's form parser
answers: the same files, names and bytes, and the same refusal for the same broken body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.http.multipart import MultipartError, parse_file_parts

BOUNDARY = "----imgclsTestBoundary42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMITS = {"max_files": 3, "max_fields": 2, "max_field_bytes": 1024}


def part(
    name: str | None, data: bytes, filename: str | None = "a.png", extra: bytes = b""
) -> bytes:
    disposition = b"form-data"
    if name is not None:
        disposition += b'; name="' + name.encode() + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename.encode() + b'"'
    return (
        b"--"
        + BOUNDARY.encode()
        + b"\r\nContent-Disposition: "
        + disposition
        + b"\r\n"
        + extra
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + b"\r\n"
    )


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


def starlette_files(raw: bytes, content_type: str = CONTENT_TYPE) -> list[tuple[str, str, bytes]]:
    """What Starlette's parser gives for ``raw``: (field, filename, bytes) of each file part."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield raw

    async def parse() -> list[tuple[str, str, bytes]]:
        parser = MultiPartParser(
            Headers({"content-type": content_type}),
            stream(),
            max_files=LIMITS["max_files"],
            max_fields=LIMITS["max_fields"],
            max_part_size=LIMITS["max_field_bytes"],
        )
        form = await parser.parse()
        try:
            return [
                (field, value.filename or "", await value.read())
                for field, value in form.multi_items()
                if isinstance(value, UploadFile)
            ]
        finally:
            await form.close()

    return asyncio.run(parse())


def ours(raw: bytes, content_type: str = CONTENT_TYPE) -> list[tuple[str, str, bytes]]:
    return [
        (p.field_name, p.filename, p.data) for p in parse_file_parts(raw, content_type, **LIMITS)
    ]


PNG_LIKE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--almost-a-boundary\r\n"

VALID = {
    "one file": body(part("file", PNG_LIKE)),
    "three files": body(part("file", b"1"), part("file", b"22", "b.jpg"), part("file", b"")),
    "files and fields": body(
        part("comment", b"hello", filename=None), part("file", PNG_LIKE), part("other", b"x")
    ),
    "empty filename": body(part("file", b"data", filename="")),
    "utf-8 filename": body(part("file", b"data", filename="zif\u00e9r 7.png")),
    "path in filename": body(part("file", b"data", filename="C:\\scans\\seven.png")),
    "extra part headers": body(part("file", b"data", extra=b"X-Note: ignored\r\n")),
}


@pytest.mark.parametrize("case", list(VALID))
def test_same_files_as_starlette(case: str) -> None:
    raw = VALID[case]
    assert ours(raw) == starlette_files(raw)
    assert ours(raw)  # every case carries at least one file


def starlette_outcome(raw: bytes, content_type: str) -> tuple[str, object]:
    try:
        return "files", starlette_files(raw, content_type)
    except MultiPartException as exc:
        return "refused", exc.message


def our_outcome(raw: bytes, content_type: str) -> tuple[str, object]:
    try:
        return "files", ours(raw, content_type)
    except MultipartError as exc:
        return "refused", str(exc)


INVALID = {
    "too many files": (body(*[part("file", b"x")] * 4), CONTENT_TYPE),
    "too many fields": (body(*[part("f", b"x", filename=None)] * 3), CONTENT_TYPE),
    "field too large": (body(part("f", b"x" * 1025, filename=None)), CONTENT_TYPE),
    "part without a name": (body(part(None, b"x")), CONTENT_TYPE),
    "no boundary": (body(part("file", b"x")), "multipart/form-data"),
    "garbage": (b"this is not multipart at all", CONTENT_TYPE),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_same_refusal_as_starlette(case: str) -> None:
    raw, content_type = INVALID[case]
    outcome = our_outcome(raw, content_type)
    assert outcome[0] == "refused"
    assert outcome == starlette_outcome(raw, content_type)


# Starlette leaves the unfinished part's spooled file for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_body_is_refused_where_starlette_drops_the_part() -> None:
    """Starlette reads a body cut off before its closing boundary as a form without the
    unfinished part (so the client hears "field missing"); we refuse it as malformed."""
    raw = part("file", b"x")[:-2] + b"junk"  # no closing boundary
    assert starlette_outcome(raw, CONTENT_TYPE) == ("files", [])
    assert our_outcome(raw, CONTENT_TYPE) == (
        "refused",
        "the body ends before the closing boundary (truncated?)",
    )


def test_a_file_part_is_bounded_only_by_the_body() -> None:
    big = bytes(200_000)
    assert ours(body(part("file", big))) == [("file", "a.png", big)]
