"""The controller's rule, as a pure function: from what a model serves now, the versions on
disk, the rollout's history and one interval's traffic, what to do next.

Flagger's and Argo Rollouts' analysis, per model: a new blessed version starts as the
``canary`` at ``step_weight``; each ``interval_s`` the checks compare it with ``stable``; all
passing raises the weight by ``step_weight``, a failing check holds it (counted), ``threshold``
failures roll it back, and passing at ``max_weight`` promotes it. An interval with fewer than
``min_requests`` answered by either version is neither a pass nor a failure (``wait``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from service.rollout.checks import CheckResult, VersionStats, run_checks
from service.serving.config import RolloutPolicy


class Action(str, Enum):
    """What the controller decided (the ``decision`` of ``rollout.log`` and the metrics)."""

    PIN = "pin"  # no stable label yet: stable pinned to the version served now
    START = "start"  # a new blessed version became the canary at step_weight
    STEP = "step"  # every check passed: weight raised by step_weight
    HOLD = "hold"  # a check failed: weight kept, failure counted
    WAIT = "wait"  # too little traffic to judge: neither pass nor failure
    PROMOTE = "promote"  # passed at max_weight: stable moved to the canary
    RETIRE = "retire"  # the previous stable's extra interval is over: its label removed
    ROLLBACK = "rollback"  # threshold failures (or an operator): canary removed, never retried
    PAUSE = "pause"  # an operator froze the rollout
    RESUME = "resume"  # an operator let it go on


#: Labels the controller owns in serving.yaml.
STABLE, CANARY, PREVIOUS = "stable", "canary", "previous"
#: Decimals of a written weight (0.1 + 0.2 is 0.3 in the file, not 0.30000000000000004).
WEIGHT_DECIMALS = 6


@dataclass(frozen=True)
class ModelView:
    """One model as the controller sees it at a tick."""

    stable: int | None
    canary: int | None
    weight: float  # the canary's
    previous: int | None
    blessed: frozenset[int]  # versions on disk whose metadata says blessed
    rolled_back: dict[int, str] = field(default_factory=dict)  # version -> reason
    paused: bool = False
    failures: int = 0  # failed checks of the current canary
    held: int = 0  # intervals in a row without a step (hold or wait)


@dataclass(frozen=True)
class Decision:
    """What to do: the labels to write and the record to keep."""

    action: Action
    stable: int | None
    canary: int | None
    weight: float
    previous: int | None
    failures: int
    held: int
    reason: str
    checks: tuple[CheckResult, ...] = ()
    requests: dict[str, float] = field(default_factory=dict)  # "stable"/"canary" -> count


def candidate(view: ModelView) -> int | None:
    """The newest blessed version newer than stable that was never rolled back."""
    floor = view.stable or 0
    eligible = [v for v in view.blessed if v > floor and v not in view.rolled_back]
    return max(eligible) if eligible else None


def decision_from(view: ModelView, action: Action, reason: str, **changes: object) -> Decision:
    """A decision that keeps ``view``'s labels and counts except ``changes``."""
    base = Decision(
        action=action,
        stable=view.stable,
        canary=view.canary,
        weight=view.weight,
        previous=view.previous,
        failures=view.failures,
        held=view.held,
        reason=reason,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def decide(
    view: ModelView,
    policy: RolloutPolicy,
    *,
    elapsed_s: float,
    traffic: dict[str, VersionStats] | None,
) -> Decision | None:
    """The next decision for one model, or None when there is nothing to do yet.

    ``elapsed_s``: seconds since the last decision that changed or judged this model.
    ``traffic``: per version (its number as text), the counts since then; None when the
    source has no baseline yet (a controller that just started: it judges a whole interval).
    """
    if view.paused:
        return None
    interval_over = elapsed_s >= policy.interval_s
    if view.stable is None:
        # The version that takes the default share now: the newest blessed one that is not
        # the canary (what the replicas serve without a stable label).
        served = [v for v in view.blessed if v not in view.rolled_back and v != view.canary]
        if not served:
            return None
        newest = max(served)
        return decision_from(
            view, Action.PIN, f"no stable label: pinned to version {newest}", stable=newest
        )
    if view.canary is None:
        if view.previous is not None:
            # The old stable's one more interval comes first; a newer version waits for it.
            if not interval_over:
                return None
            return decision_from(
                view,
                Action.RETIRE,
                f"version {view.previous} served its extra interval after the promotion",
                previous=None,
            )
        new = candidate(view)
        if new is None:
            return None
        weight = round(min(policy.step_weight, policy.max_weight), WEIGHT_DECIMALS)
        return decision_from(
            view,
            Action.START,
            f"version {new} is blessed and newer than stable {view.stable}",
            canary=new,
            weight=weight,
            failures=0,
            held=0,
        )
    if view.canary in view.rolled_back:
        # An operator (or a hand edit) put back a version rolled back before: not ours to judge.
        return decision_from(
            view,
            Action.ROLLBACK,
            f"version {view.canary} was rolled back before: {view.rolled_back[view.canary]}",
            canary=None,
            weight=0.0,
        )
    if not interval_over or traffic is None:
        return None
    canary = traffic.get(str(view.canary), VersionStats())
    stable = traffic.get(str(view.stable), VersionStats())
    requests = {"stable": stable.requests, "canary": canary.requests}
    fewest = min(canary.requests, stable.requests)
    knows_served = any(stats.served for stats in traffic.values())
    if knows_served and not canary.served and stable.requests >= policy.min_requests:
        # Its weight goes to the default version while no replica serves it (it failed to
        # load, or was deleted): it would wait forever, and block every newer version.
        unserved = CheckResult(
            "canary_served", 0.0, 1.0, False, "no replica serves the canary's version"
        )
        return _failed(view, policy, (unserved,), requests)
    if fewest < policy.min_requests:
        return decision_from(
            view,
            Action.WAIT,
            f"too little traffic to judge: {canary.requests:.0f} canary and "
            f"{stable.requests:.0f} stable requests, min_requests {policy.min_requests}",
            held=view.held + 1,
            requests=requests,
        )
    checks = tuple(run_checks(policy, canary, stable))
    if any(check.passed is False for check in checks):
        return _failed(view, policy, checks, requests)
    if view.weight >= policy.max_weight - 1e-9:
        return decision_from(
            view,
            Action.PROMOTE,
            f"every check passed at max_weight {policy.max_weight:g}",
            stable=view.canary,
            canary=None,
            weight=0.0,
            previous=view.stable,
            held=0,
            checks=checks,
            requests=requests,
        )
    weight = round(min(view.weight + policy.step_weight, policy.max_weight), WEIGHT_DECIMALS)
    return decision_from(
        view,
        Action.STEP,
        f"every check passed at weight {view.weight:g}",
        weight=weight,
        held=0,
        checks=checks,
        requests=requests,
    )


def _failed(
    view: ModelView,
    policy: RolloutPolicy,
    checks: tuple[CheckResult, ...],
    requests: dict[str, float],
) -> Decision:
    """A failed interval: hold, or roll back at the threshold."""
    failures = view.failures + 1
    names = ", ".join(
        f"{check.name} {check.value:.4g} (limit {check.threshold:g})"
        + (f": {check.note}" if check.note else "")
        for check in checks
        if check.passed is False and check.value is not None
    )
    if failures >= policy.threshold:
        return decision_from(
            view,
            Action.ROLLBACK,
            f"{failures} failed checks (threshold {policy.threshold}); last: {names}",
            canary=None,
            weight=0.0,
            failures=failures,
            held=0,
            checks=checks,
            requests=requests,
        )
    return decision_from(
        view,
        Action.HOLD,
        f"failed: {names} ({failures} of threshold {policy.threshold})",
        failures=failures,
        held=view.held + 1,
        checks=checks,
        requests=requests,
    )
