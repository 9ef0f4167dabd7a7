"""Malformed and hostile bodies on the TF Serving (``/v1``) and Open Inference V2 (``/v2``)
routes: every one is a 4xx ``{"error": "..."}`` saying what to fix (never a 5xx), and the server
keeps classifying. The shared hostile server has a 1 MiB body limit and 8 images per request.
"""

from __future__ import annotations

import base64
import json
import struct

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


@pytest.mark.parametrize("path", [TF_PREDICT, V2_INFER])
def test_oversized_and_compressed_bodies_are_refused(hostile_server: Server, path: str) -> None:
    big = b'{"instances": [' + b"0," * MAX_UPLOAD_BYTES + b"0]}"
    assert_error(send(hostile_server, path, big), 413)
    assert_error(
        send(hostile_server, path, b"\x1f\x8b\x08", {"Content-Encoding": "gzip"}), 415, "gzip"
    )


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
        ("POST", "/v2/repository/index", 404),  # tritonclient.get_model_repository_index()
        ("POST", "/v2/repository/models/digits/load", 404),  # tritonclient.load_model()
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
    body, headers = v2_binary(bytes_input(1, len(FRAMED)), FRAMED)
    response = send(hostile_server, V2_INFER, body, headers)
    assert response.status_code == 200, response.text
    answer = response.json()  # JSON output unless binary was asked for
    assert answer["model_name"] == "digits"
    assert answer["outputs"][0]["shape"] == [1, 10]
