"""The canary's checks: what one interval's traffic says about canary against stable.

Pure functions over per-version counts (already the increase over the interval); the sources
(``service.rollout.sources``) produce them from Prometheus or the replicas' ``/metrics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from service.serving.config import RolloutPolicy


@dataclass
class VersionStats:
    """One version's traffic over an interval (increases of the service's counters)."""

    requests: float = 0.0  # answered inference requests, any status
    server_errors: float = 0.0  # of which 5xx
    #: ``le`` upper bound (seconds, ``math.inf`` last) -> cumulative count of request durations.
    duration_buckets: dict[float, float] = field(default_factory=dict)
    confidence_sum: float = 0.0  # sum of top-1 probabilities, one per image
    confidence_count: float = 0.0  # images
    feedback_correct: float = 0.0
    feedback_wrong: float = 0.0
    #: Whether a replica serves the version (``imgcls_model_info``); None: the source does not
    #: say.
    served: bool | None = None

    def add(self, other: VersionStats) -> None:
        """Add ``other``'s counts to these (several replicas, or several series)."""
        self.requests += other.requests
        self.server_errors += other.server_errors
        for bound, count in other.duration_buckets.items():
            self.duration_buckets[bound] = self.duration_buckets.get(bound, 0.0) + count
        self.confidence_sum += other.confidence_sum
        self.confidence_count += other.confidence_count
        self.feedback_correct += other.feedback_correct
        self.feedback_wrong += other.feedback_wrong
        if other.served is not None:
            self.served = bool(self.served) or other.served

    @property
    def error_ratio(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.confidence_count if self.confidence_count else None

    @property
    def feedback(self) -> float:
        return self.feedback_correct + self.feedback_wrong

    @property
    def live_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback if self.feedback else None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of request duration in seconds, interpolated inside its bucket
        as Prometheus's ``histogram_quantile`` does; None without observations."""
        return histogram_quantile(q, self.duration_buckets)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative ``buckets`` (``le`` -> count)."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the open bucket: its lower edge, as Prometheus does
            inside = count - lower_count
            if inside <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / inside
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class CheckResult:
    """One check of one interval: its value, its threshold, and whether it passed (None: not
    judged, with ``note`` saying why)."""

    name: str
    value: float | None
    threshold: float
    passed: bool | None
    note: str = ""

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "passed": self.passed,
        }
        if self.note:
            result["note"] = self.note
        return result


#: Latency below this many seconds counts as this many: a ratio of two near-zero p99s says
#: nothing (the smallest duration bucket is 1 ms).
LATENCY_FLOOR_S = 0.001


def run_checks(
    policy: RolloutPolicy, canary: VersionStats, stable: VersionStats
) -> list[CheckResult]:
    """Every configured check of ``policy`` for one interval, canary against stable."""
    checks = policy.checks
    results: list[CheckResult] = []
    if checks.error_ratio_max_delta is not None:
        delta = canary.error_ratio - stable.error_ratio
        limit = checks.error_ratio_max_delta
        results.append(CheckResult("error_ratio_delta", delta, limit, delta <= limit))
    if checks.p99_latency_max_ratio is not None:
        limit = checks.p99_latency_max_ratio
        canary_p99, stable_p99 = canary.quantile(0.99), stable.quantile(0.99)
        if canary_p99 is None or stable_p99 is None:
            results.append(
                CheckResult("p99_latency_ratio", None, limit, None, "no durations recorded")
            )
        else:
            ratio = max(canary_p99, LATENCY_FLOOR_S) / max(stable_p99, LATENCY_FLOOR_S)
            results.append(CheckResult("p99_latency_ratio", ratio, limit, ratio <= limit))
    if checks.confidence_min_delta is not None:
        limit = checks.confidence_min_delta
        canary_mean, stable_mean = canary.mean_confidence, stable.mean_confidence
        if canary_mean is None or stable_mean is None:
            results.append(
                CheckResult("confidence_delta", None, limit, None, "no images classified")
            )
        else:
            delta = canary_mean - stable_mean
            results.append(CheckResult("confidence_delta", delta, limit, delta >= limit))
    if checks.live_accuracy_min_delta is not None:
        limit = checks.live_accuracy_min_delta
        fewest = min(canary.feedback, stable.feedback)
        canary_accuracy, stable_accuracy = canary.live_accuracy, stable.live_accuracy
        if fewest < policy.min_feedback or canary_accuracy is None or stable_accuracy is None:
            note = f"{fewest:.0f} feedback examples, fewer than min_feedback {policy.min_feedback}"
            results.append(CheckResult("live_accuracy_delta", None, limit, None, note))
        else:
            delta = canary_accuracy - stable_accuracy
            results.append(CheckResult("live_accuracy_delta", delta, limit, delta >= limit))
    return results
