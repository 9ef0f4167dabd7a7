"""The rollout rule as a pure function: start, step, hold, wait, promote, retire, rollback."""

from __future__ import annotations

from service.rollout.checks import VersionStats
from service.rollout.decide import Action, ModelView, decide
from service.serving.config import RolloutPolicy
from tests.helpers.rollout import quick_traffic

POLICY = RolloutPolicy(step_weight=0.1, max_weight=0.3, interval_s=60, threshold=2, min_requests=50)


def traffic(canary_requests: float = 100, canary_errors: float = 0) -> dict[str, VersionStats]:
    return {"1": quick_traffic(400), "2": quick_traffic(canary_requests, canary_errors)}


def view(**changes: object) -> ModelView:
    base: dict[str, object] = {
        "stable": 1,
        "canary": 2,
        "weight": 0.1,
        "previous": None,
        "blessed": frozenset({1, 2}),
    }
    base.update(changes)
    return ModelView(**base)  # type: ignore[arg-type]


def test_a_new_blessed_version_starts_as_the_canary_at_step_weight() -> None:
    decision = decide(view(canary=None, weight=0.0), POLICY, elapsed_s=0, traffic=None)
    assert decision is not None and decision.action is Action.START
    assert (decision.stable, decision.canary, decision.weight) == (1, 2, 0.1)
    # The newest blessed one; never an unblessed one, never one rolled back.
    newest = decide(
        view(canary=None, weight=0.0, blessed=frozenset({1, 2, 3})),
        POLICY,
        elapsed_s=0,
        traffic=None,
    )
    assert newest is not None and newest.canary == 3
    assert (
        decide(view(canary=None, blessed=frozenset({1})), POLICY, elapsed_s=0, traffic=None) is None
    )
    assert (
        decide(view(canary=None, rolled_back={2: "errors"}), POLICY, elapsed_s=999, traffic=None)
        is None
    )


def test_without_a_stable_label_stable_is_pinned_first() -> None:
    decision = decide(view(stable=None, canary=None), POLICY, elapsed_s=0, traffic=None)
    assert decision is not None and decision.action is Action.PIN and decision.stable == 2


def test_passing_intervals_step_then_promote_at_max_weight() -> None:
    assert decide(view(), POLICY, elapsed_s=59, traffic=traffic()) is None  # interval not over
    assert decide(view(), POLICY, elapsed_s=60, traffic=None) is None  # no baseline yet
    step = decide(view(), POLICY, elapsed_s=60, traffic=traffic())
    assert step is not None and step.action is Action.STEP and step.weight == 0.2
    assert step.requests == {"stable": 400, "canary": 100}
    assert all(check.passed for check in step.checks if check.passed is not None)
    top = decide(view(weight=0.3), POLICY, elapsed_s=60, traffic=traffic())
    assert top is not None and top.action is Action.PROMOTE
    assert (top.stable, top.canary, top.previous) == (2, None, 1)


def test_the_previous_stable_is_retired_one_interval_after_promotion() -> None:
    promoted = view(stable=2, canary=None, weight=0.0, previous=1)
    assert decide(promoted, POLICY, elapsed_s=30, traffic=None) is None
    retire = decide(promoted, POLICY, elapsed_s=60, traffic=None)
    assert retire is not None and retire.action is Action.RETIRE and retire.previous is None


def test_too_little_traffic_waits_without_counting_a_failure() -> None:
    decision = decide(view(), POLICY, elapsed_s=60, traffic=traffic(canary_requests=10))
    assert decision is not None and decision.action is Action.WAIT
    assert decision.failures == 0 and decision.held == 1 and decision.weight == 0.1
    assert "min_requests 50" in decision.reason


def test_failures_hold_then_roll_back_at_the_threshold() -> None:
    hold = decide(view(), POLICY, elapsed_s=60, traffic=traffic(canary_errors=20))
    assert hold is not None and hold.action is Action.HOLD
    assert hold.failures == 1 and hold.weight == 0.1 and hold.canary == 2
    assert "error_ratio_delta 0.2" in hold.reason
    back = decide(view(failures=1), POLICY, elapsed_s=60, traffic=traffic(canary_errors=20))
    assert back is not None and back.action is Action.ROLLBACK
    assert back.canary is None and back.weight == 0.0 and back.stable == 1
    assert "2 failed checks (threshold 2)" in back.reason


def test_a_paused_rollout_decides_nothing_and_a_rolled_back_canary_is_removed() -> None:
    assert decide(view(paused=True), POLICY, elapsed_s=600, traffic=traffic()) is None
    again = decide(view(rolled_back={2: "errors"}), POLICY, elapsed_s=0, traffic=None)
    assert again is not None and again.action is Action.ROLLBACK and again.canary is None
