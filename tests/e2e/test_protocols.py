"""Clients written for other servers, unchanged, against a real ``python -m service``.

* ``tritonclient.http`` (NVIDIA's client for Triton and KServe V2): health, metadata, inference
  with JSON and binary tensors, the classification extension, versioned calls, errors.
* TensorFlow Serving's REST API as its documentation gives it, sent with httpx: ``b64`` and pixel
  instances, columnar ``inputs``, version and label routes, model status and metadata, errors.

For the same held-out digits every protocol must return the probabilities ``/predict`` returns
(which rounds scores to 6 decimals, hence the 1e-6 tolerance).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers.protocol_digits import (
    COUNT,
    TOLERANCE,
    Digits,
    assert_same_probabilities,
    held_out_digits,
    two_version_repo,
)
from tests.helpers.servers import Server, start_server, stop_server
from training.data import load_digits_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MANY = 200  # images of one request: more than a model call's batch, fewer than the queue
MAX_BATCH_SIZE, MAX_QUEUE_SIZE = 32, 256  # the defaults the module's server runs with


@pytest.fixture(scope="module")
def protocol_repo(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits 1 (trained) and 2 (the same SavedModel republished), both served, labelled."""
    return two_version_repo(trained_repo, tmp_path_factory.mktemp("protocol-repo") / "models")


@pytest.fixture(scope="module")
def server(protocol_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        protocol_repo, tmp_path_factory.mktemp("protocol-logs"), poll_interval_s="0.2"
    )
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            body = client.get("/models").json()
        versions = {v["version"]: v["state"] for v in body["models"][0]["versions"]}
        assert versions == {2: "serving", 1: "serving"}, body
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def digits(http: httpx.Client) -> Digits:
    return held_out_digits(http)


# --- tritonclient.http (Open Inference Protocol V2) -------------------------------------------


def test_triton_server_and_model_health_and_metadata(
    triton_client: triton.InferenceServerClient,
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits")
    assert triton_client.is_model_ready("digits", "1")
    assert triton_client.is_model_ready("digits", "2")
    assert not triton_client.is_model_ready("digits", "7")

    server = triton_client.get_server_metadata()
    assert server["name"] == "imgcls"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])

    meta = triton_client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1", "2"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "images": ("FP32", [-1, -1, -1, 3]),
        "image_bytes": ("BYTES", [-1]),
    }
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert triton_client.get_model_metadata("digits", "1")["name"] == "digits"


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_triton_bytes_binary_tensor_matches_predict(
    triton_client: triton.InferenceServerClient, digits: Digits, binary_output: bool
) -> None:
    images = triton.InferInput("image_bytes", [COUNT], "BYTES")
    images.set_data_from_numpy(np.array(digits.pngs, dtype=np.object_), binary_data=True)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary_output)
    result = triton_client.infer("digits", [images], outputs=[output], request_id="req-7")
    assert_same_probabilities(result.as_numpy("probabilities"), digits)
    response = result.get_response()
    assert response["model_name"] == "digits" and response["id"] == "req-7"
    assert response["model_version"] == "1"  # unpinned: the version the stable label names


def test_triton_bytes_json_base64_strings_match_predict(
    triton_client: triton.InferenceServerClient, digits: Digits
) -> None:
    # In JSON, tritonclient sends each element of an object array of str as it is: base64 text.
    images = triton.InferInput("image_bytes", [COUNT], "BYTES")
    images.set_data_from_numpy(np.array(digits.b64, dtype=np.object_), binary_data=False)
    assert "data" in images._get_tensor()  # really a JSON tensor
    output = triton.InferRequestedOutput("probabilities", binary_data=False)
    result = triton_client.infer("digits", [images], outputs=[output])
    assert_same_probabilities(result.as_numpy("probabilities"), digits)


