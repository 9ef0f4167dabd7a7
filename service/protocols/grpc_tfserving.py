"""TensorFlow Serving's gRPC API (``tensorflow.serving.PredictionService`` and ``ModelService``):
its messages to and from the shapes the REST side already uses
(:mod:`service.protocols.tfserving`).

The messages are the generated modules of ``tensorflow-serving-api``. ``Predict`` takes one
input tensor: ``DT_STRING`` encoded images (shape [N] or [N, 1]) or ``DT_FLOAT``/``DT_UINT8``
pixels (N, H, W, 3) 0..255, in ``tensor_content`` or the typed ``*_val`` fields, under the
model's input name (``images``; ``image_bytes`` is taken too). The answer's ``probabilities``
is a ``DT_FLOAT`` (N, C) tensor in ``tensor_content`` (``tf.make_ndarray`` reads it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from contract.names import SERVE_INPUT_NAME, SERVE_OUTPUT_NAME
from service.protocols import tfserving
from service.protocols.tensors import ImagesInput, bad_input, check_count, pixel_batch
from service.serving.decode_step import Upload
from service.serving.model_store import LoadedModel, VersionStatus

#: Input names ``Predict`` takes (REST's ``images``; V2's name for encoded images too).
INPUT_NAMES = (SERVE_INPUT_NAME, "image_bytes")
#: Pixel dtypes and their numpy layout in ``tensor_content`` (little-endian, as TF writes it).
PIXEL_DTYPES: dict[int, np.dtype[Any]] = {
    types_pb2.DT_FLOAT: np.dtype("<f4"),
    types_pb2.DT_UINT8: np.dtype("u1"),
}
METADATA_FIELD = "signature_def"


def model_spec(
    spec: model_pb2.ModelSpec,
) -> tuple[str, int | None, str | None]:
    """A ``ModelSpec`` -> (name, version or None, label or None); its signature checked."""
    if spec.signature_name not in ("", *tfserving.SIGNATURE_NAMES):
        raise bad_input(
            f"unknown signature_name {spec.signature_name[:60]!r}; this model has "
            f"{tfserving.SIGNATURE_NAMES[0]!r}"
        )
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.name, int(spec.version.value), None
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, None, None


def parse_predict(
    request: predict_pb2.PredictRequest, *, max_images: int, max_pixels: int
) -> ImagesInput:
    """A ``PredictRequest`` -> its images (InvalidInput saying what to fix)."""
    if len(request.inputs) != 1:
        raise bad_input(
            f"inputs must hold exactly one tensor, named {SERVE_INPUT_NAME!r}: DT_STRING "
            "encoded images [N], or DT_FLOAT/DT_UINT8 pixels [N, H, W, 3] 0..255"
        )
    for filtered in request.output_filter:
        if filtered != SERVE_OUTPUT_NAME:
            raise bad_input(
                f"unknown output {filtered[:60]!r}; this model has {SERVE_OUTPUT_NAME!r}"
            )
    ((name, tensor),) = request.inputs.items()
    if name not in INPUT_NAMES:
        raise bad_input(f"unknown input {name[:60]!r}; the model's input is {SERVE_INPUT_NAME!r}")
    shape = _shape(tensor)
    count = math.prod(shape)
    if tensor.dtype == types_pb2.DT_STRING:
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise bad_input(f"DT_STRING images have shape [N] (or [N, 1]), got {shape}")
        check_count(count, max_images)
        if len(tensor.string_val) != count:
            raise bad_input(
                f"shape {shape} needs {count} string_val entries (one encoded image each), "
                f"got {len(tensor.string_val)}"
            )
        return ImagesInput(
            encoded=[Upload(f"{name}-{i}", blob) for i, blob in enumerate(tensor.string_val)]
        )
    dtype = PIXEL_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise bad_input(
            f"dtype {types_pb2.DataType.Name(tensor.dtype) if tensor.dtype in types_pb2.DataType.values() else tensor.dtype} "  # noqa: E501
            "is not taken: send DT_STRING encoded images or DT_FLOAT/DT_UINT8 pixels 0..255"
        )
    if shape and shape[0] > max_images:
        check_count(shape[0], max_images)  # before touching a value of a huge tensor
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            raise bad_input(
                f"shape {shape} needs {count * dtype.itemsize} bytes of tensor_content, got "
                f"{len(tensor.tensor_content)}"
            )
        values: object = np.frombuffer(tensor.tensor_content, dtype=dtype)
    else:
        typed = tensor.float_val if tensor.dtype == types_pb2.DT_FLOAT else tensor.int_val
        if len(typed) != count:
            field = "float_val" if tensor.dtype == types_pb2.DT_FLOAT else "int_val"
            raise bad_input(
                f"shape {shape} needs {count} values in {field} (or tensor_content), got "
                f"{len(typed)}"
            )
        values = np.asarray(typed, dtype=np.float32)
    return ImagesInput(
        pixels=pixel_batch(
            values,
            what=f"inputs[{name!r}]",
            max_images=max_images,
            max_pixels=max_pixels,
            shape=shape,
        )
    )


def _shape(tensor: tensor_pb2.TensorProto) -> list[int]:
    if tensor.tensor_shape.unknown_rank:
        raise bad_input("the input tensor must have a known shape")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if len(shape) > 8 or not all(0 <= d < 2**31 for d in shape):
        raise bad_input("the input's shape must list at most 8 sizes from 0 to 2**31 - 1")
    if not shape and tensor.dtype == types_pb2.DT_STRING:
        return [1]  # a scalar string: one encoded image
    if not shape:
        raise bad_input("the input tensor has no shape: pixels are [N, H, W, 3]")
    return shape


def _spec(model: LoadedModel) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model.name, signature_name=tfserving.SIGNATURE_NAMES[0])
    spec.version.value = model.version
    return spec


def predict_response(model: LoadedModel, probabilities: np.ndarray) -> predict_pb2.PredictResponse:
    """The answer: ``probabilities`` (N, C) float32 in ``tensor_content``."""
    values = np.ascontiguousarray(probabilities, dtype="<f4")
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in values.shape]
        ),
        tensor_content=values.tobytes(),
    )
    response = predict_pb2.PredictResponse(model_spec=_spec(model))
    response.outputs[SERVE_OUTPUT_NAME].CopyFrom(tensor)
    return response


def metadata_response(
    request: get_model_metadata_pb2.GetModelMetadataRequest, model: LoadedModel
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """``GetModelMetadata``: the ``serving_default`` signature, from REST's metadata."""
    unknown = [field for field in request.metadata_field if field != METADATA_FIELD]
    if unknown or not request.metadata_field:
        raise bad_input(f"metadata_field must be [{METADATA_FIELD!r}], got {list(unknown)[:3]}")
    signatures = json_format.ParseDict(
        tfserving.metadata(model)["metadata"]["signature_def"],
        get_model_metadata_pb2.SignatureDefMap(),
    )
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_spec(model))
    response.metadata[METADATA_FIELD].Pack(signatures)
    return response


def status_response(rows: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    """``GetModelStatus``: REST's version states, as the message."""
    return json_format.ParseDict(
        tfserving.version_status(rows), get_model_status_pb2.GetModelStatusResponse()
    )
