"""Triton's model configuration and model repository extensions of the Open Inference Protocol
V2, transport-free: the dicts a REST route answers as JSON and a gRPC servicer turns into its
messages (``google.protobuf.json_format.ParseDict`` into ``inference.ModelConfig``, or the
index's ``RepositoryIndexResponse.ModelIndex``).

* :func:`model_config`: ``GET /v2/models/{name}[/versions/{v}]/config``, the protobuf JSON
  mapping of Triton's ``inference.ModelConfig`` (field names as the ``.proto`` spells them,
  64-bit numbers as JSON numbers, as Triton writes them).
* :func:`repository_index`: ``POST /v2/repository/index``, Triton's list of every model and
  every version it manages, with its state.
* :func:`model_control_refused`: ``POST /v2/repository/models/{name}/load`` and ``/unload``.
  Models are managed through the repository folder (Triton's ``--model-control-mode=poll``),
  so explicit control is refused with Triton's own words for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.names import SERVE_INPUT_NAME, SERVE_OUTPUT_NAME
from service.protocols.tensors import bad_input
from service.protocols.v2 import BYTES_INPUT_NAME, PLATFORM
from service.serving.config import CONFIG_FILE, LatestPolicy, SpecificPolicy, VersionPolicy
from service.serving.errors import InvalidInput
from service.serving.model_store import LoadedModel, VersionStatus
from service.serving.repository import Limits, ServedModel
from service.settings import Settings

#: Triton's ``ModelReadyState`` names for this service's version states. ``available`` (on
#: disk, outside the version policy) is not managed and not listed, as Triton lists only the
#: versions its policy loads or tried to.
INDEX_STATES = {"serving": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}
#: What Triton answers a load or unload when the repository is polled (its core's message).
POLLING_MESSAGE = "explicit model load / unload is not allowed if polling is enabled"
MICROSECONDS_PER_SECOND = 1_000_000


def model_config(
    name: str,
    model: LoadedModel,
    limits: Limits,
    policy: VersionPolicy,
    *,
    max_images: int,
) -> dict[str, Any]:
    """Triton's ``ModelConfig`` of ``model`` (one served version of model ``name``).

    Args:
        name: The model's name in the repository.
        model: The version described (its class count and input size).
        limits: The model's batching limits (``serving.yaml`` over the settings).
        policy: The model's version policy from ``serving.yaml``.
        max_images: Images one request may carry (``Settings.tensor_images_limit``), Triton's
            ``max_batch_size``: the batcher splits a larger request across model calls of at
            most ``limits.max_batch_size``, the ``preferred_batch_size``.

    ``images`` is any height and width (-1): the model resizes to its input size, given in
    ``parameters.input_size`` as ``HxW``. Without a label file, ``label_filename`` is absent;
    the class names are in the model metadata's ``parameters.class_names``.
    """
    height, width = model.input_size
    return {
        "name": name,
        "platform": PLATFORM,
        "version_policy": _version_policy(policy),
        "max_batch_size": max_images,
        "input": [
            {
                "name": SERVE_INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NHWC",
                "dims": [-1, -1, 3],
            },
            {"name": BYTES_INPUT_NAME, "data_type": "TYPE_STRING", "dims": [1]},
        ],
        "output": [
            {
                "name": SERVE_OUTPUT_NAME,
                "data_type": "TYPE_FP32",
                "dims": [model.metadata.num_classes],
            }
        ],
        "dynamic_batching": {
            "preferred_batch_size": [limits.max_batch_size],
            "max_queue_delay_microseconds": _microseconds(limits.batch_timeout_s),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": _microseconds(limits.request_timeout_s),
                "max_queue_size": limits.max_queue_size,
            },
        },
        "parameters": {
            "input_size": {"string_value": f"{height}x{width}"},
            # What computes the version: savedmodel, or a compiled artifact (openvino-int8).
            "runtime": {"string_value": model.runtime.name},
        },
    }


def served_config(
    name: str, served: ServedModel, model: LoadedModel, settings: Settings
) -> dict[str, Any]:
    """:func:`model_config` of ``model``, a version of ``served``, with its limits and policy
    and the images one request may carry: REST's route and gRPC's ModelConfig alike."""
    return model_config(
        name,
        model,
        served.limits,
        served.config.version_policy,
        max_images=settings.tensor_images_limit(served.limits.max_queue_size),
    )


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if isinstance(policy, LatestPolicy):
        return {"latest": {"num_versions": policy.latest}}
    if isinstance(policy, SpecificPolicy):
        return {"specific": {"versions": sorted(policy.specific)}}
    return {"all": {}}


def _microseconds(seconds: float) -> int:
    return round(seconds * MICROSECONDS_PER_SECOND)


def parse_index_request(body: object) -> bool:
    """The ``ready`` flag of an index request body (absent, ``{}`` or ``{"ready": bool}``)."""
    if body is None:
        return False
    if not isinstance(body, dict):
        raise bad_input('the repository index request is a JSON object: {"ready": true|false}')
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise bad_input(f'"ready" must be true or false, got {str(ready)[:20]!r}')
    return ready


def repository_index(
    models: Mapping[str, Sequence[VersionStatus]], *, ready_only: bool = False
) -> list[dict[str, str]]:
    """Triton's repository index: per model (by name) each managed version, oldest first, as
    ``{"name", "version", "state"}`` plus ``"reason"`` when there is one (why it failed);
    a model with no managed version is ``{"name"}`` alone. ``ready_only``: READY versions only.

    ``models``: every model of the repository with its versions' states
    (:meth:`~service.serving.model_store.ModelStore.statuses`).
    """
    index: list[dict[str, str]] = []
    for name in sorted(models):
        rows = sorted(
            (row for row in models[name] if row.state != "available"), key=lambda r: r.version
        )
        if not rows:
            if not ready_only:
                index.append({"name": name})
            continue
        for row in rows:
            state = INDEX_STATES.get(row.state, "UNAVAILABLE")
            if ready_only and state != "READY":
                continue
            entry = {"name": name, "version": str(row.version), "state": state}
            if row.reason:
                entry["reason"] = row.reason
            index.append(entry)
    return index


def model_control_refused(
    action: str, name: str, models_dir: Path, poll_interval_s: float
) -> InvalidInput:
    """The refusal of an explicit ``load`` or ``unload`` of model ``name``: Triton's message,
    then how this service's models are managed instead."""
    target = models_dir / name[:128]
    return bad_input(
        f"{POLLING_MESSAGE}: this service polls its model repository (IMGCLS_MODELS_DIR, "
        f"{models_dir}) every {poll_interval_s:g} s instead of taking {action} requests. "
        f"To load a version, publish it as a new version folder {target}/<version>/ "
        "(python training/train.py does); to choose which versions are served or to unload "
        f"one, edit the version_policy and labels of {models_dir / CONFIG_FILE}"
    )