@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_triton_pixel_tensors_match_predict(
    triton_client: triton.InferenceServerClient,
    digits: Digits,
    binary_input: bool,
    datatype: str,
) -> None:
    images = triton.InferInput("images", list(digits.rgb.shape), datatype)
    values = digits.rgb if datatype == "FP32" else digits.rgb.astype(np.uint8)
    images.set_data_from_numpy(values, binary_data=binary_input)
    result = triton_client.infer("digits", [images])  # outputs: the server's default (JSON)
    assert_same_probabilities(result.as_numpy("probabilities"), digits)


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_triton_classification_extension(
    triton_client: triton.InferenceServerClient, digits: Digits, binary_output: bool
) -> None:
    images = triton.InferInput("image_bytes", [COUNT], "BYTES")
    images.set_data_from_numpy(np.array(digits.pngs, dtype=np.object_))
    output = triton.InferRequestedOutput("probabilities", binary_data=binary_output, class_count=3)
    result = triton_client.infer("digits", [images], outputs=[output])
    top = result.as_numpy("probabilities")
    assert top is not None and top.shape == (COUNT, 3)
    for row, reference in zip(top, digits.reference, strict=True):
        entries = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
        scores = [float(score) for score, _, _ in entries]
        # The three best, best first (compared by score: tiny probabilities may tie once
        # /predict rounds them to 6 decimals).
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, np.sort(reference)[::-1][:3], rtol=0, atol=TOLERANCE)
        assert int(entries[0][1]) == int(np.argmax(reference))
        for score, index, label in entries:
            assert label == digits.class_names[int(index)]
            assert float(score) == pytest.approx(reference[int(index)], abs=TOLERANCE)


@pytest.mark.parametrize("version", ["1", "2"])
def test_triton_versioned_call(
    triton_client: triton.InferenceServerClient, digits: Digits, version: str
) -> None:
    images = triton.InferInput("images", list(digits.rgb.shape), "FP32")
    images.set_data_from_numpy(digits.rgb)
    result = triton_client.infer("digits", [images], model_version=version)
    assert result.get_response()["model_version"] == version
    assert_same_probabilities(result.as_numpy("probabilities"), digits)


def triton_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_triton_unknown_model_or_version_is_a_404_naming_what_exists(
    triton_client: triton.InferenceServerClient, digits: Digits
) -> None:
    images = triton.InferInput("images", [1, 28, 28, 3], "FP32")
    images.set_data_from_numpy(digits.rgb[:1])
    error = triton_error(lambda: triton_client.infer("cats", [images]))
    assert error.status() == "404"
    assert "'cats'" in error.message() and "'digits'" in error.message()
    error = triton_error(lambda: triton_client.infer("digits", [images], model_version="9"))
    assert error.status() == "404" and "served: 2, 1" in error.message()
    error = triton_error(lambda: triton_client.get_model_metadata("cats"))
    assert error.status() == "404" and "'digits'" in error.message()
    assert not triton_client.is_model_ready("cats")


def test_triton_wrong_datatype_shape_or_byte_count_is_a_400(
    triton_client: triton.InferenceServerClient, digits: Digits
) -> None:
    fp64 = triton.InferInput("images", [1, 28, 28, 3], "FP64")
    fp64.set_data_from_numpy(digits.rgb[:1].astype(np.float64))
    error = triton_error(lambda: triton_client.infer("digits", [fp64]))
    assert error.status() == "400" and "'FP64' is not taken" in error.message()

    one_channel = triton.InferInput("images", [1, 28, 28, 1], "FP32")
    one_channel.set_data_from_numpy(digits.rgb[:1, ..., :1])
    error = triton_error(lambda: triton_client.infer("digits", [one_channel]))
    assert error.status() == "400" and "(N, height, width, 3)" in error.message()

    # The declared shape says two images; the binary data holds one.
    short = triton.InferInput("images", [1, 28, 28, 3], "FP32")
    short.set_data_from_numpy(digits.rgb[:1], binary_data=True)
    short.set_shape([2, 28, 28, 3])
    error = triton_error(lambda: triton_client.infer("digits", [short]))
    assert error.status() == "400"
    assert f"needs {2 * 28 * 28 * 3 * 4} bytes of binary data, got {28 * 28 * 3 * 4}" in (
        error.message()
    )

    wrong_name = triton.InferInput("input_1", [1, 28, 28, 3], "FP32")
    wrong_name.set_data_from_numpy(digits.rgb[:1])
    error = triton_error(lambda: triton_client.infer("digits", [wrong_name]))
    assert error.status() == "400" and "'images'" in error.message()

    not_images = triton.InferInput("image_bytes", [1], "BYTES")
    not_images.set_data_from_numpy(np.array([b"hello, not an image"], dtype=np.object_))
    error = triton_error(lambda: triton_client.infer("digits", [not_images]))
    assert error.status() == "415"


