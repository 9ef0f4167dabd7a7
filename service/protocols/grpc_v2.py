"""The Open Inference Protocol V2 over gRPC (``inference.GRPCInferenceService``): its messages
to and from the shapes the REST side already uses (:mod:`service.protocols.v2`).

The messages are Triton's ``grpc_service.proto`` (a superset of KServe's: ModelConfig and
RepositoryIndex too), as the generated modules of ``tritonclient[grpc]`` ship them. Inputs are
those of REST: ``images`` FP32/UINT8 (N, H, W, 3) in typed contents or ``raw_input_contents``, or
``image_bytes`` BYTES; ``classification`` on the requested output. Answers always carry their
tensor in ``raw_output_contents``, as Triton answers (its client reads either).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from service.protocols import v2
from service.protocols.tensors import bad_input
from service.serving.model_store import LoadedModel

#: Most dimensions an input shape may have (the images tensor has 4).
MAX_RANK = 8


def parse_infer(
    request: service_pb2.ModelInferRequest, *, max_images: int, max_pixels: int
) -> v2.InferRequest:
    """A ``ModelInferRequest`` -> the request's images and output choice (InvalidInput)."""
    if len(request.inputs) != 1:
        raise bad_input(
            f"inputs must list exactly one tensor: {v2.SERVE_INPUT_NAME!r} (FP32 or UINT8 "
            f"pixels N x H x W x 3, 0..255) or {v2.BYTES_INPUT_NAME!r} (BYTES, N encoded images)"
        )
    if len(request.raw_input_contents) > 1:
        raise bad_input(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for one input"
        )
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    if not shape or len(shape) > MAX_RANK or not all(0 <= d < 2**31 for d in shape):
        raise bad_input("inputs[0].shape must list 1 to 8 integers from 0 to 2**31 - 1")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    contents = tensor.contents

    def typed(count: int) -> object:
        if tensor.datatype == "BYTES":
            blobs = list(contents.bytes_contents)
            if len(blobs) != count:
                raise bad_input(
                    f"inputs[0] has shape {shape} but {len(blobs)} bytes_contents: send one "
                    "encoded image per element (or raw_input_contents)"
                )
            return blobs
        values = contents.fp32_contents if tensor.datatype == "FP32" else contents.uint_contents
        if len(values) != count:
            field = "fp32_contents" if tensor.datatype == "FP32" else "uint_contents"
            raise bad_input(
                f"shape {shape} needs {count} values in inputs[0].contents.{field}, got "
                f"{len(values)} (or send raw_input_contents)"
            )
        return np.asarray(values, dtype=np.float32)

    images = v2.tensor_images(
        tensor.name,
        tensor.datatype,
        shape,
        raw=raw,
        typed=typed,
        max_images=max_images,
        max_pixels=max_pixels,
        raw_name="raw_input_contents[0]",
    )
    return v2.InferRequest(
        request_id=request.id[:256] if request.id else None,
        images=images,
        output=_requested_output(request),
    )


def _requested_output(request: service_pb2.ModelInferRequest) -> v2.RequestedOutput:
    if not request.outputs:
        return v2.RequestedOutput(binary=True)
    if len(request.outputs) > 1 or request.outputs[0].name != v2.SERVE_OUTPUT_NAME:
        raise bad_input(f"unknown output; this model has one: {v2.SERVE_OUTPUT_NAME!r}")
    parameters = request.outputs[0].parameters
    classes = 0
    if "classification" in parameters:
        parameter = parameters["classification"]
        kind = parameter.WhichOneof("parameter_choice")
        classes = int(getattr(parameter, kind)) if kind in ("int64_param", "uint64_param") else -1
        if classes < 1:
            raise bad_input("outputs[0].parameters.classification must be a whole number >= 1")
    return v2.RequestedOutput(binary=True, classification=classes)


def infer_response(
    request: v2.InferRequest, model: LoadedModel, probabilities: np.ndarray, request_id: str
) -> service_pb2.ModelInferResponse:
    """The answer, built from the same dict as REST's binary answer."""
    answer, raw = v2.infer_answer(request, model, probabilities, request_id)
    output = answer["outputs"][0]
    return service_pb2.ModelInferResponse(
        model_name=answer["model_name"],
        model_version=answer["model_version"],
        id=answer["id"],
        outputs=[
            service_pb2.ModelInferResponse.InferOutputTensor(
                name=output["name"], datatype=output["datatype"], shape=output["shape"]
            )
        ],
        raw_output_contents=[raw],
    )


def model_metadata(
    name: str, versions: list[int], model: LoadedModel
) -> service_pb2.ModelMetadataResponse:
    """``ModelMetadata``: REST's metadata (``parameters`` has no place in the message)."""
    return _parse(v2.model_metadata(name, versions, model), service_pb2.ModelMetadataResponse())


def _parse(values: dict[str, Any], message: Any) -> Any:
    return json_format.ParseDict(values, message, ignore_unknown_fields=True)
