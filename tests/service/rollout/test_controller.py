"""The controller against real files (serving.yaml, rollout.log, published versions) with a
stand-in metrics source and clock: the whole rollout, a restart in the middle, a hand edit,
and an operator's commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.rollout import journal
from service.rollout.checks import VersionStats
from service.rollout.controller import Controller
from service.rollout.metrics import RolloutMetrics
from service.rollout.overrides import OverrideError, override
from service.serving.config import parse_config
from tests.helpers.models import publish_fake
from tests.helpers.rollout import quick_traffic

CONFIG = """\
# kept by every edit
models:
  digits:
    labels: {stable: 1}
    rollout: {step_weight: 0.25, max_weight: 0.5, interval_s: 60, threshold: 2, min_requests: 10}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Per-version traffic the test sets; ``begin`` calls are counted."""

    def __init__(self) -> None:
        self.canary_errors = 0.0
        self.canary_requests = 100.0
        self.begins = 0
        self.has_baseline = True

    def begin(self, model: str) -> None:
        self.begins += 1

    def traffic(self, model: str, seconds: float) -> dict[str, VersionStats] | None:
        if not self.has_baseline:
            self.has_baseline = True
            return None

        stats = {str(v): quick_traffic(300) for v in range(1, 10)}
        for version in ("2", "3"):
            stats[version] = quick_traffic(self.canary_requests, self.canary_errors)
        return stats


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    publish_fake(models, blessed=True)  # version 1
    (models / "serving.yaml").write_text(CONFIG)
    return models


def labels(models: Path) -> dict[str, tuple[int, float]]:
    config = parse_config((models / "serving.yaml").read_text())
    return {
        name: (target.version, target.weight)
        for name, target in config.models["digits"].labels.items()
    }


def decisions(models: Path) -> list[str]:
    return [entry["decision"] for entry in journal.entries(models / "rollout.log")]


def run(controller: Controller, clock: Clock, seconds: float, step_s: float = 5.0) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step_s
        controller.tick()


def test_a_blessed_version_is_stepped_up_and_promoted(repo: Path) -> None:
    clock, source = Clock(), Source()
    metrics = RolloutMetrics(CollectorRegistry())
    controller = Controller(repo, source, metrics, clock=clock)
    run(controller, clock, 120)
    assert decisions(repo) == []  # nothing newer than stable
    assert publish_fake(repo, blessed=False) == 2  # never a candidate
    run(controller, clock, 120)
    assert decisions(repo) == []

    assert publish_fake(repo, blessed=True) == 3
    controller.tick()
    assert labels(repo) == {"stable": (1, 0.0), "canary": (3, 0.25)}
    run(controller, clock, 60)
    assert labels(repo)["canary"] == (3, 0.5)
    run(controller, clock, 60)
    assert labels(repo) == {"stable": (3, 0.0), "previous": (1, 0.0)}
    run(controller, clock, 60)
    assert labels(repo) == {"stable": (3, 0.0)}
    assert decisions(repo) == ["start", "step", "promote", "retire"]
    assert "# kept by every edit" in (repo / "serving.yaml").read_text()

    promote = journal.entries(repo / "rollout.log")[2]
    assert promote["by"] == "controller" and promote["requests"] == {"stable": 300, "canary": 100}
    assert {check["name"] for check in promote["checks"]} >= {"error_ratio_delta"}
    assert all(check["passed"] in (True, None) for check in promote["checks"])
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "imgcls_rollout_decisions_total", {"model": "digits", "decision": "step"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("imgcls_rollout_weight", {"model": "digits", "version": "3"})
        == 1.0
    )
    assert (
        registry.get_sample_value("imgcls_rollout_weight", {"model": "digits", "version": "1"})
        is None
    )


def test_failing_checks_roll_back_and_the_version_is_never_tried_again(repo: Path) -> None:
    clock, source = Clock(), Source()
    source.canary_errors = 30
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)  # 2
    run(controller, clock, 125)
    assert decisions(repo) == ["start", "hold", "rollback"]
    assert labels(repo) == {"stable": (1, 0.0)}
    last = journal.entries(repo / "rollout.log")[-1]
    assert last["rolled_back"].keys() == {"2"} and "threshold 2" in last["rolled_back"]["2"]
    error_check = next(c for c in last["checks"] if c["name"] == "error_ratio_delta")
    assert error_check["value"] == pytest.approx(0.3) and error_check["passed"] is False
    run(controller, clock, 300)
    assert decisions(repo)[-1] == "rollback"  # not started again
    # A newer blessed version is a new candidate.
    publish_fake(repo, blessed=True)  # 3
    source.canary_errors = 0
    controller.tick()
    assert labels(repo)["canary"] == (3, 0.25)


def test_too_little_traffic_waits_and_a_restart_resumes_without_jumping(repo: Path) -> None:
    clock, source = Clock(), Source()
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)
    controller.tick()  # start at 0.25
    source.canary_requests = 3
    run(controller, clock, 60)
    assert decisions(repo) == ["start", "wait"]
    assert labels(repo)["canary"] == (2, 0.25)

    # The controller dies 30 s into the next interval; a new one takes over.
    run(controller, clock, 30)
    source.canary_requests = 100
    source.has_baseline = False  # a scraping source knows nothing after a restart
    restarted = Controller(repo, source, clock=clock)
    restarted.tick()
    clock.now += 40
    restarted.tick()  # 70 s after the wait, but the new baseline is 40 s old: not judged yet
    assert decisions(repo) == ["start", "wait"]
    run(restarted, clock, 60)
    assert decisions(repo) == ["start", "wait", "step"]
    assert labels(repo)["canary"] == (2, 0.5)
    text = (repo / "serving.yaml").read_text()
    assert text.count("canary") == 1


def test_a_hand_edit_wins_and_starts_the_interval_again(repo: Path) -> None:
    clock, source = Clock(), Source()
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)
    controller.tick()
    run(controller, clock, 50)
    text = (repo / "serving.yaml").read_text().replace("weight: 0.25", "weight: 0.4")
    (repo / "serving.yaml").write_text(text)
    run(controller, clock, 50)  # 100 s after start, but only 50 s after the edit
    assert decisions(repo) == ["start"]
    run(controller, clock, 15)
    assert decisions(repo) == ["start", "step"]
    assert labels(repo)["canary"] == (2, 0.5)  # 0.4 + 0.25, capped at max_weight


def test_operator_commands_pause_resume_promote_and_roll_back(repo: Path) -> None:
    clock, source = Clock(), Source()
    metrics = RolloutMetrics(CollectorRegistry())
    controller = Controller(repo, source, metrics, clock=clock)

    def metric(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"model": "digits", **labels})

    with pytest.raises(OverrideError, match="no canary label"):
        override(repo, "digits", "promote")
    with pytest.raises(OverrideError, match="'photos' is not in"):
        override(repo, "photos", "pause")
    publish_fake(repo, blessed=True)
    controller.tick()
    override(repo, "digits", "pause", clock=clock)
    run(controller, clock, 300)
    assert decisions(repo) == ["start", "pause"]
    assert metric("imgcls_rollout_paused") == 1  # the running controller saw the command
    override(repo, "digits", "resume", clock=clock)
    run(controller, clock, 60)
    assert decisions(repo) == ["start", "pause", "resume", "step"]

    override(repo, "digits", "rollback", clock=clock)
    assert labels(repo) == {"stable": (1, 0.0)}
    last = journal.entries(repo / "rollout.log")[-1]
    assert last["by"] == "operator" and last["rolled_back"] == {
        "2": "version 2 rolled back by an operator"
    }
    run(controller, clock, 120)
    assert decisions(repo)[-1] == "rollback"
    assert metric("imgcls_rollout_paused") == 0
    assert metric("imgcls_rollout_decisions_total", decision="rollback") == 1
    assert metric("imgcls_rollout_weight", version="2") is None

    publish_fake(repo, blessed=True)  # 3
    controller.tick()
    override(repo, "digits", "promote", clock=clock)
    assert labels(repo) == {"stable": (3, 0.0), "previous": (1, 0.0)}
    run(controller, clock, 65)
    assert decisions(repo)[-2:] == ["promote", "retire"]
    assert labels(repo) == {"stable": (3, 0.0)}


def test_an_operator_rollback_during_a_decision_wins_and_is_never_undone(repo: Path) -> None:
    clock, source = Clock(), Source()
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)  # 2
    controller.tick()
    source.canary_errors = 30  # the controller is about to hold...
    original = source.traffic

    def rollback_meanwhile(model: str, seconds: float) -> dict[str, VersionStats] | None:
        source.traffic = original  # type: ignore[method-assign]
        override(repo, "digits", "rollback", clock=clock)  # ...when the operator rolls back
        return original(model, seconds)

    source.traffic = rollback_meanwhile  # type: ignore[method-assign]
    run(controller, clock, 60)
    run(controller, clock, 300)
    assert decisions(repo) == ["start", "rollback"]
    assert labels(repo) == {"stable": (1, 0.0)}


def test_a_canary_removed_by_hand_is_recorded_as_rolled_back_not_restarted(repo: Path) -> None:
    clock, source = Clock(), Source()
    metrics = RolloutMetrics(CollectorRegistry())
    controller = Controller(repo, source, metrics, clock=clock)
    publish_fake(repo, blessed=True)  # 2
    controller.tick()
    (repo / "serving.yaml").write_text(CONFIG)  # the canary line is gone
    run(controller, clock, 300)
    assert decisions(repo) == ["start", "rollback"]
    last = journal.entries(repo / "rollout.log")[-1]
    assert last["by"] == "operator" and "removed from serving.yaml by hand" in last["reason"]
    assert last["rolled_back"].keys() == {"2"}
    assert labels(repo) == {"stable": (1, 0.0)}
    assert (
        metrics.registry.get_sample_value(
            "imgcls_rollout_decisions_total", {"model": "digits", "decision": "rollback"}
        )
        == 1
    )

    # Made stable by hand: recorded as a promotion.
    publish_fake(repo, blessed=True)  # 3
    controller.tick()
    (repo / "serving.yaml").write_text(CONFIG.replace("stable: 1", "stable: 3"))
    run(controller, clock, 10)
    assert decisions(repo)[-2:] == ["start", "promote"]


def test_resume_starts_a_whole_interval_and_a_new_version_waits_for_the_retirement(
    repo: Path,
) -> None:
    clock, source = Clock(), Source()
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)  # 2
    controller.tick()
    override(repo, "digits", "pause", clock=clock)
    run(controller, clock, 120)
    override(repo, "digits", "resume", clock=clock)
    run(controller, clock, 55)
    assert decisions(repo) == ["start", "pause", "resume"]  # not judged on the paused time
    run(controller, clock, 10)
    assert decisions(repo)[-1] == "step"

    run(controller, clock, 60)  # at max_weight: promoted
    assert labels(repo) == {"stable": (2, 0.0), "previous": (1, 0.0)}
    publish_fake(repo, blessed=True)  # 3, right after the promotion
    run(controller, clock, 30)
    assert "canary" not in labels(repo)  # version 1 serves its extra interval first
    run(controller, clock, 35)
    assert decisions(repo)[-2:] == ["retire", "start"]
    assert labels(repo) == {"stable": (2, 0.0), "canary": (3, 0.25)}


def test_a_canary_no_replica_serves_is_rolled_back_instead_of_waiting_forever(
    repo: Path,
) -> None:
    clock, source = Clock(), Source()
    original = source.traffic

    def canary_not_loaded(model: str, seconds: float) -> dict[str, VersionStats] | None:
        traffic = original(model, seconds)
        assert traffic is not None
        traffic["1"].served = True
        del traffic["2"]  # its share goes to stable: no requests, no imgcls_model_info
        return traffic

    source.traffic = canary_not_loaded  # type: ignore[method-assign]
    controller = Controller(repo, source, clock=clock)
    publish_fake(repo, blessed=True)
    run(controller, clock, 125)
    assert decisions(repo) == ["start", "hold", "rollback"]
    last = journal.entries(repo / "rollout.log")[-1]
    assert [c["name"] for c in last["checks"]] == ["canary_served"]


def test_with_a_history_source_a_restart_judges_the_interval_since_the_last_line(
    repo: Path,
) -> None:
    clock, source = Clock(), Source()
    publish_fake(repo, blessed=True)
    Controller(repo, source, clock=clock).tick()  # start, then the controller dies
    clock.now += 70
    restarted = Controller(repo, source, clock=clock)  # Prometheus kept the history
    restarted.tick()
    assert decisions(repo) == ["start", "step"]
    restarted.tick()
    assert decisions(repo) == ["start", "step"]  # and never two steps in a row


def test_problems_in_the_file_stop_the_rollout_and_a_removed_rollout_is_forgotten(
    repo: Path,
) -> None:
    clock, source = Clock(), Source()
    metrics = RolloutMetrics(CollectorRegistry())
    controller = Controller(repo, source, metrics, clock=clock)
    publish_fake(repo, blessed=True)
    (repo / "serving.yaml").write_text(CONFIG.replace("stable: 1", "stable: 7"))
    run(controller, clock, 120)
    assert decisions(repo) == []  # version 7 is not on disk: nothing to compare with
    (repo / "serving.yaml").write_text(CONFIG)
    controller.tick()
    assert (
        metrics.registry.get_sample_value(
            "imgcls_rollout_weight", {"model": "digits", "version": "2"}
        )
        == 0.25
    )
    (repo / "serving.yaml").write_text("models:\n  digits:\n    labels: {stable: 1}\n")
    controller.tick()
    for version in ("1", "2"):
        assert (
            metrics.registry.get_sample_value(
                "imgcls_rollout_weight", {"model": "digits", "version": version}
            )
            is None
        )
