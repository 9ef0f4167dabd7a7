"""Prediction drift per served version: sliding windows of recent predictions compared with the
baseline training stored (``metadata.json``'s ``drift_baseline``, :mod:`contract.drift`).

Per prediction the work is a few integer updates (a ring buffer and two histograms of counts);
the Jensen-Shannon distances are computed when :meth:`DriftMonitor.distances` is called (the
service does so on a timer), never on the request path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from contract.drift import (
    CLASS_DRIFT,
    CONFIDENCE_BINS,
    CONFIDENCE_DRIFT,
    CONFIDENCE_EDGES,
    DriftBaseline,
    confidence_bin,
    js_distance,
)

#: A window with fewer predictions says nothing yet: no gauge until it holds this many (or the
#: whole window, when the window is smaller).
MIN_PREDICTIONS = 100


@dataclass
class _Window:
    """The last ``size`` predictions of one version, as counts per class and confidence bin."""

    size: int
    class_baseline: list[float]
    confidence_baseline: list[float]
    classes: list[int] = field(default_factory=list)  # ring buffer of predicted class indices
    bins: list[int] = field(default_factory=list)  # ring buffer of confidence bins
    class_counts: list[int] = field(default_factory=list)
    bin_counts: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    seen: int = 0  # predictions ever observed (the ring's write position is seen % size)

    def add(self, class_index: int, bin_index: int) -> None:
        if self.seen < self.size:
            self.classes.append(class_index)
            self.bins.append(bin_index)
        else:
            slot = self.seen % self.size
            self.class_counts[self.classes[slot]] -= 1
            self.bin_counts[self.bins[slot]] -= 1
            self.classes[slot] = class_index
            self.bins[slot] = bin_index
        self.class_counts[class_index] += 1
        self.bin_counts[bin_index] += 1
        self.seen += 1

    @property
    def filled(self) -> int:
        return min(self.seen, self.size)


def baseline_problem(baseline: DriftBaseline | None, class_names: Sequence[str]) -> str | None:
    """Why a version's drift cannot be measured, or None when it can."""
    if baseline is None:
        return (
            "no drift baseline in metadata.json (published before drift monitoring; "
            "republish the version with train.py to get one)"
        )
    if sorted(baseline.class_shares) != sorted(class_names):
        return "the drift baseline names other classes than the model"
    if [round(edge, 6) for edge in baseline.confidence_edges] != list(CONFIDENCE_EDGES) or len(
        baseline.confidence_shares
    ) != CONFIDENCE_BINS:
        return "the drift baseline's confidence histogram has other bins than this service"
    return None


class DriftMonitor:
    """Sliding windows of predictions per (model, version), and their distance to baseline."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one prediction")
        self.window = window
        self.min_predictions = min(MIN_PREDICTIONS, window)
        self._windows: dict[tuple[str, str], _Window | None] = {}

    def observe(
        self,
        key: tuple[str, str],
        baseline: DriftBaseline | None,
        class_names: Sequence[str],
        class_indices: Iterable[int],
        confidences: Iterable[float],
    ) -> None:
        """Add one request's predictions (top-1 class index and probability) to the window of
        ``key`` = (model, version). A version without a usable baseline is remembered as such."""
        if key in self._windows:
            window = self._windows[key]
        else:
            window = self._windows[key] = self._new_window(baseline, class_names)
        if window is None:
            return
        for class_index, confidence in zip(class_indices, confidences, strict=True):
            window.add(class_index, confidence_bin(confidence))

    def _new_window(
        self, baseline: DriftBaseline | None, class_names: Sequence[str]
    ) -> _Window | None:
        if baseline is None or baseline_problem(baseline, class_names) is not None:
            return None
        return _Window(
            size=self.window,
            class_baseline=[baseline.class_shares[name] for name in class_names],
            confidence_baseline=list(baseline.confidence_shares),
            class_counts=[0] * len(class_names),
        )

    def distances(self) -> dict[tuple[str, str, str], float]:
        """(model, version, kind) -> Jensen-Shannon distance (0..1) of every window holding at
        least :attr:`min_predictions` predictions."""
        result: dict[tuple[str, str, str], float] = {}
        for (model, version), window in self._windows.items():
            if window is None or window.filled < self.min_predictions:
                continue
            result[(model, version, CLASS_DRIFT)] = js_distance(
                window.class_counts, window.class_baseline
            )
            result[(model, version, CONFIDENCE_DRIFT)] = js_distance(
                window.bin_counts, window.confidence_baseline
            )
        return result

    def retain(self, served: Iterable[tuple[str, str]]) -> None:
        """Forget the windows of versions no longer served."""
        keep = set(served)
        for key in [key for key in self._windows if key not in keep]:
            del self._windows[key]