# --- tritonclient.http: model configuration, repository extension, compression ---------------


def test_triton_model_config(triton_client: triton.InferenceServerClient) -> None:
    config = triton_client.get_model_config("digits")
    assert config["name"] == "digits" and config["platform"] == "tensorflow_savedmodel"
    # Images one request may carry: IMGCLS_MAX_TENSOR_IMAGES, by default the queue size.
    assert config["max_batch_size"] == MAX_QUEUE_SIZE
    assert config["version_policy"] == {"all": {}}  # SERVING_YAML's
    assert {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]} == {
        "images": ("TYPE_FP32", [-1, -1, 3]),
        "image_bytes": ("TYPE_STRING", [1]),
    }
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [MAX_BATCH_SIZE]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert triton_client.get_model_config("digits", "2")["output"] == config["output"]

    error = triton_error(lambda: triton_client.get_model_config("cats"))
    assert error.status() == "404" and "'digits'" in error.message()
    error = triton_error(lambda: triton_client.get_model_config("digits", "9"))
    assert error.status() == "404" and "served: 2, 1" in error.message()


def test_triton_repository_index(
    triton_client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    index = [
        {"name": "digits", "version": "1", "state": "READY"},
        {"name": "digits", "version": "2", "state": "READY"},
    ]
    assert triton_client.get_model_repository_index() == index
    assert http.post("/v2/repository/index", json={"ready": True}).json() == index
    refused = http.post("/v2/repository/index", json={"ready": "yes"})
    assert refused.status_code == 400 and "true or false" in refused.json()["error"]


@pytest.mark.parametrize("action", ["load", "unload"])
def test_triton_model_control_is_refused_saying_how_models_are_managed(
    triton_client: triton.InferenceServerClient, protocol_repo: Path, action: str
) -> None:
    call = triton_client.load_model if action == "load" else triton_client.unload_model
    error = triton_error(lambda: call("digits"))
    assert error.status() == "400"
    message = error.message()
    assert message.startswith("explicit model load / unload is not allowed if polling is enabled")
    assert "IMGCLS_MODELS_DIR" in message and str(protocol_repo / "serving.yaml") in message
    assert triton_client.is_model_ready("digits")  # nothing was unloaded


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
def test_triton_compressed_requests_match_predict(
    triton_client: triton.InferenceServerClient,
    digits: Digits,
    compression: str,
    binary_input: bool,
) -> None:
    images = triton.InferInput("images", list(digits.rgb.shape), "FP32")
    images.set_data_from_numpy(digits.rgb, binary_data=binary_input)
    result = triton_client.infer("digits", [images], request_compression_algorithm=compression)
    assert_same_probabilities(result.as_numpy("probabilities"), digits)

    pngs = triton.InferInput("image_bytes", [COUNT], "BYTES")
    pngs.set_data_from_numpy(np.array(digits.pngs, dtype=np.object_), binary_data=True)
    result = triton_client.infer("digits", [pngs], request_compression_algorithm=compression)
    assert_same_probabilities(result.as_numpy("probabilities"), digits)


@pytest.fixture(scope="module")
def many_single(triton_client: triton.InferenceServerClient) -> tuple[np.ndarray, np.ndarray]:
    """MANY held-out digits (N, 28, 28, 3) uint8, and the probabilities of each sent alone."""
    images = load_digits_data(0.1).test.images[:MANY]
    assert images.shape == (MANY, 28, 28, 3)
    rows = []
    for image in images:
        one = triton.InferInput("images", [1, 28, 28, 3], "FP32")
        one.set_data_from_numpy(image[None].astype(np.float32), binary_data=True)
        rows.append(triton_client.infer("digits", [one]).as_numpy("probabilities")[0])
    return images, np.stack(rows)


@pytest.mark.parametrize(
    ("datatype", "binary_input"),
    [("UINT8", True), ("FP32", True), ("UINT8", False), ("FP32", False)],
    ids=["uint8-binary", "fp32-binary", "uint8-json", "fp32-json"],
)
def test_triton_request_of_more_images_than_a_batch_matches_single_requests(
    triton_client: triton.InferenceServerClient,
    many_single: tuple[np.ndarray, np.ndarray],
    datatype: str,
    binary_input: bool,
) -> None:
    # 200 images in one request: split across model calls of MAX_BATCH_SIZE, answered whole.
    images, single = many_single
    tensor = triton.InferInput("images", list(images.shape), datatype)
    values = images if datatype == "UINT8" else images.astype(np.float32)
    tensor.set_data_from_numpy(values, binary_data=binary_input)
    result = triton_client.infer("digits", [tensor])
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (MANY, 10)
    np.testing.assert_allclose(probabilities, single, rtol=0, atol=1e-5)


# --- TensorFlow Serving REST ------------------------------------------------------------------


def tf_predict(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v1/models/{path}:predict", json=body)


def test_tfserving_b64_instances_match_predict(http: httpx.Client, digits: Digits) -> None:
    response = tf_predict(http, "digits", {"instances": [{"b64": b} for b in digits.b64]})
    assert response.status_code == 200, response.text
    assert_same_probabilities(response.json()["predictions"], digits)
    assert response.headers["X-Model-Version"] == "1"  # stable


def test_tfserving_pixel_instances_match_predict(http: httpx.Client, digits: Digits) -> None:
    body = {"signature_name": "serving_default", "instances": digits.rgb.tolist()}
    response = tf_predict(http, "digits", body)
    assert response.status_code == 200, response.text
    assert_same_probabilities(response.json()["predictions"], digits)


def test_tfserving_columnar_inputs_answer_outputs(http: httpx.Client, digits: Digits) -> None:
    response = tf_predict(http, "digits", {"inputs": {"images": digits.rgb.tolist()}})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"outputs"}
    assert_same_probabilities(response.json()["outputs"], digits)
    response = tf_predict(http, "digits", {"inputs": [{"b64": b} for b in digits.b64]})
    assert_same_probabilities(response.json()["outputs"], digits)


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("digits/versions/1", "1"),
        ("digits/versions/2", "2"),
        ("digits/labels/stable", "1"),
        ("digits/labels/canary", "2"),
    ],
)
def test_tfserving_version_and_label_routes(
    http: httpx.Client, digits: Digits, path: str, version: str
) -> None:
    response = tf_predict(http, path, {"instances": [{"b64": b} for b in digits.b64]})
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == version
    assert_same_probabilities(response.json()["predictions"], digits)


