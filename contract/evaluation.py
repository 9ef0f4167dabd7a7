"""The evaluation gate: a candidate version against the stable version, on the same examples.

``train.py`` scores both versions on the run's held-out test split (which holds the held-out part
of any ``--data`` feedback folder), writes the result into the candidate's ``metadata.json``
(``evaluation``) and *blesses* the candidate only when it is not worse than stable by more than
the rule allows (TFX Evaluator's value and change thresholds). The service and the rollout
controller read ``blessed``: an unblessed version is published and can be pinned, but never
receives unpinned traffic by itself. Versions published before the gate carry no evaluation and
count as blessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: Examples of a class needed before its recall is judged (fewer: reported, not judged).
MIN_CLASS_SUPPORT = 5


class GateRule(BaseModel):
    """How much worse than stable a candidate may be and still be blessed (fractions 0..1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_accuracy_drop: float = Field(
        default=0.005, ge=0.0, le=1.0, description="accuracy may be lower than stable's by this"
    )
    max_class_recall_drop: float = Field(
        default=0.05, ge=0.0, le=1.0, description="each class's recall may drop by this"
    )


class ClassScores(BaseModel):
    recall: float | None  # None: no example of the class
    precision: float | None  # None: never predicted
    support: int  # examples of the class


class VersionScores(BaseModel):
    """One version's scores on the gate's examples."""

    version: int | None  # None: the candidate (its number is given when it is published)
    accuracy: float
    per_class: dict[str, ClassScores]


class ExamplesSummary(BaseModel):
    count: int
    fingerprint: str  # sha256 of the examples (data and labels, in order)
    source: str  # which split of which data


class Evaluation(BaseModel):
    """``metadata.json``'s ``evaluation``: both versions side by side and the verdict."""

    blessed: bool
    reason: str
    baseline_label: str | None = Field(
        description="how the baseline was chosen: 'stable' (the label) or 'newest' (the newest "
        "blessed version); None when there was none"
    )
    rule: GateRule
    examples: ExamplesSummary
    candidate: VersionScores
    baseline: VersionScores | None


def scores(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], version: int | None
) -> VersionScores:
    """Accuracy and per-class recall/precision of predicted class indices ``y_pred`` (into
    ``class_names``; -1 for a class the version does not know) against ``y_true``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    per_class: dict[str, ClassScores] = {}
    for index, name in enumerate(class_names):
        actual = y_true == index
        predicted = y_pred == index
        hits = int(np.sum(actual & predicted))
        per_class[name] = ClassScores(
            recall=hits / int(actual.sum()) if actual.any() else None,
            precision=hits / int(predicted.sum()) if predicted.any() else None,
            support=int(actual.sum()),
        )
    accuracy = float(np.mean(y_true == y_pred)) if y_true.size else 0.0
    return VersionScores(version=version, accuracy=accuracy, per_class=per_class)


def judge(candidate: VersionScores, baseline: VersionScores | None, rule: GateRule) -> str | None:
    """Why ``candidate`` is not blessed against ``baseline`` under ``rule``; None: blessed."""
    if baseline is None:
        return None
    drop = baseline.accuracy - candidate.accuracy
    if drop > rule.max_accuracy_drop + 1e-12:
        return (
            f"accuracy {candidate.accuracy:.4f} is {drop:.4f} below version {baseline.version}'s "
            f"{baseline.accuracy:.4f} (at most {rule.max_accuracy_drop:g} allowed)"
        )
    worst: tuple[float, str] | None = None
    for name, ours in candidate.per_class.items():
        theirs = baseline.per_class.get(name)
        if theirs is None or ours.support < MIN_CLASS_SUPPORT:
            continue
        if ours.recall is None or theirs.recall is None:
            continue
        class_drop = theirs.recall - ours.recall
        if class_drop > rule.max_class_recall_drop + 1e-12 and (
            worst is None or class_drop > worst[0]
        ):
            worst = (class_drop, name)
    if worst is not None:
        drop, name = worst
        ours_recall = candidate.per_class[name].recall
        theirs_recall = baseline.per_class[name].recall
        return (
            f"recall of class {name!r} {ours_recall:.4f} is {drop:.4f} below version "
            f"{baseline.version}'s {theirs_recall:.4f} (at most {rule.max_class_recall_drop:g} "
            "allowed)"
        )
    return None


def verdict_reason(candidate: VersionScores, baseline: VersionScores | None) -> str:
    """The reason a blessed candidate gives."""
    if baseline is None:
        return "no version to compare with: the first blessed version of this model"
    return (
        f"accuracy {candidate.accuracy:.4f} against version {baseline.version}'s "
        f"{baseline.accuracy:.4f}, and no class's recall dropped beyond the rule"
    )
