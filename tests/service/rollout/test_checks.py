"""The canary's checks from per-version counts: the quantile as Prometheus computes it, and
each check's value, threshold and verdict."""

from __future__ import annotations

import math

import pytest

from service.rollout.checks import VersionStats, histogram_quantile, run_checks
from service.serving.config import RolloutChecks, RolloutPolicy


def stats(
    requests: float = 100,
    errors: float = 0,
    fast: float | None = None,
    confidence: float = 0.9,
    correct: float = 0,
    wrong: float = 0,
    slow_s: float = 0.1,
) -> VersionStats:
    """``requests`` answered, all but ``fast`` within ``slow_s`` seconds (the rest <= 10 ms)."""
    fast = requests if fast is None else fast
    return VersionStats(
        requests=requests,
        server_errors=errors,
        duration_buckets={0.01: fast, slow_s: requests, math.inf: requests},
        confidence_sum=confidence * requests,
        confidence_count=requests,
        feedback_correct=correct,
        feedback_wrong=wrong,
    )


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {}) is None


def test_a_canary_like_stable_passes_every_check() -> None:
    results = run_checks(
        RolloutPolicy(min_feedback=10), stats(correct=90, wrong=10), stats(correct=91, wrong=9)
    )
    assert {r.name: r.passed for r in results} == {
        "error_ratio_delta": True,
        "p99_latency_ratio": True,
        "confidence_delta": True,
        "live_accuracy_delta": True,
    }
    by_name = {r.name: r for r in results}
    assert by_name["live_accuracy_delta"].value == pytest.approx(0.90 - 0.91)
    assert by_name["error_ratio_delta"].threshold == 0.01


def test_each_check_fails_on_its_own_symptom() -> None:
    policy = RolloutPolicy(min_feedback=10)
    stable = stats(correct=45, wrong=5)

    def failed(canary: VersionStats) -> set[str]:
        return {r.name for r in run_checks(policy, canary, stable) if r.passed is False}

    assert failed(stats(errors=5, correct=45, wrong=5)) == {"error_ratio_delta"}
    assert failed(stats(fast=50, slow_s=1.0, correct=45, wrong=5)) == {"p99_latency_ratio"}
    assert failed(stats(confidence=0.8, correct=45, wrong=5)) == {"confidence_delta"}
    assert failed(stats(correct=40, wrong=10)) == {"live_accuracy_delta"}


def test_too_little_feedback_is_not_judged_and_a_check_can_be_turned_off() -> None:
    policy = RolloutPolicy(min_feedback=20, checks=RolloutChecks(p99_latency_max_ratio=None))
    results = {r.name: r for r in run_checks(policy, stats(correct=5), stats(correct=50))}
    assert "p99_latency_ratio" not in results
    accuracy = results["live_accuracy_delta"]
    assert accuracy.passed is None and accuracy.value is None
    assert "min_feedback 20" in accuracy.note