def test_tfserving_model_status(http: httpx.Client) -> None:
    available = {"error_code": "OK", "error_message": ""}
    assert http.get("/v1/models/digits").json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": available},
            {"version": "1", "state": "AVAILABLE", "status": available},
        ]
    }
    one = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": available}]}
    assert http.get("/v1/models/digits/versions/1").json() == one
    assert http.get("/v1/models/digits/labels/stable").json() == one


def test_tfserving_metadata(http: httpx.Client) -> None:
    for path, version in (
        ("digits", "1"),
        ("digits/versions/2", "2"),
        ("digits/labels/canary", "2"),
    ):
        body = http.get(f"/v1/models/{path}/metadata").json()
        assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": version}
        signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
        image_input = signature["inputs"]["images"]
        assert image_input["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in image_input["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
        output = signature["outputs"]["probabilities"]
        assert [d["size"] for d in output["tensor_shape"]["dim"]] == ["-1", "10"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/v1/models/cats:predict", {"instances": []}, 404, ["'cats'", "'digits'"]),
        ("GET", "/v1/models/cats", None, 404, ["'cats'", "'digits'"]),
        ("POST", "/v1/models/digits/versions/9:predict", {"instances": []}, 404, ["served: 2, 1"]),
        (
            "GET",
            "/v1/models/digits/versions/9",
            None,
            404,
            ["version 9 of 'digits' is not managed", "served versions: 1, 2"],
        ),
        (
            "POST",
            "/v1/models/digits/labels/beta:predict",
            {"instances": []},
            404,
            ["no label 'beta'", "canary -> 2, stable -> 1"],
        ),
        ("POST", "/v1/models/digits:predict", {"instances": []}, 400, ["no images"]),
        ("POST", "/v1/models/digits:predict", {"examples": []}, 400, ['"instances"', '"inputs"']),
        (
            "POST",
            "/v1/models/digits:predict",
            {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]},
            415,
            ["not a supported image"],
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            {"instances": [[[[0, 0, 300]]]]},
            400,
            ["from 0 to 255"],
        ),
        (
            "POST",
            "/v1/models/digits:predict",
            {"instances": [{"b64": "aGk="}] * (MAX_QUEUE_SIZE + 1)},
            400,
            [f"at most {MAX_QUEUE_SIZE} per request", "IMGCLS_MAX_TENSOR_IMAGES"],
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-model-status",
        "unknown-version",
        "unknown-version-status",
        "unknown-label",
        "no-instances",
        "neither-key",
        "b64-not-image",
        "pixel-out-of-range",
        "too-many-images",
    ],
)
def test_tfserving_errors_are_error_objects(
    http: httpx.Client,
    method: str,
    path: str,
    body: object,
    status: int,
    words: list[str],
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error"}
    for word in words:
        assert word in answer["error"]


# --- the native routes, for completeness: same images, same answer ---------------------------


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/models/digits/predict", 1),
        ("/models/digits/versions/2/predict", 2),
        ("/models/digits/versions/1/predict", 1),
        ("/models/digits/labels/stable/predict", 1),
    ],
)
def test_native_model_routes_match_predict(
    http: httpx.Client, digits: Digits, path: str, version: int
) -> None:
    files = [("file", (f"d{i}.png", data, "image/png")) for i, data in enumerate(digits.pngs)]
    response = http.post(path, files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "digits", "version": version}
    rows = [
        [{p["label"]: p["score"] for p in r["predictions"]}[n] for n in digits.class_names]
        for r in body["results"]
    ]
    assert_same_probabilities(rows, digits)


