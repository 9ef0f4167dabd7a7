"""Tests for service.protocols.grpc_v2 and grpc_tfserving: gRPC messages to images and back
(no server). A refusal is checked as the answer the service gives it (status and message)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from tritonclient.grpc import service_pb2

from service.http.errors import answer_for
from service.protocols import grpc_tfserving, grpc_v2
from service.serving.errors import ServingError
from tests.helpers.answers import refused
from tests.helpers.images import flat_png
from tests.helpers.models import loaded_model

MAX_IMAGES = 4
MAX_PIXELS = 100_000
PIXELS = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)


def v2_request(datatype: str = "FP32", raw: bool = True) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits", id="r-1")
    tensor = request.inputs.add(name="images", datatype=datatype, shape=list(PIXELS.shape))
    if raw:
        dtype = "<f4" if datatype == "FP32" else "u1"
        request.raw_input_contents.append(PIXELS.astype(dtype).tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(PIXELS.ravel().tolist())
    else:
        tensor.contents.uint_contents.extend(PIXELS.astype(int).ravel().tolist())
    return request


def v2_parse(request: service_pb2.ModelInferRequest) -> grpc_v2.v2.InferRequest:
    return grpc_v2.parse_infer(request, max_images=MAX_IMAGES, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_v2_pixels_arrive_as_sent(datatype: str, raw: bool) -> None:
    parsed = v2_parse(v2_request(datatype, raw))
    assert parsed.request_id == "r-1"
    np.testing.assert_array_equal(np.stack(parsed.images.pixels or []), PIXELS)
    assert parsed.output.classification == 0


def test_v2_encoded_images_typed_and_raw() -> None:
    png = flat_png()
    typed = service_pb2.ModelInferRequest(model_name="digits")
    typed.inputs.add(
        name="image_bytes", datatype="BYTES", shape=[2]
    ).contents.bytes_contents.extend([png, png])
    raw = service_pb2.ModelInferRequest(model_name="digits")
    raw.inputs.add(name="image_bytes", datatype="BYTES", shape=[2, 1])
    raw.raw_input_contents.append((struct.pack("<I", len(png)) + png) * 2)
    for request in (typed, raw):
        uploads = v2_parse(request).images.encoded or []
        assert [u.data for u in uploads] == [png, png]


def test_v2_classification_parameter_and_answer() -> None:
    request = v2_request()
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    parsed = v2_parse(request)
    assert parsed.output.classification == 2
    probabilities = np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    response = grpc_v2.infer_response(parsed, loaded_model(), probabilities, "svc-id")
    (output,) = response.outputs
    assert (output.datatype, list(output.shape), response.id) == ("BYTES", [2, 2], "r-1")
    raw, strings = response.raw_output_contents[0], []
    while raw:
        (length,) = struct.unpack_from("<I", raw)
        strings.append(raw[4 : 4 + length].decode())
        raw = raw[4 + length :]
    assert strings[0] == "0.600000:1:one" and strings[2] == "0.700000:0:zero"


def test_v2_probabilities_answer_raw_fp32() -> None:
    parsed = v2_parse(v2_request())
    probabilities = np.full((2, 4), 0.25, dtype=np.float32)
    response = grpc_v2.infer_response(parsed, loaded_model(), probabilities, "svc-id")
    assert response.outputs[0].datatype == "FP32" and response.model_version == "3"
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 4), probabilities
    )


def _without(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    del request.raw_input_contents[:]
    return request


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (service_pb2.ModelInferRequest(), "exactly one tensor"),
        (_without(v2_request()), "fp32_contents"),
        (v2_request("FP16"), "datatype 'FP16'"),
    ],
    ids=["no-input", "no-values", "fp16"],
)
def test_v2_bad_requests_say_what_to_fix(
    request_: service_pb2.ModelInferRequest, words: str
) -> None:
    assert words in refused(lambda: v2_parse(request_), 400)


def test_v2_refusals_map_to_grpc_status_names() -> None:
    with pytest.raises(ServingError) as caught:
        v2_parse(v2_request("INT8"))
    assert answer_for(caught.value).grpc == "INVALID_ARGUMENT"


# --- TF Serving -------------------------------------------------------------------------


def tensor(dtype: int, dims: list[int], **values: object) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


def predict_request(
    proto: tensor_pb2.TensorProto, name: str = "images"
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs[name].CopyFrom(proto)
    return request


def tf_parse(request: predict_pb2.PredictRequest) -> grpc_tfserving.ImagesInput:
    return grpc_tfserving.parse_predict(request, max_images=MAX_IMAGES, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    "proto",
    [
        tensor(
            types_pb2.DT_FLOAT, list(PIXELS.shape), tensor_content=PIXELS.astype("<f4").tobytes()
        ),
        tensor(types_pb2.DT_FLOAT, list(PIXELS.shape), float_val=PIXELS.ravel().tolist()),
        tensor(
            types_pb2.DT_UINT8, list(PIXELS.shape), tensor_content=PIXELS.astype("u1").tobytes()
        ),
        tensor(types_pb2.DT_UINT8, list(PIXELS.shape), int_val=PIXELS.astype(int).ravel().tolist()),
    ],
    ids=["float-content", "float-val", "uint8-content", "uint8-int-val"],
)
def test_tfserving_pixels_arrive_as_sent(proto: tensor_pb2.TensorProto) -> None:
    np.testing.assert_array_equal(np.stack(tf_parse(predict_request(proto)).pixels or []), PIXELS)


def test_tfserving_strings_are_encoded_images() -> None:
    png = flat_png()
    for dims in ([2], [2, 1]):
        parsed = tf_parse(predict_request(tensor(types_pb2.DT_STRING, dims, string_val=[png, png])))
        assert [u.data for u in parsed.encoded or []] == [png, png]
    scalar = tf_parse(predict_request(tensor(types_pb2.DT_STRING, [], string_val=[png])))
    assert len(scalar) == 1


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (
            predict_request(tensor(types_pb2.DT_STRING, [1], string_val=[b"x"]), "pixels"),
            "unknown input 'pixels'",
        ),
        (predict_request(tensor(types_pb2.DT_HALF, [1, 2, 2, 3])), "DT_HALF"),
        (predict_request(tensor(types_pb2.DT_STRING, [9], string_val=[b"x"] * 9)), "at most 4"),
        (
            predict_request(tensor(types_pb2.DT_FLOAT, [1, 2, 2, 3], float_val=[1.0])),
            "needs 12 values",
        ),
    ],
    ids=["unknown-input", "half", "too-many", "too-few-values"],
)
def test_tfserving_bad_requests_say_what_to_fix(
    request_: predict_pb2.PredictRequest, words: str
) -> None:
    assert words in refused(lambda: tf_parse(request_), 400)


def test_tfserving_model_spec_version_label_and_signature() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    assert grpc_tfserving.model_spec(request.model_spec) == ("digits", None, None)
    request.model_spec.version.value = 2
    assert grpc_tfserving.model_spec(request.model_spec) == ("digits", 2, None)
    request.model_spec.version_label = "canary"
    assert grpc_tfserving.model_spec(request.model_spec) == ("digits", None, "canary")
    request.model_spec.signature_name = "classify"
    assert "unknown signature_name" in refused(
        lambda: grpc_tfserving.model_spec(request.model_spec), 400
    )


def test_tfserving_answer_and_metadata() -> None:
    model = loaded_model(version=5)
    probabilities = np.full((2, 4), 0.25, dtype=np.float32)
    response = grpc_tfserving.predict_response(model, probabilities)
    assert response.model_spec.version.value == 5
    output = response.outputs["probabilities"]
    assert [d.size for d in output.tensor_shape.dim] == [2, 4]
    np.testing.assert_array_equal(
        np.frombuffer(output.tensor_content, dtype="<f4").reshape(2, 4), probabilities
    )
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata = grpc_tfserving.metadata_response(request, model)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "serve"}
    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    assert "metadata_field" in refused(lambda: grpc_tfserving.metadata_response(bad, model), 400)
