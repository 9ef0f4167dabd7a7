"""Malformed and hostile bodies on the TF Serving (``/v1``) and Open Inference V2 (``/v2``)
routes, compression bombs and corrupt gzip or deflate streams included: every one is a 4xx
``{"error": "..."}`` saying what to fix (never a 5xx), and the server keeps classifying. The
shared hostile server has a 1 MiB body limit and 8 images per request.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib

import httpx
import pytest

from tests.helpers.hostile import MAX_IMAGES, MAX_UPLOAD_BYTES
from tests.helpers.images import digit_png
from tests.helpers.servers import Server, healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TF_PREDICT = "/v1/models/digits:predict"
V2_INFER = "/v2/models/digits/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"


def send(
    server: Server, path: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        server.url + path,
        content=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=30,
    )


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body["error"]


def v2_binary(
    header: dict[str, object], binary: bytes, declared: int | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    length = len(head) if declared is None else declared
    return head + binary, {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}


def deep(depth: int) -> bytes:
    return b"[" * depth + b"0" + b"]" * depth


PNG_B64 = base64.b64encode(digit_png()).decode()

JSON_CASES: list[tuple[str, bytes, int, str]] = [
    (TF_PREDICT, b"this is not json", 400, "not valid JSON"),
    (TF_PREDICT, b"", 400, "not valid JSON"),
    (TF_PREDICT, b'{"instances": [', 400, "not valid JSON"),
    (TF_PREDICT, b"\xff\xfe\x00{", 400, "not valid JSON"),
    (TF_PREDICT, b"[" * 100_000, 400, "not valid JSON"),
    (TF_PREDICT, b'{"instances": ' + deep(900) + b"}", 400, "must be numbers"),
    (TF_PREDICT, b"null", 400, '"instances" or "inputs"'),
    (TF_PREDICT, b'"instances"', 400, '"instances" or "inputs"'),
    (TF_PREDICT, b'{"instances": 5}', 400, "one entry per image"),
    (TF_PREDICT, b'{"instances": [{"b64": 5}]}', 400, "must be a string"),
    (TF_PREDICT, b'{"instances": [{"b64": ["x"]}]}', 400, "must be a string"),
    (TF_PREDICT, b'{"instances": [[[[NaN, 0, 0]]]]}', 400, "finite"),
    (TF_PREDICT, b'{"instances": [[[[1e999, 0, 0]]]]}', 400, "finite"),
    (TF_PREDICT, b'{"instances": [[[[' + b"9" * 5000 + b", 0, 0]]]]}", 400, "not valid JSON"),
    (TF_PREDICT, b'{"instances": [[[[true, false, null]]]]}', 400, "finite numbers"),
    (
        TF_PREDICT,
        json.dumps({"instances": [{"b64": PNG_B64}] * (MAX_IMAGES + 1)}).encode(),
        400,
        f"at most {MAX_IMAGES}",
    ),
    (TF_PREDICT, json.dumps({"instances": [{"b64": "aGVsbG8="}]}).encode(), 415, "not a supported"),
    (V2_INFER, b"not json at all", 400, "not valid JSON"),
    (V2_INFER, b"[" * 100_000, 400, "not valid JSON"),
    (V2_INFER, b'{"inputs": 7}', 400, '"inputs" must list exactly one tensor'),
    (
        V2_INFER,
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, -28, 28, 3], '
        b'"data": []}]}',
        400,
        "inputs[0].shape",
    ),
    (
        V2_INFER,
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1e3], "data": []}]}',
        400,
        "inputs[0].shape",
    ),
    (
        V2_INFER,
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [99999999999999999999999,'
        b' 9, 9, 3], "data": []}]}',
        400,
        "inputs[0].shape",
    ),
    (
        V2_INFER,
        # One image (a count within the limit) whose pixels could never fit in memory.
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 2147483647,'
        b' 2147483647, 3], "data": [0]}]}',
        400,
        "needs",
    ),
    (
        V2_INFER,
        b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1000000000]}]}',
        400,
        f"at most {MAX_IMAGES}",
    ),
    (
        V2_INFER,
        b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 1, 3], '
        b'"data": ["a", "b", "c"]}]}',
        400,
        "must be numbers",
    ),
    (
        V2_INFER,
        b'{"inputs": [{"name": "images", "datatype": "STRING", "shape": [1], "data": ["x"]}]}',
        400,
        "not taken",
    ),
    (
        V2_INFER,
        json.dumps(
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
                ]
            }
        ).encode(),
        415,
        "not a supported",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    JSON_CASES,
    ids=[
        "v1-not-json",
        "v1-empty",
        "v1-truncated",
        "v1-bad-utf8",
        "v1-100k-nesting",
        "v1-900-deep-pixels",
        "v1-null",
        "v1-string",
        "v1-instances-number",
        "v1-b64-number",
        "v1-b64-list",
        "v1-nan",
        "v1-infinity",
        "v1-5000-digit-number",
        "v1-booleans",
        "v1-too-many-images",
        "v1-b64-not-image",
        "v2-not-json",
        "v2-100k-nesting",
        "v2-inputs-number",
        "v2-negative-shape",
        "v2-float-shape",
        "v2-shape-beyond-int64",
        "v2-shape-product-huge",
        "v2-billion-bytes-elements",
        "v2-string-pixels",
        "v2-unknown-datatype",
        "v2-bytes-not-image",
    ],
)
def test_malformed_json_bodies_are_4xx_errors(
    hostile_server: Server, path: str, body: bytes, status: int, words: str
) -> None:
    assert_error(send(hostile_server, path, body), status, words)


def bytes_input(count: int, size: int) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [count],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


def pixels_input(shape: list[int], size: int) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    }


PNG = digit_png()
FRAMED = struct.pack("<I", len(PNG)) + PNG


@pytest.mark.parametrize(
    ("body_and_headers", "status", "words"),
    [
        (v2_binary(bytes_input(1, len(FRAMED)), FRAMED, declared=10_000), 400, HEADER_LENGTH),
        (v2_binary(bytes_input(1, len(FRAMED)), FRAMED, declared=-5), 400, HEADER_LENGTH),
        (
            (b"{}", {HEADER_LENGTH: "abc", "Content-Type": "application/octet-stream"}),
            400,
            HEADER_LENGTH,
        ),
        (v2_binary(bytes_input(1, len(FRAMED)), FRAMED, declared=0), 400, "not valid JSON"),
        (v2_binary(bytes_input(1, len(FRAMED)), FRAMED, declared=7), 400, "not valid JSON"),
        (
            v2_binary(
                bytes_input(1, len(FRAMED)),
                struct.pack("<I", 2**31) + PNG,
            ),
            400,
            "declares 2147483648 bytes",
        ),
        (
            v2_binary(bytes_input(2, len(FRAMED)), FRAMED),
            400,
            "ends before element 1 of 2",
        ),
        (
            v2_binary(bytes_input(1, len(FRAMED) + 3), FRAMED + b"abc"),
            400,
            "3 bytes left after 1 BYTES elements",
        ),
        (
            v2_binary(bytes_input(1, len(FRAMED) + 100), FRAMED),
            400,
            "binary_data_size",
        ),
        (
            v2_binary(pixels_input([1, 28, 28, 3], 28 * 28 * 3 * 4), b"\0" * 100),
            400,
            "binary_data_size",
        ),
        (
            v2_binary(pixels_input([1, 28, 28, 3], 100), b"\0" * 100),
            400,
            f"needs {28 * 28 * 3 * 4} bytes",
        ),
        (
            v2_binary(pixels_input([1, 2, 2, 3], 48), struct.pack("<12f", *([float("nan")] * 12))),
            400,
            "finite",
        ),
        (
            v2_binary(
                {
                    "inputs": [
                        {
                            "name": "images",
                            "datatype": "FP32",
                            "shape": [1, 1, 1, 3],
                            "data": [0, 0, 0],
                        }
                    ]
                },
                b"trailing",
            ),
            400,
            "no input declares binary_data_size",
        ),
    ],
    ids=[
        "header-length-beyond-body",
        "header-length-negative",
        "header-length-not-a-number",
        "header-length-zero",
        "header-length-cuts-json",
        "element-length-lies",
        "fewer-elements-than-shape",
        "bytes-after-elements",
        "binary-size-larger-than-data",
        "binary-size-smaller-than-data",
        "fp32-byte-count-wrong",
        "fp32-nan",
        "undeclared-binary",
    ],
)
def test_lying_binary_tensors_are_400_errors(
    hostile_server: Server, body_and_headers: tuple[bytes, dict[str, str]], status: int, words: str
) -> None:
    body, headers = body_and_headers
    assert_error(send(hostile_server, V2_INFER, body, headers), status, words)


def assert_still_serving(server: Server) -> None:
    """A good V2 request right after: answered 200 with one image's probabilities."""
    body, headers = v2_binary(bytes_input(1, len(FRAMED)), FRAMED)
    response = send(server, V2_INFER, body, headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "digits"
    assert answer["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize("path", [TF_PREDICT, V2_INFER])
def test_oversized_and_unknown_encoded_bodies_are_refused(
    hostile_server: Server, path: str
) -> None:
    big = b'{"instances": [' + b"0," * MAX_UPLOAD_BYTES + b"0]}"
    assert_error(send(hostile_server, path, big), 413)
    for encoding in ("br", "zstd", "gzip, gzip", "compress"):
        assert_error(
            send(hostile_server, path, b"\x1f\x8b\x08", {"Content-Encoding": encoding}),
            415,
            "is not accepted",
            "gzip, deflate or identity",
        )


#: 10 MB of zeros: ~10 KB gzip-compressed, ten times the hostile server's body limit inflated.
BOMB_BYTES = 10 * 1000 * 1000


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("path", [TF_PREDICT, V2_INFER])
def test_a_compression_bomb_is_a_413_naming_the_limit(
    hostile_server: Server, path: str, encoding: str
) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    bomb = compress(b"\0" * BOMB_BYTES, 9)
    assert len(bomb) < 20_000
    assert_error(
        send(hostile_server, path, bomb, {"Content-Encoding": encoding}),
        413,
        f"inflates past the limit of {MAX_UPLOAD_BYTES} bytes",
        "IMGCLS_MAX_UPLOAD_BYTES",
    )
    assert_still_serving(hostile_server)


GOOD_JSON = json.dumps(
    {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [PNG_B64]}]}
).encode()