def test_api_keys_guard_the_protocol_routes_too(
    protocol_repo: Path, server_factory: Any, digits: Digits
) -> None:
    locked: Server = server_factory(protocol_repo, api_keys="s3cret,other-key")
    client = triton.InferenceServerClient(url=locked.url.removeprefix("http://"))
    try:
        images = triton.InferInput("images", [1, 28, 28, 3], "FP32")
        images.set_data_from_numpy(digits.rgb[:1])
        error = triton_error(lambda: client.infer("digits", [images]))
        assert error.status() == "401" and "API key" in error.message()
        result = client.infer("digits", [images], headers={"X-API-Key": "s3cret"})
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), digits.reference[:1], rtol=0, atol=TOLERANCE
        )
        assert client.is_server_ready()  # health and metadata stay open, as /healthz does
    finally:
        client.close()
    body = {"instances": [{"b64": digits.b64[0]}]}
    refused = httpx.post(f"{locked.url}/v1/models/digits:predict", json=body, timeout=30)
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    assert refused.headers["www-authenticate"] == "Bearer"
    allowed = httpx.post(
        f"{locked.url}/v1/models/digits:predict",
        json=body,
        headers={"Authorization": "Bearer other-key"},
        timeout=30,
    )
    assert allowed.status_code == 200, allowed.text
