"""The Open Inference Protocol V2 (KServe V2, Triton) over REST: JSON tensors, the binary
tensor data extension and the classification extension.

Inputs (exactly one per request): ``images``, an ``FP32`` (or ``UINT8``) tensor of pixels
(N, H, W, 3) 0..255, or ``image_bytes``, a ``BYTES`` tensor of N encoded images (in JSON as
base64 strings; as binary data, each element a 4-byte little-endian length and its bytes).
Output: ``probabilities``, ``FP32`` (N, C); with ``"parameters": {"classification": k}`` it is
``BYTES`` (N, k) of ``"score:index:label"`` strings, as Triton answers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.names import SERVE_INPUT_NAME, SERVE_OUTPUT_NAME
from service.protocols.tensors import (
    ImagesInput,
    b64_image,
    bad_input,
    check_count,
    pixel_batch,
)
from service.serving.decode_step import Upload
from service.serving.model_store import LoadedModel

SERVER_NAME = "imgcls"
SERVER_VERSION = "0.1.0"
HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES_INPUT_NAME = "image_bytes"
PLATFORM = "tensorflow_savedmodel"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository")
PIXEL_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}


@dataclass(frozen=True)
class RequestedOutput:
    """How to answer: binary or JSON, and top-k classification strings or probabilities."""

    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    request_id: str | None
    images: ImagesInput
    output: RequestedOutput


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data that follows it (binary extension)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise bad_input(
            f"{HEADER_LENGTH} must be the byte length of the JSON part of the body "
            f"(0..{len(body)}), got {header_length[:20]!r}"
        )
    cut = int(header_length)
    return body[:cut], body[cut:]


def parse_infer(header: object, binary: bytes, *, max_images: int, max_pixels: int) -> InferRequest:
    """A decoded JSON header plus its binary data -> the request's images and output choice."""
    if not isinstance(header, dict):
        raise bad_input('the body must be a JSON object with an "inputs" list')
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_input(
            f'"inputs" must list exactly one tensor: {SERVE_INPUT_NAME!r} (FP32 pixels '
            f"N x H x W x 3, 0..255) or {BYTES_INPUT_NAME!r} (BYTES, N encoded images)"
        )
    tensor = inputs[0]
    parameters = _parameters(tensor, "inputs[0]")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad_input("inputs[0].parameters.binary_data_size must be a byte count")
        if size != len(binary):
            raise bad_input(
                f"inputs[0] declares binary_data_size {size} but {len(binary)} bytes follow the "
                f"JSON header ({HEADER_LENGTH})"
            )
    elif binary:
        raise bad_input(
            f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size"
        )
    images = _tensor_images(tensor, binary if size is not None else None, max_images, max_pixels)
    request_id = header.get("id")
    return InferRequest(
        request_id=str(request_id)[:256] if request_id is not None else None,
        images=images,
        output=_requested_output(header),
    )


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_input(f"{where}.parameters must be an object")
    return parameters


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise bad_input("inputs[0].shape must be a list of integers from 0 to 2**31 - 1")
    return shape


def _tensor_images(
    tensor: dict[str, Any], binary: bytes | None, max_images: int, max_pixels: int
) -> ImagesInput:
    """A JSON input tensor (with its binary data, if the binary extension carries it)."""

    def json_values(count: int) -> object:
        if tensor.get("datatype") == "BYTES":
            return _json_bytes(tensor, count)
        values = tensor.get("data")
        if not isinstance(values, list):
            raise bad_input("inputs[0].data must be a list of pixel values (or use binary data)")
        return values

    return tensor_images(
        tensor.get("name"),
        tensor.get("datatype"),
        _shape(tensor),
        raw=binary,
        typed=json_values,
        max_images=max_images,
        max_pixels=max_pixels,
    )


def tensor_images(
    name: object,
    datatype: object,
    shape: list[int],
    *,
    raw: bytes | None,
    typed: Callable[[int], object],
    max_images: int,
    max_pixels: int,
    raw_name: str = "binary data",
) -> ImagesInput:
    """One V2 input tensor -> the request's images, for every transport alike.

    Args:
        name, datatype, shape: As the request declares them (checked here).
        raw: The tensor's bytes when they come apart from the header (REST's binary extension,
            gRPC's ``raw_input_contents``): little-endian values, or length-prefixed BYTES
            elements. None: the values are typed.
        typed: Given the element count, the typed values: pixel values (a list or an array) for
            FP32/UINT8, the encoded images (a list of bytes) for BYTES.
        max_images: Images one request may carry; max_pixels: pixels per image.
        raw_name: What the messages call ``raw`` (gRPC: ``raw_input_contents[0]``).
    """
    if datatype in PIXEL_DTYPES:
        if name != SERVE_INPUT_NAME:
            raise bad_input(
                f"a {datatype} tensor must be named {SERVE_INPUT_NAME!r} (pixels), got {name!r}"
            )
        count = math.prod(shape)  # exact: np.prod wraps around
        dtype = PIXEL_DTYPES[datatype]
        if shape and shape[0] > max_images:
            check_count(shape[0], max_images)  # before touching a value of a huge tensor
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise bad_input(
                    f"shape {shape} of {datatype} needs {count * dtype.itemsize} bytes of "
                    f"{raw_name}, got {len(raw)}"
                )
            values: object = np.frombuffer(raw, dtype=dtype)
        else:
            values = typed(count)
        return ImagesInput(
            pixels=pixel_batch(
                values, what="inputs[0]", max_images=max_images, max_pixels=max_pixels, shape=shape
            )
        )
    if datatype == "BYTES":
        if name != BYTES_INPUT_NAME:
            raise bad_input(
                f"a BYTES tensor must be named {BYTES_INPUT_NAME!r} (encoded images), got {name!r}"
            )
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise bad_input(f"{BYTES_INPUT_NAME!r} has shape [N] (or [N, 1]), got {shape}")
        count = shape[0]
        check_count(count, max_images)
        blobs = _bytes_elements(raw, count) if raw is not None else typed(count)
        assert isinstance(blobs, list)
        return ImagesInput(encoded=[Upload(f"image-{i + 1}", blob) for i, blob in enumerate(blobs)])
    raise bad_input(
        f"datatype {str(datatype)[:20]!r} is not taken: send FP32 (or UINT8) pixels as "
        f"{SERVE_INPUT_NAME!r} or BYTES encoded images as {BYTES_INPUT_NAME!r}"
    )


