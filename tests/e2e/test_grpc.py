"""gRPC clients written for other servers, unchanged, against a real ``python -m service``.

* ``tritonclient.grpc`` (the Open Inference Protocol V2 as Triton serves it): health, metadata,
  model configuration, repository index, inference with typed and raw contents, encoded images,
  the classification extension, versions, errors with their status codes.
* ``tensorflow-serving-api``'s ``PredictionServiceStub`` and ``ModelServiceStub``: Predict with
  encoded images and with pixels, by version and by label; GetModelMetadata; GetModelStatus.
* ``grpcio-health-checking``'s stub, as ``grpc_health_probe`` and Kubernetes' gRPC probes call it;
  and server reflection, as ``grpcurl`` lists services.

For the same held-out digits every protocol gives ``/predict``'s probabilities (which rounds
scores to 6 decimals, hence the 1e-6 tolerance).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.utils import InferenceServerException

from tests.helpers.protocol_digits import (
    Digits,
    assert_same_probabilities,
    held_out_digits,
    two_version_repo,
)
from tests.helpers.servers import Server, metric_value, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

API_KEY = "grpc-test-key"


@pytest.fixture(scope="module")
def server(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """digits 1 (trained) and 2 (the same SavedModel republished), labelled, with an API key."""
    models = two_version_repo(trained_repo, tmp_path_factory.mktemp("grpc-repo") / "models")
    srv = start_server(models, tmp_path_factory.mktemp("grpc-logs"), api_keys=API_KEY)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def digits(server: Server) -> Digits:
    with server.client(headers={"X-API-Key": API_KEY}) as http:
        return held_out_digits(http)


@pytest.fixture(scope="module")
def v2(server: Server) -> Iterator[triton.InferenceServerClient]:
    assert server.grpc_target is not None
    client = triton.InferenceServerClient(url=server.grpc_target)
    yield client
    client.close()


KEY = {"x-api-key": API_KEY}


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as chan:
        yield chan


# --- tritonclient.grpc (Open Inference Protocol V2) -------------------------------------------


def test_v2_health_metadata_and_config(v2: triton.InferenceServerClient) -> None:
    assert v2.is_server_live() and v2.is_server_ready()
    assert v2.is_model_ready("digits") and v2.is_model_ready("digits", "2")
    assert not v2.is_model_ready("digits", "7")
    meta = v2.get_server_metadata(as_json=True)
    assert meta["name"] == "imgcls" and "classification" in meta["extensions"]
    model = v2.get_model_metadata("digits", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {
        "images": ("FP32", ["-1", "-1", "-1", "3"]),  # int64 as strings in protobuf's JSON
        "image_bytes": ("BYTES", ["-1"]),
    }
    config = v2.get_model_config("digits", as_json=True)["config"]
    assert config["name"] == "digits"
    assert int(config["max_batch_size"]) == 256  # the default queue: the per-request limit
    assert {i["name"] for i in config["input"]} == {"images", "image_bytes"}
    assert [o["name"] for o in config["output"]] == ["probabilities"]
    index = v2.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
    }


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_v2_pixels_raw_contents_match_predict(
    v2: triton.InferenceServerClient, digits: Digits, datatype: str
) -> None:
    images = triton.InferInput("images", list(digits.rgb.shape), datatype)
    images.set_data_from_numpy(
        digits.rgb if datatype == "FP32" else digits.rgb.astype(np.uint8)
    )  # tritonclient.grpc sends raw_input_contents
    result = v2.infer("digits", [images], headers=KEY, request_id="grpc-7")
    assert_same_probabilities(result.as_numpy("probabilities"), digits)
    response = result.get_response()
    assert response.id == "grpc-7" and response.model_version == "1"


def test_v2_typed_contents_match_predict(
    server: Server, digits: Digits, channel: grpc.Channel
) -> None:
    """Typed ``fp32_contents`` (what KServe's clients and hand-built requests send)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=list(digits.rgb.shape))
    tensor.contents.fp32_contents.extend(digits.rgb.ravel().tolist())
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=30)
    (output,) = response.outputs
    assert output.name == "probabilities" and list(output.shape) == [len(digits.labels), 10]
    values = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(output.shape)
    assert_same_probabilities(values, digits)