@pytest.mark.parametrize(
    ("encoding", "body", "words"),
    [
        ("gzip", gzip.compress(GOOD_JSON)[:-12], "ends before the compressed stream does"),
        ("gzip", b"\x1f\x8b\x08", "ends before the compressed stream does"),
        ("gzip", GOOD_JSON, "not a valid gzip stream"),  # says gzip, is not
        ("gzip", gzip.compress(GOOD_JSON) + b"junk", "not a valid gzip stream"),
        ("deflate", zlib.compress(GOOD_JSON)[:-4] + b"\0\0\0\0", "not a valid deflate stream"),
        ("deflate", zlib.compress(GOOD_JSON)[: len(GOOD_JSON) // 4], "ends before"),
    ],
    ids=[
        "gzip-truncated",
        "gzip-header-only",
        "gzip-not-compressed",
        "gzip-trailing-junk",
        "deflate-bad-checksum",
        "deflate-truncated",
    ],
)
def test_corrupt_or_truncated_compressed_bodies_are_400(
    hostile_server: Server, encoding: str, body: bytes, words: str
) -> None:
    assert_error(send(hostile_server, V2_INFER, body, {"Content-Encoding": encoding}), 400, words)
    assert_still_serving(hostile_server)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_good_compressed_body_is_answered(hostile_server: Server, encoding: str) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    response = send(hostile_server, V2_INFER, compress(GOOD_JSON), {"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 200, ""),
        (b'{"ready": true}', 200, ""),
        (b"[1, 2", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"ready": 1}', 400, "true or false"),
    ],
    ids=["empty", "ready", "not-json", "a-list", "ready-not-bool"],
)
def test_repository_index_bodies(
    hostile_server: Server, body: bytes, status: int, words: str
) -> None:
    response = send(hostile_server, "/v2/repository/index", body)
    if status == 200:
        assert response.status_code == 200, response.text
        assert {"name": "digits", "version": "1", "state": "READY"} in response.json()
    else:
        assert_error(response, status, words)


@pytest.mark.parametrize("action", ["load", "unload"])
@pytest.mark.parametrize("model", ["digits", "nope", "x" * 2000])
def test_model_control_is_a_400_for_any_model(
    hostile_server: Server, action: str, model: str
) -> None:
    path = f"/v2/repository/models/{model}/{action}"
    assert_error(send(hostile_server, path, b"{}"), 400, "not allowed if polling is enabled")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v1/models/nope/metadata"),
        ("POST", "/v2/models/nope/versions/abc/infer"),
        ("GET", "/v1/models/digits/versions/99999999999999999999"),
    ],
)
def test_unknown_models_and_versions_are_404_errors(
    hostile_server: Server, method: str, path: str
) -> None:
    response = httpx.request(method, hostile_server.url + path, json={}, timeout=30)
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/repository/index", 405),
        ("POST", "/v2/repository/models/digits/reload", 404),
        ("GET", "/v2/models/digits/infer", 405),
        ("DELETE", "/v1/models/digits", 405),
    ],
)
def test_unknown_protocol_routes_answer_in_the_protocol_error_shape(
    hostile_server: Server, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, hostile_server.url + path, timeout=30)
    assert_error(response, status)


def test_the_server_is_healthy_after_all_that(hostile_server: Server) -> None:
    assert healthy(hostile_server)
    assert_still_serving(hostile_server)  # JSON output unless binary was asked for
