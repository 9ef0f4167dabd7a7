"""The evaluation gate at publish: the candidate against the model's stable version.

:func:`run_gate` scores the stable version (the one ``serving.yaml``'s ``stable`` label names,
else the newest blessed version) on the very examples the candidate was scored on, the run's
held-out test split (the held-out part of every ``--data`` folder, a feedback folder included),
and judges the candidate with :func:`contract.evaluation.judge`. The rule comes from the flags,
else ``serving.yaml``'s ``gate:`` for the model, else :class:`contract.evaluation.GateRule`'s
defaults. The stable version runs through its own ``serve`` endpoint, so it sees the images
exactly as the service would give them to it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from contract.evaluation import (
    Evaluation,
    ExamplesSummary,
    GateRule,
    VersionScores,
    judge,
    scores,
    verdict_reason,
)
from contract.metadata import (
    InvalidModelVersionError,
    ModelMetadata,
    list_versions,
    read_metadata,
    verify_version_dir,
)
from training.data import FolderData, ImageData
from training.errors import UserError

logger = logging.getLogger("training")

#: The repository's serving configuration (the service's ``serving.yaml``).
SERVING_FILE = "serving.yaml"
STABLE_LABEL = "stable"


def serving_section(models_dir: Path, name: str) -> dict[str, Any]:
    """``serving.yaml``'s section for model ``name`` (empty without one). The service validates
    the file; here only ``labels.stable`` and ``gate`` are read."""
    try:
        raw = yaml.safe_load((models_dir / SERVING_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        logger.warning("cannot read %s (%s): the gate uses its defaults", SERVING_FILE, exc)
        return {}
    models = raw.get("models") if isinstance(raw, dict) else None
    section = models.get(name) if isinstance(models, dict) else None
    return section if isinstance(section, dict) else {}


def gate_rule(args: argparse.Namespace, section: dict[str, Any]) -> GateRule:
    """The flags over ``serving.yaml``'s ``gate:`` over the defaults."""
    configured = section.get("gate")
    try:
        rule = GateRule.model_validate(configured) if configured is not None else GateRule()
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise UserError(
            f"{SERVING_FILE}: gate{'.' + where if where else ''}: {problem['msg']} (the "
            "evaluation gate's rule: max_accuracy_drop and max_class_recall_drop, 0 to 1)"
        ) from None
    overrides = {
        "max_accuracy_drop": getattr(args, "gate_max_accuracy_drop", None),
        "max_class_recall_drop": getattr(args, "gate_max_recall_drop", None),
    }
    return rule.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def baseline_version(
    models_dir: Path, name: str, section: dict[str, Any]
) -> tuple[int, str] | None:
    """(version, how it was chosen) of the version to compare with, or None for a first one."""
    target = (section.get("labels") or {}).get(STABLE_LABEL)
    if isinstance(target, dict):
        target = target.get("version")
    if isinstance(target, int) and (models_dir / name / str(target)).is_dir():
        return target, STABLE_LABEL
    for version in sorted(list_versions(models_dir / name), reverse=True):
        try:
            if read_metadata(models_dir / name / str(version)).blessed:
                return version, "newest"
        except InvalidModelVersionError:
            continue
    return None


def examples_fingerprint(data: ImageData | FolderData, y_true: np.ndarray) -> str:
    """sha256 of the test examples in order (pixels, or file paths) and their labels."""
    digest = hashlib.sha256(data.fingerprint.encode())
    if isinstance(data, FolderData):
        digest.update("\n".join(data.test.files).encode())
    else:
        digest.update(np.ascontiguousarray(data.test.images).tobytes())
    digest.update(np.asarray(y_true, dtype=np.int64).tobytes())
    return digest.hexdigest()


def predict_with_version(version_dir: Path, test_dataset: Any) -> np.ndarray:
    """Class probabilities of a published version for every image of ``test_dataset`` (batches
    of (images, labels)), through its ``serve`` endpoint."""
    import tensorflow as tf

    module = tf.saved_model.load(str(version_dir))
    outputs = [np.asarray(module.serve(tf.cast(x, tf.float32))) for x, *_ in test_dataset]
    return np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), np.float32)


def run_gate(
    args: argparse.Namespace,
    model_name: str,
    data: ImageData | FolderData,
    test_dataset: Any,
    y_true: np.ndarray,
    y_pred: np.ndarray,
) -> Evaluation:
    """The candidate (``y_pred`` on the test split) against the baseline version; the verdict."""
    section = serving_section(args.models_dir, model_name)
    rule = gate_rule(args, section)
    candidate = scores(y_true, y_pred, data.class_names, version=None)
    examples = ExamplesSummary(
        count=int(y_true.size),
        fingerprint=examples_fingerprint(data, y_true),
        source=f"test split of {data.source}",
    )
    chosen = baseline_version(args.models_dir, model_name, section)
    baseline: VersionScores | None = None
    failed: str | None = None
    if chosen is not None:
        version_dir = args.models_dir / model_name / str(chosen[0])
        try:
            metadata = verify_version_dir(version_dir, repository_root=args.models_dir)
            probabilities = predict_with_version(version_dir, test_dataset)
            baseline = baseline_scores(metadata, probabilities, data.class_names, y_true)
        except Exception as exc:
            # Fail safe: a candidate that cannot be compared is published, not blessed.
            failed = f"version {chosen[0]} ({chosen[1]}) could not be evaluated: {exc}"
    if failed is None:
        failed = judge(candidate, baseline, rule)
    evaluation = Evaluation(
        blessed=failed is None,
        reason=failed if failed is not None else verdict_reason(candidate, baseline),
        baseline_label=chosen[1] if chosen is not None else None,
        rule=rule,
        examples=examples,
        candidate=candidate,
        baseline=baseline,
    )
    logger.info(
        "evaluation gate: %s: %s",
        "blessed" if evaluation.blessed else "NOT blessed",
        evaluation.reason,
    )
    return evaluation


def baseline_scores(
    metadata: ModelMetadata, probabilities: np.ndarray, class_names: list[str], y_true: np.ndarray
) -> VersionScores:
    """The baseline's scores, its predicted classes mapped onto the candidate's by name (a class
    the candidate does not know is simply wrong)."""
    if probabilities.shape[0] != y_true.size:
        raise ValueError(f"{probabilities.shape[0]} predictions for {y_true.size} test examples")
    own = np.argmax(probabilities, axis=-1) if probabilities.size else np.zeros(0, np.int64)
    index = {name: i for i, name in enumerate(class_names)}
    mapped = np.array([index.get(metadata.class_names[i], -1) for i in own], dtype=np.int64)
    return scores(y_true, mapped, class_names, version=metadata.version)