def test_v2_encoded_images_and_classification(
    v2: triton.InferenceServerClient, digits: Digits
) -> None:
    images = triton.InferInput("image_bytes", [len(digits.pngs)], "BYTES")
    images.set_data_from_numpy(np.array(digits.pngs, dtype=np.object_))
    result = v2.infer("digits", [images], headers=KEY)
    assert_same_probabilities(result.as_numpy("probabilities"), digits)

    top = v2.infer(
        "digits",
        [images],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
        headers=KEY,
    ).as_numpy("probabilities")
    assert top is not None and top.shape == (len(digits.labels), 3)
    for row, reference in zip(top, digits.reference, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(reference.argmax()) and label == digits.class_names[int(index)]
        assert abs(float(score) - reference.max()) < 1e-5


def test_v2_versions_are_served_as_asked(v2: triton.InferenceServerClient, digits: Digits) -> None:
    images = triton.InferInput("images", list(digits.rgb.shape), "FP32")
    images.set_data_from_numpy(digits.rgb)
    result = v2.infer("digits", [images], model_version="2", headers=KEY)
    assert result.get_response().model_version == "2"
    assert_same_probabilities(result.as_numpy("probabilities"), digits)  # same weights


def test_v2_a_batch_of_200_is_answered_whole(
    v2: triton.InferenceServerClient, digits: Digits
) -> None:
    """200 images in one call: split across model calls of 32, answered in order."""
    picks = np.arange(200) % len(digits.labels)
    images = triton.InferInput("images", [200, 28, 28, 3], "UINT8")
    images.set_data_from_numpy(digits.rgb.astype(np.uint8)[picks])
    result = v2.infer("digits", [images], headers=KEY)
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (200, 10)
    np.testing.assert_allclose(probabilities, digits.reference[picks], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        (lambda c: c.infer("nope", [_pixels(1)], headers=KEY), "NOT_FOUND", "no model 'nope'"),
        (
            lambda c: c.infer("digits", [_pixels(1)], model_version="9", headers=KEY),
            "NOT_FOUND",
            "version '9'",
        ),
        (lambda c: c.infer("digits", [_pixels(1)]), "UNAUTHENTICATED", "API key"),
        (
            lambda c: c.infer("digits", [_pixels(300)], headers=KEY),
            "INVALID_ARGUMENT",
            "at most 256",
        ),
        (
            lambda c: c.infer("digits", [_bytes([b"not an image"])], headers=KEY),
            "INVALID_ARGUMENT",
            "image",
        ),
        (
            lambda c: c.infer("digits", [_pixels(1, shape=[1, 28, 28])], headers=KEY),
            "INVALID_ARGUMENT",
            "(N, height, width, 3)",
        ),
    ],
    ids=["unknown-model", "unknown-version", "no-key", "too-many", "not-an-image", "no-channels"],
)
def test_v2_errors_have_precise_status_codes(
    v2: triton.InferenceServerClient, call: object, code: str, words: str
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call(v2)  # type: ignore[operator]
    assert raised.value.status() == f"StatusCode.{code}", raised.value
    assert words in raised.value.message(), raised.value.message()


def _pixels(count: int, shape: list[int] | None = None) -> triton.InferInput:
    shape = shape or [count, 28, 28, 3]
    tensor = triton.InferInput("images", shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    return tensor


def _bytes(blobs: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image_bytes", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return tensor


# --- tensorflow-serving-api ---------------------------------------------------------------


def _predict_request(tensor: object, *, version: int | None = None, label: str = "") -> object:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    elif label:
        request.model_spec.version_label = label
    request.inputs["images"].CopyFrom(tensor)
    return request


def test_tfserving_predict_encoded_images_and_pixels(channel: grpc.Channel, digits: Digits) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for tensor in (
        tf.make_tensor_proto(digits.pngs),  # DT_STRING [N]
        tf.make_tensor_proto(digits.rgb),  # DT_FLOAT [N, 28, 28, 3] in tensor_content
        tf.make_tensor_proto(digits.rgb.astype(np.uint8)),  # DT_UINT8
    ):
        response = stub.Predict(_predict_request(tensor), metadata=tuple(KEY.items()), timeout=30)
        assert_same_probabilities(tf.make_ndarray(response.outputs["probabilities"]), digits)
        assert response.model_spec.name == "digits" and response.model_spec.version.value == 1


def test_tfserving_predict_by_version_and_label(channel: grpc.Channel, digits: Digits) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    tensor = tf.make_tensor_proto(digits.pngs)
    by_version = stub.Predict(_predict_request(tensor, version=2), metadata=tuple(KEY.items()))
    by_label = stub.Predict(_predict_request(tensor, label="canary"), metadata=tuple(KEY.items()))
    assert by_version.model_spec.version.value == 2 == by_label.model_spec.version.value
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(_predict_request(tensor, label="nope"), metadata=tuple(KEY.items()))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_tfserving_metadata_and_status(channel: grpc.Channel) -> None:
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]

    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = models.GetModelStatus(status_request, timeout=30)
    states = {
        s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
        for s in status.model_version_status
    }
    assert states == {1: "AVAILABLE", 2: "AVAILABLE"}


# --- health, reflection, metrics -----------------------------------------------------------


def test_health_checking_for_the_server_and_each_model(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="digits"), timeout=10).status == serving
    )
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in answer.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
    } <= names


def test_metrics_count_grpc_calls_by_method_and_status(
    server: Server, v2: triton.InferenceServerClient
) -> None:
    route = "/inference.GRPCInferenceService/ModelInfer"

    def count(code: str) -> float:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        return metric_value(text, "imgcls_requests_total", {"route": route, "code": code})

    ok, not_found = count("OK"), count("NOT_FOUND")
    v2.infer("digits", [_pixels(1)], headers=KEY)
    with pytest.raises(InferenceServerException):
        v2.infer("nope", [_pixels(1)], headers=KEY)
    assert count("OK") == ok + 1
    assert count("NOT_FOUND") == not_found + 1
