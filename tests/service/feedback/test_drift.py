"""Tests for service.feedback.drift: the sliding windows of each served version's predictions and
their distance to the baseline training stored; which versions are never measured, and why."""

from __future__ import annotations

import pytest

from contract.drift import CLASS_DRIFT, CONFIDENCE_DRIFT, DriftBaseline, baseline_from
from service.feedback.drift import MIN_PREDICTIONS, DriftMonitor, baseline_problem
from tests.helpers.feedback import CLASS_NAMES

KEY = ("digits", "1")
#: What a healthy version predicted on its test split: every class alike, mostly sure.
UNIFORM_CLASSES = [index % 10 for index in range(1000)]
CONFIDENCES = [0.999 if index % 4 else 0.7 for index in range(1000)]
BASELINE = baseline_from(UNIFORM_CLASSES, CONFIDENCES, CLASS_NAMES)


def observe(
    monitor: DriftMonitor,
    classes: list[int],
    confidences: list[float] | float = 0.999,
    key: tuple[str, str] = KEY,
    baseline: DriftBaseline | None = BASELINE,
) -> None:
    """One request per prediction, as the service feeds the monitor."""
    if isinstance(confidences, float):
        confidences = [confidences] * len(classes)
    for class_index, confidence in zip(classes, confidences, strict=True):
        monitor.observe(key, baseline, CLASS_NAMES, [class_index], [confidence])


def test_predictions_like_the_baseline_are_at_distance_zero() -> None:
    monitor = DriftMonitor(window=1000)
    observe(monitor, UNIFORM_CLASSES, CONFIDENCES)
    distances = monitor.distances()
    assert set(distances) == {(*KEY, CLASS_DRIFT), (*KEY, CONFIDENCE_DRIFT)}
    assert distances[(*KEY, CLASS_DRIFT)] == pytest.approx(0.0, abs=1e-3)
    assert distances[(*KEY, CONFIDENCE_DRIFT)] == pytest.approx(0.0, abs=1e-3)


def test_one_class_only_is_far_from_ten_uniform_classes() -> None:
    monitor = DriftMonitor(window=200)
    observe(monitor, [3] * 200, CONFIDENCES[:200])
    distances = monitor.distances()
    assert distances[(*KEY, CLASS_DRIFT)] > 0.5
    assert distances[(*KEY, CLASS_DRIFT)] <= 1.0
    assert distances[(*KEY, CONFIDENCE_DRIFT)] == pytest.approx(0.0, abs=1e-3)


def test_unsure_predictions_show_as_confidence_drift() -> None:
    monitor = DriftMonitor(window=200)
    observe(monitor, UNIFORM_CLASSES[:200], 0.3)
    distances = monitor.distances()
    assert distances[(*KEY, CONFIDENCE_DRIFT)] > 0.5
    assert distances[(*KEY, CLASS_DRIFT)] == pytest.approx(0.0, abs=1e-3)


def test_the_window_forgets_predictions_older_than_its_size() -> None:
    """After ``window`` predictions of class 3 and then ``window`` of class 5, only the 5s
    count: the window is at distance 0 from a baseline of class 5 only."""
    only_fives = baseline_from([5] * 10, [0.999] * 10, CLASS_NAMES)
    monitor = DriftMonitor(window=50)
    observe(monitor, [3] * 50, baseline=only_fives)
    observe(monitor, [5] * 49, baseline=only_fives)
    assert monitor.distances()[(*KEY, CLASS_DRIFT)] > 0.05  # one 3 is still in the window
    observe(monitor, [5], baseline=only_fives)
    assert monitor.distances()[(*KEY, CLASS_DRIFT)] == pytest.approx(0.0, abs=1e-9)
    observe(monitor, [3] * 50, baseline=only_fives)
    assert monitor.distances()[(*KEY, CLASS_DRIFT)] == pytest.approx(1.0)


def test_no_distance_until_the_window_holds_enough_predictions() -> None:
    monitor = DriftMonitor(window=1000)
    assert monitor.min_predictions == MIN_PREDICTIONS
    observe(monitor, UNIFORM_CLASSES[: MIN_PREDICTIONS - 1])
    assert monitor.distances() == {}
    observe(monitor, [0])
    assert len(monitor.distances()) == 2


def test_a_small_window_is_measured_once_full() -> None:
    monitor = DriftMonitor(window=10)
    assert monitor.min_predictions == 10
    observe(monitor, list(range(9)))
    assert monitor.distances() == {}
    observe(monitor, [9])
    assert monitor.distances()[(*KEY, CLASS_DRIFT)] == pytest.approx(0.0, abs=1e-3)


def test_a_request_of_several_images_counts_each_prediction() -> None:
    monitor = DriftMonitor(window=1000)
    monitor.observe(KEY, BASELINE, CLASS_NAMES, [1] * 60, [0.999] * 60)
    assert monitor.distances() == {}
    monitor.observe(KEY, BASELINE, CLASS_NAMES, [2] * 40, [0.999] * 40)
    assert (*KEY, CLASS_DRIFT) in monitor.distances()


def test_the_window_must_hold_a_prediction() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DriftMonitor(window=0)


# --- versions that cannot be measured ------------------------------------------------------------

OTHER_CLASSES = baseline_from(list(range(3)), [0.9] * 3, ["cat", "dog", "bird"])
OTHER_BINS = DriftBaseline(
    examples=2,
    class_shares=dict.fromkeys(CLASS_NAMES, 0.1),
    confidence_edges=[0.0, 0.5, 1.0],
    confidence_shares=[0.5, 0.5],
)


@pytest.mark.parametrize(
    ("baseline", "why"),
    [
        (None, "no drift baseline in metadata.json"),
        (OTHER_CLASSES, "other classes than the model"),
        (OTHER_BINS, "other bins than this service"),
    ],
    ids=["none", "other classes", "other bins"],
)
def test_a_version_without_a_usable_baseline_is_never_measured(
    baseline: DriftBaseline | None, why: str
) -> None:
    problem = baseline_problem(baseline, CLASS_NAMES)
    assert problem is not None and why in problem
    monitor = DriftMonitor(window=100)
    observe(monitor, [1] * 300, baseline=baseline)
    observe(monitor, [1] * 100, key=("digits", "2"))
    assert set(monitor.distances()) == {
        ("digits", "2", CLASS_DRIFT),
        ("digits", "2", CONFIDENCE_DRIFT),
    }


def test_a_missing_baseline_says_how_to_get_one() -> None:
    assert "republish the version with train.py" in str(baseline_problem(None, CLASS_NAMES))


def test_a_good_baseline_has_no_problem_whatever_the_class_order() -> None:
    assert baseline_problem(BASELINE, CLASS_NAMES) is None
    assert baseline_problem(BASELINE, list(reversed(CLASS_NAMES))) is None


def test_retain_forgets_the_windows_of_retired_versions() -> None:
    monitor = DriftMonitor(window=100)
    observe(monitor, [1] * 100, key=("digits", "1"))
    observe(monitor, [1] * 100, key=("digits", "2"))
    monitor.retain([("digits", "2")])
    assert {key[:2] for key in monitor.distances()} == {("digits", "2")}
    observe(monitor, [1] * 99, key=("digits", "1"))  # served again: it starts from empty
    assert {key[:2] for key in monitor.distances()} == {("digits", "2")}
