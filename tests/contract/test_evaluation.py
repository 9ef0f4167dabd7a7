"""Tests for contract.evaluation: the scores both versions get on the gate's examples, and the
rule that blesses a candidate or says why not."""

from __future__ import annotations

import numpy as np
import pytest

from contract.evaluation import GateRule, VersionScores, judge, scores, verdict_reason

NAMES = ["cat", "dog", "fox"]


def test_scores_give_accuracy_and_per_class_recall_precision_and_support() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, -1])  # -1: a class this version does not know
    result = scores(y_true, y_pred, NAMES, version=3)
    assert result.version == 3
    assert result.accuracy == pytest.approx(6 / 8)
    assert result.per_class["cat"].recall == pytest.approx(3 / 4)
    assert result.per_class["cat"].precision == pytest.approx(1.0)
    assert result.per_class["dog"].precision == pytest.approx(2 / 3)
    assert result.per_class["fox"].recall == pytest.approx(1 / 2)
    assert [result.per_class[n].support for n in NAMES] == [4, 2, 2]


def test_a_class_without_examples_or_predictions_has_no_recall_or_precision() -> None:
    result = scores(np.array([0, 0]), np.array([0, 0]), NAMES, version=None)
    assert result.per_class["dog"].recall is None
    assert result.per_class["dog"].precision is None
    assert result.per_class["dog"].support == 0


def scored(accuracy_hits: int, cat_hits: int, total_cats: int = 20) -> VersionScores:
    """Scores on 40 examples (20 cats, 20 dogs): ``cat_hits`` cats right, the rest of the
    ``accuracy_hits`` right answers dogs."""
    y_true = np.array([0] * total_cats + [1] * (40 - total_cats))
    y_pred = y_true.copy()
    y_pred[cat_hits:total_cats] = 1
    dog_misses = (40 - total_cats) - (accuracy_hits - cat_hits)
    y_pred[total_cats : total_cats + dog_misses] = 0
    return scores(y_true, y_pred, NAMES[:2], version=None)


def test_the_first_version_is_blessed_with_nothing_to_compare() -> None:
    candidate = scored(30, 15)
    assert judge(candidate, None, GateRule()) is None
    assert "first blessed version" in verdict_reason(candidate, None)


def test_a_candidate_as_good_as_stable_is_blessed() -> None:
    stable = scored(38, 19).model_copy(update={"version": 1})
    candidate = scored(38, 19)
    assert judge(candidate, stable, GateRule()) is None
    assert "version 1" in verdict_reason(candidate, stable)


def test_lower_accuracy_than_the_rule_allows_is_not_blessed_and_says_by_how_much() -> None:
    stable = scored(38, 19).model_copy(update={"version": 1})
    candidate = scored(36, 18)  # 0.90 against 0.95
    reason = judge(candidate, stable, GateRule())
    assert reason is not None
    assert "accuracy 0.9000 is 0.0500 below version 1's 0.9500" in reason
    assert judge(candidate, stable, GateRule(max_accuracy_drop=0.05)) is None


def test_one_class_losing_recall_is_not_blessed_even_when_accuracy_holds() -> None:
    stable = scored(36, 18).model_copy(update={"version": 2})
    candidate = scored(34, 14)  # cats 0.70 instead of 0.90; accuracy within the rule
    rule = GateRule(max_accuracy_drop=0.1)
    reason = judge(candidate, stable, rule)
    assert reason is not None and "recall of class 'cat' 0.7000 is 0.2000 below" in reason
    assert judge(candidate, stable, rule.model_copy(update={"max_class_recall_drop": 0.2})) is None


def test_a_rule_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError):
        GateRule(max_accuracy_drop=-0.1)
    with pytest.raises(ValueError):
        GateRule(max_class_recall_drop=2)
