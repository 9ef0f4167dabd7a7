"""Tests for service.protocols.v2: the Open Inference Protocol V2 wire format (transport-free
parsing and answers; no TensorFlow, no server). A refusal is checked as the HTTP answer the
service gives it."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest

from service.protocols import v2
from tests.helpers.answers import refused
from tests.helpers.images import flat_png
from tests.helpers.models import loaded_model

MAX_IMAGES = 4
MAX_PIXELS = 100_000
CLASS_NAMES = ["zero", "one", "two", "three"]


def v2_parse(header: object, binary: bytes = b"") -> v2.InferRequest:
    return v2.parse_infer(header, binary, max_images=MAX_IMAGES, max_pixels=MAX_PIXELS)


def pixels_tensor(
    values: np.ndarray, datatype: str = "FP32", binary: bool = False
) -> tuple[dict[str, Any], bytes]:
    tensor: dict[str, Any] = {"name": "images", "datatype": datatype, "shape": list(values.shape)}
    dtype = v2.PIXEL_DTYPES[datatype]
    if binary:
        data = np.ascontiguousarray(values, dtype=dtype).tobytes()
        tensor["parameters"] = {"binary_data_size": len(data)}
        return {"inputs": [tensor]}, data
    tensor["data"] = values.ravel().tolist()
    return {"inputs": [tensor]}, b""


def framed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_pixel_tensors_json_and_binary(datatype: str, binary: bool) -> None:
    values = (np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3) * 3 % 256).astype(np.float32)
    header, data = pixels_tensor(values, datatype, binary)
    request = v2_parse(header, data)
    assert request.images.pixels is not None
    np.testing.assert_array_equal(np.stack(request.images.pixels), values)
    assert request.output == v2.RequestedOutput(binary=False, classification=0)


def test_v2_json_pixels_may_be_nested_as_well_as_flat() -> None:
    values = np.full((1, 2, 2, 3), 9.0)
    header = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": values.tolist()}
        ]
    }
    request = v2_parse(header)
    assert request.images.pixels is not None and float(request.images.pixels[0][1, 1, 2]) == 9.0


def test_v2_bytes_json_base64_strings_and_b64_objects() -> None:
    images = [flat_png(1), flat_png(2), flat_png(3)]
    data: list[object] = [
        base64.b64encode(images[0]).decode(),
        {"b64": base64.b64encode(images[1]).decode()},
    ]
    data.append(base64.urlsafe_b64encode(images[2]).decode())
    header = {
        "id": "r-1",
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [3], "data": data}],
    }
    request = v2_parse(header)
    assert request.request_id == "r-1"
    assert [u.data for u in request.images.encoded or []] == images
    # shape [N, 1] with nested data (what some clients send)
    nested = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [2, 1],
                "data": [[base64.b64encode(i).decode()] for i in images[:2]],
            }
        ]
    }
    assert [u.data for u in v2_parse(nested).images.encoded or []] == images[:2]


def test_v2_bytes_binary_elements_are_length_framed() -> None:
    images = [flat_png(10), flat_png(20)]
    data = framed(*images)
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    request = v2_parse(header, data)
    assert [u.data for u in request.images.encoded or []] == images
    assert request.output == v2.RequestedOutput(binary=True, classification=0)


def bytes_header(count: int, size: int | None) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "image_bytes", "datatype": "BYTES", "shape": [count]}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("count", "data", "words"),
    [
        (2, framed(b"abc"), ["ends before element 1 of 2"]),
        (1, struct.pack("<I", 1000) + b"abc", ["element 0 declares 1000 bytes", "only 3 remain"]),
        (1, framed(b"abc") + b"xy", ["2 bytes left after 1 BYTES elements"]),
        (1, b"\x01\x00", ["ends before element 0"]),
        (2, struct.pack("<I", 2**32 - 1), ["declares 4294967295 bytes"]),
    ],
    ids=["too-few-elements", "length-lies", "trailing-bytes", "short-length", "huge-length"],
)
def test_v2_binary_bytes_framing_errors(count: int, data: bytes, words: list[str]) -> None:
    message = refused(lambda: v2_parse(bytes_header(count, len(data)), data))
    for word in words:
        assert word in message


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_v2_binary_fp32_needs_the_exact_byte_count(delta: int) -> None:
    values = np.zeros((1, 2, 2, 3), dtype=np.float32)
    header, data = pixels_tensor(values, binary=True)
    data = data + b"\0" * delta if delta > 0 else data[:delta]
    header["inputs"][0]["parameters"]["binary_data_size"] = len(data)
    message = refused(lambda: v2_parse(header, data))
    assert f"needs {values.nbytes} bytes of binary data, got {len(data)}" in message


def test_v2_binary_data_size_must_match_what_follows_the_header() -> None:
    header, data = pixels_tensor(np.zeros((1, 2, 2, 3)), binary=True)
    message = refused(lambda: v2_parse(header, data + b"\0\0\0\0"))
    assert "declares binary_data_size 48 but 52 bytes follow" in message
    json_header, _ = pixels_tensor(np.zeros((1, 2, 2, 3)))
    message = refused(lambda: v2_parse(json_header, b"\0" * 8))
    assert "no input declares binary_data_size" in message


def test_v2_binary_fp32_nan_is_refused() -> None:
    values = np.zeros((1, 2, 2, 3), dtype=np.float32)
    values[0, 1, 1, 1] = np.nan
    header, data = pixels_tensor(values, binary=True)
    assert "finite" in refused(lambda: v2_parse(header, data))


def pixels_header(**changes: object) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": "images",
        "datatype": "FP32",
        "shape": [1, 1, 1, 3],
        "data": [0, 0, 0],
    }
    tensor.update(changes)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ([], ["JSON object"]),
        ({}, ['"inputs" must list exactly one tensor']),
        ({"inputs": [pixels_header()["inputs"][0]] * 2}, ["exactly one tensor"]),
        ({"inputs": ["images"]}, ["exactly one tensor"]),
        (pixels_header(datatype="FP64"), ["datatype 'FP64' is not taken"]),
        (pixels_header(datatype="INT32"), ["FP32 (or UINT8)"]),
        (pixels_header(name="input_1"), ["must be named 'images'"]),
        (pixels_header(shape=[1, 1, 1, -3]), ["integers from 0 to 2**31 - 1"]),
        (pixels_header(shape=[]), ["integers from 0 to 2**31 - 1"]),
        (pixels_header(shape="1,1,1,3"), ["integers from 0 to 2**31 - 1"]),
        (pixels_header(shape=[1, 1, 1, 3.0]), ["integers from 0 to 2**31 - 1"]),
        (pixels_header(shape=[1, 1, True, 3]), ["integers from 0 to 2**31 - 1"]),
        (pixels_header(shape=[1, 1, 2, 3]), ["needs 6 values, got 3"]),
        (pixels_header(shape=[1, 1, 1, 1, 3], data=[0, 0, 0]), ["(N, height, width, 3)"]),
        (pixels_header(shape=[3], data=[0, 0, 0]), ["(N, height, width, 3)"]),
        (pixels_header(shape=[0, 1, 1, 3], data=[]), ["no images"]),
        (pixels_header(shape=[1, 0, 1, 3], data=[]), ["at least one pixel"]),
        (pixels_header(data=None), ["list of pixel values"]),
        (pixels_header(data="0,0,0"), ["list of pixel values"]),
        (pixels_header(data=[0, "x", 0]), ["must be numbers"]),
        (pixels_header(data=[0, {"a": 1}, 0]), ["must be numbers"]),
        (pixels_header(data=[0, 300, 0]), ["from 0 to 255"]),
        (pixels_header(datatype="UINT8", data=[0, 256, 0]), ["from 0 to 255"]),
        (pixels_header(parameters=[1]), ["parameters must be an object"]),
        (
            pixels_header(parameters={"binary_data_size": -1}),
            ["binary_data_size must be a byte count"],
        ),
        (pixels_header(parameters={"binary_data_size": "3"}), ["byte count"]),
        (
            pixels_header(shape=[MAX_IMAGES + 1, 1, 1, 3], data=[0] * 3 * (MAX_IMAGES + 1)),
            [f"at most {MAX_IMAGES}"],
        ),
        (bytes_header(MAX_IMAGES + 1, None), [f"at most {MAX_IMAGES}"]),
        (bytes_header(0, None), ["no images"]),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2, 2], "data": []}]},
            ["shape [N] (or [N, 1])"],
        ),
        (
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}
                ]
            },
            ["must list 2 base64 strings"],
        ),
        (
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["#$%"]}
                ]
            },
            ["inputs[0].data[0]", "not valid base64"],
        ),
        (
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [7]}]},
            ["must be a string"],
        ),
        (
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]},
            ["must be named 'image_bytes'"],
        ),
        (
            {**pixels_header(), "outputs": [{"name": "logits"}]},
            ["unknown output", "'probabilities'"],
        ),
        ({**pixels_header(), "outputs": "probabilities"}, ["at most one tensor"]),
        (
            {**pixels_header(), "outputs": [{"name": "probabilities"}, {"name": "probabilities"}]},
            ["at most one tensor"],
        ),
        (
            {
                **pixels_header(),
                "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
            },
            ["whole number"],
        ),
        (
            {
                **pixels_header(),
                "outputs": [{"name": "probabilities", "parameters": {"classification": "2"}}],
            },
            ["whole number"],
        ),
    ],
    ids=[
        "not-object",
        "no-inputs",
        "two-inputs",
        "input-not-object",
        "fp64",
        "int32",
        "wrong-name",
        "negative-shape",
        "empty-shape",
        "string-shape",
        "float-dim",
        "bool-dim",
        "shape-data-mismatch",
        "five-dims",
        "flat-shape",
        "zero-images",
        "zero-height",
        "no-data",
        "string-data",
        "string-element",
        "object-element",
        "above-255",
        "uint8-above-255",
        "parameters-list",
        "negative-binary-size",
        "string-binary-size",
        "too-many-pixel-images",
        "too-many-bytes-images",
        "zero-bytes-images",
        "bytes-2d",
        "bytes-count-mismatch",
        "bytes-bad-base64",
        "bytes-not-string",
        "bytes-named-images",
        "unknown-output",
        "outputs-not-list",
        "two-outputs",
        "negative-classification",
        "string-classification",
    ],
)
def test_v2_bad_requests_are_400_saying_what_to_fix(header: object, words: list[str]) -> None:
    message = refused(lambda: v2_parse(header))
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "shape",
    [[10**30, 1, 1, 3], [2**32, 2**32, 1, 3], [2**62, 4, 1, 3], [2**40, 2**40, 2**40, 3]],
    ids=["beyond-int64", "product-wraps-to-zero", "product-wraps-again", "three-huge"],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_absurd_shapes_are_a_400_not_a_crash(shape: list[int], binary: bool) -> None:
    header = pixels_header(shape=shape, data=[])
    if binary:
        del header["inputs"][0]["data"]
        header["inputs"][0]["parameters"] = {"binary_data_size": 0}
    refused(lambda: v2_parse(header))


def test_v2_the_classification_extension_and_binary_output_choice() -> None:
    classify = {"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}
    request = v2_parse({**pixels_header(), "outputs": [classify]})
    assert request.output == v2.RequestedOutput(binary=True, classification=2)
    request = v2_parse({**pixels_header(), "parameters": {"binary_data_output": True}})
    assert request.output == v2.RequestedOutput(binary=True, classification=0)
    request = v2_parse({**pixels_header(), "outputs": []})
    assert request.output == v2.RequestedOutput(binary=False, classification=0)


def test_v2_split_body_cuts_the_json_header_from_the_binary_data() -> None:
    assert v2.split_body(b'{"a":1}XYZ', "7") == (b'{"a":1}', b"XYZ")
    assert v2.split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    assert v2.split_body(b'{"a":1}', "7") == (b'{"a":1}', b"")
    for bad in ("8", "-1", "abc", "", "1e3", " 7"):
        message = refused(lambda bad=bad: v2.split_body(b'{"a":1}', bad))
        assert "Inference-Header-Content-Length" in message and "(0..7)" in message


def test_v2_classification_strings_are_score_index_label() -> None:
    probabilities = np.array([0.1, 0.6, 0.05, 0.25], dtype=np.float32)
    assert v2.classification_strings(probabilities, CLASS_NAMES, 2) == [
        "0.600000:1:one",
        "0.250000:3:three",
    ]
    assert len(v2.classification_strings(probabilities, CLASS_NAMES, 10)) == 4  # at most C


def answer_for(header: dict[str, Any], probabilities: np.ndarray) -> tuple[dict[str, Any], bytes]:
    return v2.infer_answer(v2_parse(header), loaded_model(3, CLASS_NAMES), probabilities, "rid")


PROBABILITIES = np.array([[0.1, 0.6, 0.05, 0.25], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
TWO = pixels_header(shape=[2, 1, 1, 3], data=[0] * 6)


def test_v2_infer_answer_json_probabilities() -> None:
    answer, binary = answer_for({**TWO, "id": "abc"}, PROBABILITIES)
    assert binary == b""
    assert answer == {
        "model_name": "digits",
        "model_version": "3",
        "id": "abc",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 4],
                "data": PROBABILITIES.ravel().tolist(),
            }
        ],
    }


def test_v2_infer_answer_binary_probabilities() -> None:
    answer, binary = answer_for(
        {**TWO, "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
        PROBABILITIES,
    )
    output = answer["outputs"][0]
    assert output["parameters"] == {"binary_data_size": 32} and "data" not in output
    assert output["shape"] == [2, 4] and output["datatype"] == "FP32"
    np.testing.assert_array_equal(np.frombuffer(binary, "<f4").reshape(2, 4), PROBABILITIES)
    json.dumps(answer)  # serialisable as the JSON header


def test_v2_infer_answer_classification_json_and_binary() -> None:
    classify: dict[str, Any] = {"name": "probabilities", "parameters": {"classification": 2}}
    answer, binary = answer_for({**TWO, "outputs": [classify]}, PROBABILITIES)
    assert binary == b""
    assert answer["outputs"][0] == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["0.600000:1:one", "0.250000:3:three", "0.700000:0:zero", "0.100000:1:one"],
    }
    classify["parameters"]["binary_data"] = True
    answer, binary = answer_for({**TWO, "outputs": [classify]}, PROBABILITIES)
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": len(binary)}
    assert binary.startswith(framed(b"0.600000:1:one"))
    assert binary == framed(
        b"0.600000:1:one", b"0.250000:3:three", b"0.700000:0:zero", b"0.100000:1:one"
    )


def test_v2_model_metadata_names_inputs_outputs_and_classes() -> None:
    answer = v2.model_metadata("digits", [3, 1], loaded_model(3, CLASS_NAMES))
    assert answer["name"] == "digits" and answer["versions"] == ["1", "3"]
    assert {i["name"]: i["datatype"] for i in answer["inputs"]} == {
        "images": "FP32",
        "image_bytes": "BYTES",
    }
    assert answer["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]
    assert answer["parameters"]["class_names"] == CLASS_NAMES
