"""Tests for service.protocols.v2_repository: Triton's model configuration (a valid
``inference.ModelConfig`` in protobuf's JSON mapping), the repository index and the refusal of
explicit model control. No TensorFlow, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from service.protocols import v2_repository
from service.serving.config import LatestPolicy, SpecificPolicy, VersionPolicy
from service.serving.model_store import VersionState, VersionStatus
from service.serving.repository import Limits
from tests.helpers.answers import refused
from tests.helpers.models import loaded_model

CLASS_NAMES = ["zero", "one", "two", "three"]
LIMITS = Limits(max_batch_size=32, max_queue_size=256, batch_timeout_s=0.002, request_timeout_s=5)


def config(policy: VersionPolicy | None = None, max_images: int = 256) -> dict[str, object]:
    return v2_repository.model_config(
        "digits",
        loaded_model(3, CLASS_NAMES, size=28),
        LIMITS,
        policy or LatestPolicy(),
        max_images=max_images,
    )


def test_model_config_has_triton_shape_and_the_service_limits() -> None:
    answer = config(max_images=200)
    assert answer["name"] == "digits" and answer["platform"] == "tensorflow_savedmodel"
    assert answer["max_batch_size"] == 200  # images one request may carry
    assert answer["input"] == [
        {"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NHWC", "dims": [-1, -1, 3]},
        {"name": "image_bytes", "data_type": "TYPE_STRING", "dims": [1]},
    ]
    assert answer["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [4]}]
    assert answer["dynamic_batching"] == {
        "preferred_batch_size": [32],
        "max_queue_delay_microseconds": 2000,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 5_000_000,
            "max_queue_size": 256,
        },
    }
    assert answer["parameters"] == {
        "input_size": {"string_value": "28x28"},
        "runtime": {"string_value": "savedmodel"},
    }


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (LatestPolicy(latest=2), {"latest": {"num_versions": 2}}),
        (SpecificPolicy(specific=[4, 1]), {"specific": {"versions": [1, 4]}}),
        ("all", {"all": {}}),
    ],
    ids=["latest", "specific", "all"],
)
def test_model_config_version_policy_is_tritons(policy: VersionPolicy, expected: object) -> None:
    assert config(policy)["version_policy"] == expected


@pytest.mark.parametrize("policy", [LatestPolicy(latest=3), SpecificPolicy(specific=[2]), "all"])
def test_model_config_parses_into_tritons_protobuf_model_config(policy: VersionPolicy) -> None:
    # What a gRPC front end does with the same dict: every field must exist in the .proto.
    message = json_format.ParseDict(
        config(policy, max_images=64), model_config_pb2.ModelConfig(), ignore_unknown_fields=False
    )
    assert message.name == "digits" and message.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in message.input] == [
        ("images", model_config_pb2.TYPE_FP32, [-1, -1, 3]),
        ("image_bytes", model_config_pb2.TYPE_STRING, [1]),
    ]
    assert message.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert [(o.name, list(o.dims)) for o in message.output] == [("probabilities", [4])]
    batching = message.dynamic_batching
    assert list(batching.preferred_batch_size) == [32]
    assert batching.max_queue_delay_microseconds == 2000
    assert batching.default_queue_policy.max_queue_size == 256
    assert message.version_policy.WhichOneof("policy_choice") == (
        policy if isinstance(policy, str) else next(iter(policy.model_dump()))
    )
    assert message.parameters["input_size"].string_value == "28x28"


def statuses(*rows: tuple[int, VersionState, str | None]) -> list[VersionStatus]:
    return [VersionStatus(version, state, reason) for version, state, reason in rows]


MODELS = {
    "photos": statuses((1, "serving", None)),
    "digits": statuses(
        (4, "loading", None),
        (3, "failed", "checksum of saved_model.pb does not match metadata.json"),
        (2, "serving", None),
        (1, "available", None),  # on disk, outside the version policy: not managed
    ),
    "empty": [],
}


def test_repository_index_lists_every_model_and_managed_version_as_triton_does() -> None:
    assert v2_repository.repository_index(MODELS) == [
        {
            "name": "digits",
            "version": "2",
            "state": "READY",
        },
        {
            "name": "digits",
            "version": "3",
            "state": "UNAVAILABLE",
            "reason": "checksum of saved_model.pb does not match metadata.json",
        },
        {"name": "digits", "version": "4", "state": "LOADING"},
        {"name": "empty"},  # no managed version: the name alone
        {"name": "photos", "version": "1", "state": "READY"},
    ]


def test_repository_index_ready_only() -> None:
    assert v2_repository.repository_index(MODELS, ready_only=True) == [
        {"name": "digits", "version": "2", "state": "READY"},
        {"name": "photos", "version": "1", "state": "READY"},
    ]
    assert v2_repository.repository_index({}) == []


@pytest.mark.parametrize(
    ("body", "ready"),
    [(None, False), ({}, False), ({"ready": True}, True), ({"ready": False}, False)],
)
def test_index_request_ready_flag(body: object, ready: bool) -> None:
    assert v2_repository.parse_index_request(body) is ready


@pytest.mark.parametrize(
    ("body", "words"),
    [([], "JSON object"), ("ready", "JSON object"), ({"ready": "yes"}, "true or false")],
)
def test_index_request_of_another_shape_is_a_400(body: object, words: str) -> None:
    assert words in refused(lambda: v2_repository.parse_index_request(body))


@pytest.mark.parametrize("action", ["load", "unload"])
def test_model_control_is_refused_with_tritons_message_and_what_to_do(action: str) -> None:
    message = refused(
        lambda: _raise(v2_repository.model_control_refused(action, "digits", Path("/m"), 2.0)), 400
    )
    assert message.startswith("explicit model load / unload is not allowed if polling is enabled")
    assert f"instead of taking {action} requests" in message
    assert "IMGCLS_MODELS_DIR" in message and "every 2 s" in message
    assert "/m/digits/<version>/" in message and "/m/serving.yaml" in message


def _raise(error: Exception) -> None:
    raise error