def _bytes_elements(binary: bytes, count: int) -> list[bytes]:
    """The binary extension's BYTES layout: per element, a 4-byte little-endian length."""
    blobs, offset = [], 0
    for index in range(count):
        if offset + 4 > len(binary):
            raise bad_input(f"binary BYTES data ends before element {index} of {count}")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise bad_input(
                f"binary BYTES element {index} declares {length} bytes; only "
                f"{len(binary) - offset} remain"
            )
        blobs.append(binary[offset : offset + length])
        offset += length
    if offset != len(binary):
        raise bad_input(f"{len(binary) - offset} bytes left after {count} BYTES elements")
    return blobs


def _json_bytes(tensor: dict[str, Any], count: int) -> list[bytes]:
    data = tensor.get("data")
    if isinstance(data, list) and len(data) == count and all(isinstance(d, list) for d in data):
        data = [d[0] if len(d) == 1 else d for d in data]  # shape [N, 1]
    if not isinstance(data, list) or len(data) != count:
        raise bad_input(
            f"inputs[0].data must list {count} base64 strings (one encoded image each), or use "
            "the binary tensor extension"
        )
    return [
        b64_image(item.get("b64") if isinstance(item, dict) else item, what=f"inputs[0].data[{i}]")
        for i, item in enumerate(data)
    ]


def _requested_output(header: dict[str, Any]) -> RequestedOutput:
    binary_default = bool(_parameters(header, "request").get("binary_data_output", False))
    outputs = header.get("outputs")
    if outputs is None:
        return RequestedOutput(binary=binary_default)
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise bad_input(f'"outputs" lists at most one tensor: {SERVE_OUTPUT_NAME!r}')
    if not outputs:
        return RequestedOutput(binary=binary_default)
    output = outputs[0]
    if not isinstance(output, dict) or output.get("name") != SERVE_OUTPUT_NAME:
        raise bad_input(f"unknown output; this model has one: {SERVE_OUTPUT_NAME!r}")
    parameters = _parameters(output, "outputs[0]")
    classes = parameters.get("classification", 0)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise bad_input("outputs[0].parameters.classification must be a whole number >= 1")
    return RequestedOutput(
        binary=bool(parameters.get("binary_data", binary_default)), classification=classes
    )


def classification_strings(
    probabilities: np.ndarray, class_names: Sequence[str], k: int
) -> list[str]:
    """Triton's classification extension: the top ``k`` as ``"score:index:label"``."""
    order = np.argsort(-probabilities, kind="stable")[: min(k, probabilities.shape[0])]
    return [f"{probabilities[i]:f}:{int(i)}:{class_names[i]}" for i in order]


def infer_answer(
    request: InferRequest, model: LoadedModel, probabilities: np.ndarray, request_id: str
) -> tuple[dict[str, Any], bytes]:
    """The JSON answer and the binary data to follow it (empty for a JSON-only answer). Its
    ``id`` is the client's, as the protocol asks, else the service's ``request_id``."""
    output: dict[str, Any] = {"name": SERVE_OUTPUT_NAME}
    wanted = request.output
    binary = b""
    if wanted.classification:
        rows = [
            classification_strings(row, model.metadata.class_names, wanted.classification)
            for row in probabilities
        ]
        width = len(rows[0]) if rows else 0
        output.update(datatype="BYTES", shape=[len(rows), width])
        flat = [item for row in rows for item in row]
        if wanted.binary:
            binary = b"".join(struct.pack("<I", len(s)) + s.encode() for s in flat)
        else:
            output["data"] = flat
    else:
        values = np.ascontiguousarray(probabilities, dtype="<f4")
        output.update(datatype="FP32", shape=list(values.shape))
        if wanted.binary:
            binary = values.tobytes()
        else:
            output["data"] = values.ravel().tolist()
    if wanted.binary:
        output["parameters"] = {"binary_data_size": len(binary)}
    answer: dict[str, Any] = {
        "id": request.request_id if request.request_id is not None else request_id,
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": [output],
    }
    return answer, binary


def model_metadata(name: str, versions: Sequence[int], model: LoadedModel) -> dict[str, Any]:
    """``GET /v2/models/{name}[/versions/{v}]``: names, datatypes and shapes."""
    return {
        "name": name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": PLATFORM,
        "inputs": [
            {"name": SERVE_INPUT_NAME, "datatype": "FP32", "shape": [-1, -1, -1, 3]},
            {"name": BYTES_INPUT_NAME, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {
                "name": SERVE_OUTPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, model.metadata.num_classes],
            }
        ],
        "parameters": {
            "class_names": list(model.metadata.class_names),
            "input_size": [model.metadata.input.height, model.metadata.input.width],
            "runtime": model.runtime.name,
            "note": f"send one input: {SERVE_INPUT_NAME!r} pixels 0..255, or "
            f"{BYTES_INPUT_NAME!r} encoded images (PNG, JPEG, WebP, BMP, GIF)",
        },
    }
