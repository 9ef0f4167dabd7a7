"""Tests for service.protocols.body: compressed request bodies inflated within the upload limit
(a compression bomb stops at the limit, never allocating much more), corrupt or truncated
streams refused with a 400, and JSON parsed with a clear 400."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib

import pytest

from service.http.errors import ClientError
from service.protocols.body import inflate, parse_json

BODY = b'{"inputs": [{"name": "images", "data": [' + b"0, " * 5000 + b"0]}]}"
LIMIT = 64 * 1024


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def refused(data: bytes, encoding: str, limit: int = LIMIT) -> ClientError:
    with pytest.raises(ClientError) as caught:
        inflate(data, encoding, limit)
    return caught.value


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # the zlib format: what RFC 9110 and tritonclient mean
        ("deflate", raw_deflate),  # what some clients send instead
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw"],
)
def test_inflates_each_accepted_encoding(encoding: str, compress: object) -> None:
    assert callable(compress)
    assert inflate(compress(BODY), encoding, LIMIT) == BODY


def test_concatenated_gzip_members_inflate_as_one_body() -> None:
    assert inflate(gzip.compress(BODY[:100]) + gzip.compress(BODY[100:]), "gzip", LIMIT) == BODY


def test_a_body_inflating_exactly_to_the_limit_is_taken() -> None:
    assert inflate(gzip.compress(b"a" * LIMIT), "gzip", LIMIT) == b"a" * LIMIT
    error = refused(gzip.compress(b"a" * (LIMIT + 1)), "gzip")
    assert error.status_code == 413


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_a_413_without_inflating_it(encoding: str) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    bomb = compress(b"\0" * (16 << 20), 9)  # 16 MiB of zeros in ~16 KiB
    assert len(bomb) < 32 * 1024
    tracemalloc.start()
    try:
        error = refused(bomb, encoding, limit=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.status_code == 413
    assert f"inflates past the limit of {LIMIT} bytes" in str(error.detail)
    assert "IMGCLS_MAX_UPLOAD_BYTES" in str(error.detail)
    assert peak < 4 * LIMIT, peak  # the output never grew much past the limit


def test_members_together_past_the_limit_are_a_413() -> None:
    half = gzip.compress(b"b" * (LIMIT // 2 + 1))
    assert refused(half + half, "gzip").status_code == 413


@pytest.mark.parametrize(
    ("data", "encoding", "words"),
    [
        (gzip.compress(BODY)[:-20], "gzip", "ends before the compressed stream does"),
        (zlib.compress(BODY)[:50], "deflate", "ends before the compressed stream does"),
        (b"", "gzip", "ends before"),
        (b"\x1f\x8b\x08", "gzip", "ends before"),
        (b"this is not gzip at all", "gzip", "not a valid gzip stream"),
        (gzip.compress(BODY)[:30] + b"\xff" * 40 + gzip.compress(BODY)[70:], "gzip", "valid gzip"),
        (gzip.compress(BODY) + b"trailing junk", "gzip", "not a valid gzip stream"),
        (zlib.compress(BODY) + b"junk", "deflate", "4 bytes follow the end"),
        (zlib.compress(BODY)[:-4] + b"\0\0\0\0", "deflate", "not a valid deflate stream"),
    ],
    ids=[
        "gzip-truncated",
        "deflate-truncated",
        "gzip-empty",
        "gzip-header-only",
        "not-gzip",
        "gzip-corrupt-middle",
        "gzip-trailing-junk",
        "deflate-trailing-junk",
        "deflate-bad-checksum",
    ],
)
def test_corrupt_or_truncated_streams_are_400(data: bytes, encoding: str, words: str) -> None:
    error = refused(data, encoding)
    assert error.status_code == 400, error.detail
    assert words in str(error.detail), error.detail
    assert error.reason == "bad_request"


def test_parse_json_says_where_it_breaks() -> None:
    assert parse_json(b'{"a": [1]}') == {"a": [1]}
    with pytest.raises(ClientError) as caught:
        parse_json(b'{"a": ')
    assert caught.value.status_code == 400 and "line 1, column 7" in str(caught.value.detail)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [0, 1.5, -2, 1e-7, 255], "name": "images", "nested": {"a": [true, null]}}',
        b'{"a": 1, "a": 2}',  # the last duplicate wins, as json.loads does
        b'{"v": [NaN, Infinity]}',  # orjson refuses these literals; json.loads takes them
        b'["\\ud800"]',  # a lone surrogate: the same
    ],
)
def test_parse_json_reads_every_body_as_json_loads_did(body: bytes) -> None:
    """orjson is only the fast path: what it refuses, json.loads reads as before (the checks
    downstream then give the same answer, e.g. 'finite' for NaN pixels)."""
    parsed = parse_json(body)
    assert json.dumps(parsed, sort_keys=True) == json.dumps(json.loads(body), sort_keys=True)
