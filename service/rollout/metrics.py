"""The controller's own metrics (served on its ``--metrics-port``; Prometheus scrapes it as
the ``imgcls-rollout`` job)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.rollout.decide import Action, Decision


class RolloutMetrics:
    """Every metric of the controller, set from each decision."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.weight = Gauge(
            "imgcls_rollout_weight",
            "Share (0..1) of a model's unpinned requests each version takes, as the rollout "
            "controller last wrote it: the canary's weight, and stable's remainder.",
            ["model", "version"],
            registry=r,
        )
        self.decisions = Counter(
            "imgcls_rollout_decisions",
            "Rollout decisions (one per decision), by model and decision: pin, start, step, "
            "hold, wait, promote, retire, rollback, pause, resume.",
            ["model", "decision"],
            registry=r,
        )
        self.check_value = Gauge(
            "imgcls_rollout_check_value",
            "Each canary check's value over the last judged interval (canary minus or over "
            "stable), by model and check.",
            ["model", "check"],
            registry=r,
        )
        self.check_threshold = Gauge(
            "imgcls_rollout_check_threshold",
            "Each canary check's threshold from serving.yaml, by model and check.",
            ["model", "check"],
            registry=r,
        )
        self.failed_checks = Gauge(
            "imgcls_rollout_failed_checks",
            "Failed checks of the current canary so far (rollback at the rollout's threshold).",
            ["model"],
            registry=r,
        )
        self.held_intervals = Gauge(
            "imgcls_rollout_held_intervals",
            "Intervals in a row in which the canary's weight did not move (a failed check, or "
            "too little traffic to judge); 0 after a step or without a canary.",
            ["model"],
            registry=r,
        )
        self.paused = Gauge(
            "imgcls_rollout_paused",
            "1 while an operator paused the model's rollout, else 0.",
            ["model"],
            registry=r,
        )
        self.last_decision = Gauge(
            "imgcls_rollout_last_decision_timestamp_seconds",
            "Unix time of the model's last rollout decision.",
            ["model"],
            registry=r,
        )
        self._versions: dict[str, set[str]] = {}
        self._known: set[str] = set()

    def know(self, model: str) -> None:
        """Export every decision of ``model`` at 0, so that ``increase()`` sees the first one."""
        if model not in self._known:
            self._known.add(model)
            self.paused.labels(model=model)
            for action in Action:
                self.decisions.labels(model=model, decision=action.value)

    def record(self, model: str, decision: Decision, at: float) -> None:
        self.decisions.labels(model=model, decision=decision.action.value).inc()
        self.last_decision.labels(model=model).set(at)
        if decision.action in (Action.PAUSE, Action.RESUME):
            self.paused.labels(model=model).set(1 if decision.action is Action.PAUSE else 0)
        for check in decision.checks:
            self.check_threshold.labels(model=model, check=check.name).set(check.threshold)
            if check.value is not None:
                self.check_value.labels(model=model, check=check.name).set(check.value)
        self.show(model, decision.stable, decision.canary, decision.weight)
        self.failed_checks.labels(model=model).set(decision.failures if decision.canary else 0)
        self.held_intervals.labels(model=model).set(decision.held if decision.canary else 0)

    def record_entry(self, entry: dict[str, Any]) -> None:
        """Count a ``rollout.log`` line another process wrote (an operator's command)."""
        model, decision = str(entry.get("model")), str(entry.get("decision"))
        if decision not in {action.value for action in Action}:
            return
        self.decisions.labels(model=model, decision=decision).inc()
        self.last_decision.labels(model=model).set(float(entry.get("time", 0)))
        self.paused.labels(model=model).set(1 if entry.get("paused") else 0)
        canary = entry.get("canary")
        self.failed_checks.labels(model=model).set(int(entry.get("failures", 0)) if canary else 0)
        self.held_intervals.labels(model=model).set(int(entry.get("held", 0)) if canary else 0)

    def forget(self, model: str) -> None:
        """Drop the series of a model whose rollout was removed from serving.yaml."""
        for version in self._versions.pop(model, set()):
            self.weight.remove(model, version)
        for gauge in (self.failed_checks, self.held_intervals, self.paused):
            with contextlib.suppress(KeyError):
                gauge.remove(model)
        self._known.discard(model)

    def show(self, model: str, stable: int | None, canary: int | None, weight: float) -> None:
        """Export the weights in force (the versions no longer named lose their series)."""
        weights: dict[str, float] = {}
        if stable is not None:
            weights[str(stable)] = 1.0 - (weight if canary is not None else 0.0)
        if canary is not None:
            weights[str(canary)] = weight
        for gone in self._versions.get(model, set()) - weights.keys():
            self.weight.remove(model, gone)
        for version, value in weights.items():
            self.weight.labels(model=model, version=version).set(round(value, 6))
        self._versions[model] = set(weights)
