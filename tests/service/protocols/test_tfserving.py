"""Tests for service.protocols.tfserving: the TF Serving REST wire format (transport-free parsing
and answers; no TensorFlow, no server). A refusal is checked as the HTTP answer the service
gives it."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service.protocols import tfserving
from service.protocols.tensors import ImagesInput
from service.serving.model_store import VersionStatus
from tests.helpers.answers import refused
from tests.helpers.images import flat_png
from tests.helpers.models import loaded_model

MAX_IMAGES = 4
MAX_PIXELS = 100_000
CLASS_NAMES = ["zero", "one", "two", "three"]


def tf_parse(body: object) -> tuple[ImagesInput, bool]:
    return tfserving.parse_predict(body, max_images=MAX_IMAGES, max_pixels=MAX_PIXELS)


def test_tfserving_instances_of_b64_images_are_encoded_uploads_in_order() -> None:
    images = [flat_png(10), flat_png(200)]
    body = {"instances": [{"b64": base64.b64encode(data).decode()} for data in images]}
    parsed, columnar = tf_parse(body)
    assert not columnar and parsed.pixels is None
    assert [u.data for u in parsed.encoded or []] == images
    assert [u.filename for u in parsed.encoded or []] == ["instances-0", "instances-1"]


def test_tfserving_b64_accepts_url_safe_alphabet_and_missing_padding() -> None:
    data = bytes(range(256)) * 3  # has '+' and '/' in standard base64
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in url_safe and "_" in url_safe
    parsed, _ = tf_parse({"instances": [{"b64": url_safe}]})
    assert parsed.encoded is not None and parsed.encoded[0].data == data
    standard = base64.b64encode(data).decode()
    parsed, _ = tf_parse({"instances": [{"b64": " " + standard + "\n"}]})
    assert parsed.encoded is not None and parsed.encoded[0].data == data


def test_tfserving_pixel_instances_become_float32_images() -> None:
    rows = np.arange(2 * 3 * 5 * 3).reshape(2, 3, 5, 3) % 256
    parsed, columnar = tf_parse({"instances": rows.tolist(), "signature_name": "serving_default"})
    assert not columnar and parsed.encoded is None
    assert parsed.pixels is not None and len(parsed.pixels) == 2
    assert parsed.pixels[1].dtype == np.float32
    np.testing.assert_array_equal(np.stack(parsed.pixels), rows.astype(np.float32))


def test_tfserving_columnar_inputs_plain_and_named() -> None:
    rows = np.full((2, 4, 4, 3), 7.5)
    parsed, columnar = tf_parse({"inputs": rows.tolist()})
    assert columnar and parsed.pixels is not None and len(parsed.pixels) == 2
    parsed, columnar = tf_parse({"inputs": {"images": rows.tolist()}})
    assert columnar and parsed.pixels is not None and float(parsed.pixels[0][0, 0, 0]) == 7.5
    one = {"b64": base64.b64encode(flat_png()).decode()}
    parsed, columnar = tf_parse({"inputs": one})  # one encoded image, no list
    assert columnar and parsed.encoded is not None and len(parsed.encoded) == 1
    parsed, _ = tf_parse({"inputs": {"images": [one, one]}})
    assert parsed.encoded is not None and len(parsed.encoded) == 2


def test_tfserving_instances_may_name_the_input() -> None:
    b64 = base64.b64encode(flat_png()).decode()
    parsed, _ = tf_parse({"instances": [{"images": {"b64": b64}}]})
    assert parsed.encoded is not None and parsed.encoded[0].data == flat_png()
    pixels = np.zeros((4, 4, 3)).tolist()
    parsed, _ = tf_parse({"instances": [{"images": pixels}, {"images": pixels}]})
    assert parsed.pixels is not None and len(parsed.pixels) == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([1, 2], ['"instances" or "inputs"']),
        ({}, ["exactly one of"]),
        ({"instances": [], "inputs": []}, ["exactly one of"]),
        ({"instances": "abc"}, ["one entry per image"]),
        ({"instances": []}, ["no images"]),
        ({"inputs": 5}, ['"inputs" must be a list']),
        ({"instances": [{"b64": "aGk=", "x": 1}]}, ['{"b64": "<base64>"}']),
        (
            {"instances": [{"input_1": [[[0, 0, 0]]]}]},
            ["unknown input name(s) input_1", "'images'"],
        ),
        ({"instances": [{"b64": "!!!not base64"}]}, ["instances[0]", "not valid base64"]),
        ({"instances": [{"b64": 42}]}, ["must be a string", "int"]),
        (
            {"instances": [{"b64": "aGk="}, np.zeros((2, 2, 3)).tolist()]},
            ["mix of b64 images and pixel arrays"],
        ),
        ({"instances": np.zeros((1, 4, 4, 1)).tolist()}, ["(N, height, width, 3)", "[1, 4, 4, 1]"]),
        ({"instances": [[1, 2, 3]]}, ["(N, height, width, 3)"]),
        (
            {"instances": [np.zeros((2, 2, 3)).tolist(), np.zeros((3, 3, 3)).tolist()]},
            ["one shape"],
        ),
        ({"instances": [[[["a", "b", "c"]]]]}, ["must be numbers"]),
        ({"instances": [[[[0, 0, 256]]]]}, ["from 0 to 255"]),
        ({"instances": [[[[0, -1, 0]]]]}, ["from 0 to 255"]),
        ({"instances": [[[[0, float("nan"), 0]]]]}, ["finite"]),
        ({"instances": [[[[0, float("inf"), 0]]]]}, ["finite"]),
        ({"instances": [{"b64": "aGk="}] * (MAX_IMAGES + 1)}, [f"at most {MAX_IMAGES}"]),
        ({"instances": np.zeros((MAX_IMAGES + 1, 2, 2, 3)).tolist()}, [f"at most {MAX_IMAGES}"]),
        ({"instances": [{"b64": "aGk="}], "signature_name": "classify"}, ["signature_name"]),
    ],
    ids=[
        "list-body",
        "neither",
        "both",
        "instances-not-list",
        "no-images",
        "inputs-number",
        "b64-extra-key",
        "unknown-input-name",
        "bad-base64",
        "b64-not-string",
        "mixed-kinds",
        "one-channel",
        "flat-pixels",
        "ragged",
        "strings",
        "above-255",
        "negative",
        "nan",
        "inf",
        "too-many-b64",
        "too-many-pixels",
        "unknown-signature",
    ],
)
def test_tfserving_bad_bodies_are_400_saying_what_to_fix(body: object, words: list[str]) -> None:
    message = refused(lambda: tf_parse(body))
    for word in words:
        assert word in message


def test_tfserving_a_grey_instance_is_reported_as_sent_with_the_fix() -> None:
    """A 28x28 grey digit as one instance: its shape as sent ([1, 28, 28], not a shape the
    service made up) and what to change."""
    message = refused(lambda: tf_parse({"instances": [np.zeros((28, 28)).tolist()]}))
    assert "got [1, 28, 28]" in message
    assert "[R, G, B]" in message and "three times" in message


def test_tfserving_images_over_the_pixel_limit_are_413() -> None:
    big = np.zeros((1, 400, 400, 3)).tolist()
    message = refused(lambda: tf_parse({"instances": big}), 413)
    assert "IMGCLS_MAX_PIXELS" in message


def test_tfserving_deep_nesting_is_a_400() -> None:
    deep: object = 0
    for _ in range(200):
        deep = [deep]
    assert "must be numbers" in refused(lambda: tf_parse({"instances": [deep]}))


def test_tfserving_predict_answer_rows_or_columns() -> None:
    probabilities = [np.array([0.25, 0.75], dtype=np.float32), np.array([1.0, 0.0])]
    assert tfserving.predict_answer(probabilities, columnar=False) == {
        "predictions": [[0.25, 0.75], [1.0, 0.0]]
    }
    assert tfserving.predict_answer(probabilities, columnar=True) == {
        "outputs": [[0.25, 0.75], [1.0, 0.0]]
    }


def test_tfserving_version_status_uses_its_states_and_hides_unmanaged_versions() -> None:
    rows = [
        VersionStatus(4, "loading"),
        VersionStatus(3, "serving"),
        VersionStatus(2, "failed", "checksum mismatch for saved_model.pb"),
        VersionStatus(1, "available"),
    ]
    assert tfserving.version_status(rows) == {
        "model_version_status": [
            {
                "version": "4",
                "state": "LOADING",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "3",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "2",
                "state": "END",
                "status": {
                    "error_code": "UNKNOWN",
                    "error_message": "checksum mismatch for saved_model.pb",
                },
            },
        ]
    }


def test_tfserving_metadata_describes_the_signature() -> None:
    answer = tfserving.metadata(loaded_model(3, CLASS_NAMES))
    assert answer["model_spec"] == {"name": "digits", "signature_name": "", "version": "3"}
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    inputs, outputs = signature["inputs"]["images"], signature["outputs"]["probabilities"]
    assert inputs["dtype"] == outputs["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in inputs["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    assert [d["size"] for d in outputs["tensor_shape"]["dim"]] == ["-1", str(len(CLASS_NAMES))]
