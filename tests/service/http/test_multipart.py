"""The in-memory multipart parser (``service.http.multipart``) answers what Starlette's form parser
answers: the same files, names and bytes, and the same refusal for the same broken body; and it
hands back the form's other fields (``label`` of a feedback upload), decoded with the body's
charset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.http.multipart import FilePart, MultipartError, parse_file_parts, parse_form

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


# --- form fields (parse_form) ------------------------------------------------------------------


def form(raw: bytes, content_type: str = CONTENT_TYPE) -> tuple[list[FilePart], dict[str, str]]:
    return parse_form(raw, content_type, **LIMITS)


@pytest.mark.parametrize("case", list(VALID))
def test_parse_form_gives_the_same_files(case: str) -> None:
    files, _ = form(VALID[case])
    assert [(p.field_name, p.filename, p.data) for p in files] == ours(VALID[case])


def test_fields_are_returned_by_name_and_files_are_not_fields() -> None:
    raw = body(
        part("label", b"3", filename=None), part("file", PNG_LIKE), part("new_class", b"true", None)
    )
    files, fields = form(raw)
    assert fields == {"label": "3", "new_class": "true"}
    assert [(p.field_name, p.data) for p in files] == [("file", PNG_LIKE)]


def test_a_repeated_field_keeps_its_first_value() -> None:
    _, fields = form(body(part("label", b"3", None), part("label", b"4", None)))
    assert fields == {"label": "3"}


def test_a_form_of_files_only_has_no_fields() -> None:
    assert form(VALID["three files"])[1] == {}


def test_an_empty_field_is_an_empty_string() -> None:
    assert form(body(part("label", b"", None)))[1] == {"label": ""}


@pytest.mark.parametrize(
    ("charset", "raw", "value"),
    [
        (None, "zif\u00e9r \u00fc".encode(), "zif\u00e9r \u00fc"),  # UTF-8 unless said otherwise
        ("utf-8", "\u4e03".encode(), "\u4e03"),
        ("latin-1", "zif\u00e9r".encode("latin-1"), "zif\u00e9r"),
        ("iso-8859-7", "\u03b5\u03c0\u03c4\u03ac".encode("iso-8859-7"), "\u03b5\u03c0\u03c4\u03ac"),
        ("no-such-charset", b"zif\xe9r", "zif\u00e9r"),  # unknown: read as latin-1
        (None, b"zif\xe9r", "zif\u00e9r"),  # not UTF-8 after all: read as latin-1, not refused
    ],
)
def test_fields_are_decoded_with_the_bodys_charset(
    charset: str | None, raw: bytes, value: str
) -> None:
    content_type = CONTENT_TYPE + (f"; charset={charset}" if charset else "")
    files, fields = form(body(part("label", raw, None), part("file", b"\xff\xfe")), content_type)
    assert fields == {"label": value}
    assert files[0].data == b"\xff\xfe"  # file bytes are never decoded


def test_field_limits_still_hold() -> None:
    with pytest.raises(MultipartError, match="Part exceeded maximum size of 1KB"):
        form(body(part("label", b"x" * 1025, None)))
    with pytest.raises(MultipartError, match="Maximum number of fields is 2"):
        form(body(*[part("label", b"3", None)] * 3))
