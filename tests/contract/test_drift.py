"""Tests for contract.drift: the Jensen-Shannon distance the drift gauges export, the confidence
histogram's bins, and the baseline training stores in metadata.json."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from contract.drift import (
    CONFIDENCE_BINS,
    CONFIDENCE_EDGES,
    DriftBaseline,
    baseline_from,
    confidence_bin,
    js_distance,
)


def test_equal_histograms_are_at_distance_zero() -> None:
    assert js_distance([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0


def test_disjoint_histograms_are_at_distance_one() -> None:
    assert js_distance([5, 0, 0], [0, 2, 7]) == pytest.approx(1.0)


def test_counts_and_shares_of_the_same_distribution_are_equal() -> None:
    assert js_distance([10, 30, 60], [0.1, 0.3, 0.6]) == pytest.approx(0.0, abs=1e-12)
    assert js_distance([10, 30, 60], [1, 1, 1]) == pytest.approx(
        js_distance([0.1, 0.3, 0.6], [5, 5, 5])
    )


def test_the_distance_is_symmetric_and_between_zero_and_one() -> None:
    rng = random.Random(7)
    for _ in range(200):
        p = [rng.choice([0, 0, rng.random() * 100]) for _ in range(6)]
        q = [rng.choice([0, rng.random()]) for _ in range(6)]
        distance = js_distance(p, q)
        assert 0.0 <= distance <= 1.0
        assert distance == pytest.approx(js_distance(q, p), abs=1e-12)


def test_a_known_value() -> None:
    # One class against ten uniform ones: sqrt((log2(1/0.55) + 0.1 log2(0.1/0.55) + 0.9) / 2).
    expected = math.sqrt((math.log2(1 / 0.55) + 0.1 * math.log2(0.1 / 0.55) + 0.9) / 2)
    assert js_distance([1] + [0] * 9, [1] * 10) == pytest.approx(expected)
    assert expected > 0.8


def test_an_empty_histogram_shows_no_drift() -> None:
    assert js_distance([0, 0, 0], [1, 2, 3]) == 0.0


def test_histograms_of_different_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="3 and 2 bins"):
        js_distance([1, 2, 3], [1, 2])


@pytest.mark.parametrize(
    ("confidence", "bin_index"),
    [
        (0.0, 0),
        (0.19999, 0),
        (0.2, 1),
        (0.94999, 7),
        (0.95, 8),
        (0.98999, 8),
        (0.99, 9),
        (1.0, 9),  # the last bin includes 1.0
        (-0.1, 0),
        (1.5, 9),
        (float("inf"), 9),
    ],
)
def test_confidence_bins(confidence: float, bin_index: int) -> None:
    assert confidence_bin(confidence) == bin_index
    assert CONFIDENCE_BINS == 10 and len(CONFIDENCE_EDGES) == 11


def test_a_baseline_lists_every_class_and_its_shares_sum_to_one() -> None:
    names = ["cat", "dog", "bird", "fish"]
    predicted = [0, 0, 1, 0, 1, 0, 0]  # never bird nor fish
    confidences = [0.999, 0.3, 0.96, 1.0, 0.5, 0.999, 0.999]
    baseline = baseline_from(predicted, confidences, names)
    assert baseline.examples == 7
    assert list(baseline.class_shares) == names
    assert baseline.class_shares["bird"] == 0.0 and baseline.class_shares["fish"] == 0.0
    assert baseline.class_shares["cat"] == pytest.approx(5 / 7, abs=1e-6)
    assert sum(baseline.class_shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert len(baseline.confidence_shares) == CONFIDENCE_BINS
    assert sum(baseline.confidence_shares) == pytest.approx(1.0, abs=1e-5)
    assert baseline.confidence_shares[9] == pytest.approx(4 / 7, abs=1e-6)  # 0.999 x3 and 1.0
    assert baseline.confidence_edges == list(CONFIDENCE_EDGES)


@pytest.mark.parametrize(
    ("predicted", "confidences"), [([], []), ([0, 1], [0.9])], ids=["empty", "unequal"]
)
def test_a_baseline_needs_one_confidence_per_prediction(
    predicted: list[int], confidences: list[float]
) -> None:
    with pytest.raises(ValueError, match="one confidence per prediction"):
        baseline_from(predicted, confidences, ["a", "b"])


def test_a_baseline_survives_metadata_json_and_refuses_unknown_fields() -> None:
    baseline = baseline_from([0, 1, 1], [0.9, 0.99, 0.5], ["a", "b"])
    assert DriftBaseline.model_validate_json(baseline.model_dump_json()) == baseline
    with pytest.raises(ValidationError, match="extra"):
        DriftBaseline.model_validate({**baseline.model_dump(), "shares": [1.0]})
