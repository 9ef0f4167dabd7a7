"""The progressive rollout end to end: real services, a real Prometheus, the real controller
(``python -m service.rollout``) and real trainers, with clients sending digits the whole time.

The five scenarios of the rollout: a good candidate promoted step by step, a worse one never
served, one that passes the gate but fails live rolled back, a controller killed mid-rollout
that resumes, and two replicas that both follow it. Timings are scaled down for the test
(``ROLLOUT``: 3 s intervals, 10 requests per side to judge); the defaults are 60 s and 50.
"""

from __future__ import annotations

import itertools
import math
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.rollout import journal
from service.serving.config import parse_config
from tests.helpers.images import digit_pngs
from tests.helpers.models import republish
from tests.helpers.processes import PYTHON, ROOT, quiet_env, run_module, run_train
from tests.helpers.prometheus import Prometheus, start_prometheus, stop_prometheus
from tests.helpers.servers import (
    Server,
    free_port,
    metric_value,
    metrics_text,
    start_server,
    stop_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: Three failures to roll back, as the default: a good version may fail one noisy check in a
#: 3 s interval on a busy runner (a p99 over 1.5x stable's on a few dozen requests) and hold.
STEP, MAX, INTERVAL_S, THRESHOLD, MIN_REQUESTS = 0.1, 0.5, 3, 3, 10
ROLLOUT = (
    f"{{step_weight: {STEP}, max_weight: {MAX}, interval_s: {INTERVAL_S}, "
    f"threshold: {THRESHOLD}, min_requests: {MIN_REQUESTS}}}"
)
SERVING_YAML = f"""\
# digits rolls out by itself; this comment survives the controller's edits
models:
  digits:
    labels: {{stable: 1}}
    rollout: {ROLLOUT}
"""
#: The replicas re-read serving.yaml this often (seconds); shares are judged this long after
#: each change, so that every replica follows the new weights.
POLL_S = 0.25
SETTLE_S = 1.0
#: Long enough for a rollout of 5 intervals on a busy 2-core runner.
ROLLOUT_TIMEOUT_S = 150.0


@dataclass
class Answer:
    at: float  # Unix seconds, when the answer arrived
    replica: int
    status: int
    version: int | None


@dataclass
class Clients:
    """Threads that send digits to the replicas in turn until stopped; every answer kept."""

    urls: list[str]
    threads: int = 6
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Clients:
        images = digit_pngs(32)

        def loop(index: int) -> None:
            with httpx.Client(timeout=30.0) as client:
                sent = index
                while not self._stop.is_set():
                    replica = sent % len(self.urls)
                    image = images[sent % len(images)]
                    sent += self.threads
                    try:
                        response = client.post(
                            self.urls[replica] + "/predict",
                            files={"file": ("d.png", image, "image/png")},
                        )
                        status = response.status_code
                        version = response.json()["model"]["version"] if status == 200 else None
                    except httpx.TransportError:
                        status, version = 0, None
                    self.answers.append(Answer(time.time(), replica, status, version))

        self._workers = [
            threading.Thread(target=loop, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    def between(self, start: float, end: float, replica: int | None = None) -> list[Answer]:
        return [
            a
            for a in self.answers
            if start <= a.at < end and (replica is None or a.replica == replica)
        ]


@dataclass
class Controller:
    models: Path
    args: list[str]
    log_path: Path
    metrics_url: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "service.rollout", "--models-dir", str(self.models), *self.args],
                cwd=ROOT,
                env=quiet_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(httpx.get(self.metrics_url, timeout=10).text, name, labels)


def start_controller(models: Path, log_dir: Path, *source: str) -> Controller:
    port = free_port()
    args = [*source, "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--tick-s", "0.2"]
    controller = Controller(
        models, args, log_dir / "rollout.out", f"http://127.0.0.1:{port}/metrics"
    )
    return controller.start()


def entries(models: Path) -> list[dict[str, Any]]:
    return journal.entries(models / "rollout.log")


def wait_for_decision(
    models: Path, decision: str, controller: Controller, timeout_s: float = ROLLOUT_TIMEOUT_S
) -> dict[str, Any]:
    """The first ``rollout.log`` line with ``decision``; fail with the log after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in entries(models) if e["decision"] == decision]
        if found:
            return found[0]
        assert controller.process is not None and controller.process.poll() is None, (
            controller.log()[-3000:]
        )
        time.sleep(0.2)
    pytest.fail(
        f"no {decision!r} within {timeout_s:.0f} s; rollout.log: "
        f"{[(e['decision'], e['weight'], e['reason']) for e in entries(models)]}\n"
        f"controller log:\n{controller.log()[-3000:]}"
    )


def labels(models: Path) -> dict[str, tuple[int, float]]:
    config = parse_config((models / "serving.yaml").read_text())
    return {
        name: (target.version, target.weight)
        for name, target in config.models["digits"].labels.items()
    }


def check_shares(clients: Clients, log: list[dict[str, Any]], replica: int | None = None) -> int:
    """Between two decisions the canary's share of answers is its weight, within statistical
    bounds (4 standard deviations and 3 points for the boundaries); returns the intervals
    checked."""
    checked = 0
    for this, following in itertools.pairwise(log):
        canary, weight = this["canary"], this["weight"]
        # After a start the replicas may still be loading the canary (its share goes to
        # stable meanwhile): only intervals after a step, when it has served, are compared.
        if canary is None or this["decision"] != "step":
            continue
        window = clients.between(this["time"] + SETTLE_S, following["time"], replica)
        served = [a for a in window if a.status == 200]
        if len(served) < 30:
            continue
        share = sum(a.version == canary for a in served) / len(served)
        bound = 4 * math.sqrt(weight * (1 - weight) / len(served)) + 0.03
        assert abs(share - weight) <= bound, (
            f"replica {replica}: canary share {share:.3f} of {len(served)} answers at weight "
            f"{weight} (bound {bound:.3f})"
        )
        checked += 1
    return checked


def train_version_2(models: Path, tmp_path: Path, *flags: str) -> str:
    """One epoch of ``train.py`` (with ``flags``) publishing version 2; its output."""
    done = run_train(
        "--models-dir",
        str(models),
        "--run-dir",
        str(tmp_path / "run2"),
        "--epochs",
        "1",
        "--verbose",
        "0",
        *flags,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(version 2)" in done.stdout, done.stdout
    return done.stdout


@pytest.fixture()
def rollout_repo(repo_copy: Path) -> Path:
    (repo_copy / "serving.yaml").write_text(SERVING_YAML)
    return repo_copy


@pytest.fixture()
def live(
    rollout_repo: Path, tmp_path: Path, prometheus_binary: str
) -> Iterator[tuple[Server, Prometheus, Controller, Clients]]:
    """One replica behind a real Prometheus, the controller reading Prometheus, and clients."""
    server = start_server(rollout_repo, tmp_path, poll_interval_s=str(POLL_S))
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prometheus = start_prometheus(prometheus_binary, server.url.removeprefix("http://"), workdir)
    controller = start_controller(rollout_repo, tmp_path, "--prometheus", prometheus.url)
    clients = Clients([server.url]).start()
    try:
        yield server, prometheus, controller, clients
    finally:
        clients.stop()
        controller.stop()
        stop_prometheus(prometheus)
        stop_server(server)


def test_good_candidate_steps_up_and_is_promoted_without_a_failed_request(
    live: tuple[Server, Prometheus, Controller, Clients], rollout_repo: Path, tmp_path: Path
) -> None:
    server, _prometheus, controller, clients = live
    out = train_version_2(rollout_repo, tmp_path, "--init-from", "1", "--learning-rate", "0.0001")
    trained = time.time()
    assert "NOT blessed" not in out, out

    promote = wait_for_decision(rollout_repo, "promote", controller)
    promoted_after_s = promote["time"] - trained
    wait_for_decision(rollout_repo, "retire", controller, timeout_s=30)
    time.sleep(SETTLE_S)
    clients.stop()

    log = entries(rollout_repo)
    # Holds (a noisy check) and waits keep the weight; it only ever goes up, step by step.
    decided = [e["decision"] for e in log if e["decision"] not in ("wait", "hold")]
    assert decided == ["start", "step", "step", "step", "step", "promote", "retire"], log
    weights = [e["weight"] for e in log if e["decision"] in ("start", "step")]
    assert weights == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert labels(rollout_repo) == {"stable": (2, 0.0)}
    assert "this comment survives" in (rollout_repo / "serving.yaml").read_text()

    assert clients.answers and all(a.status == 200 for a in clients.answers)
    assert check_shares(clients, log) >= 3
    after = clients.between(promote["time"] + SETTLE_S, math.inf)
    assert after and all(a.version == 2 for a in after)
    assert controller.metric("imgcls_rollout_decisions_total", decision="promote") == 1
    assert controller.metric("imgcls_rollout_weight", model="digits", version="2") == 1.0
    models = httpx.get(server.url + "/models", timeout=10).json()
    assert models["models"][0]["rollout"]["last_decision"]["decision"] == "retire"
    assert models["models"][0]["default_version"] == 2
    # Five judged intervals of 3 s from the start (the controller may start the canary before
    # train.py has returned: it publishes first, then writes its report).
    started = next(e for e in log if e["decision"] == "start")
    print(f"train.py finished -> promotion: {promoted_after_s:.1f} s")
    assert promote["time"] - started["time"] >= 5 * INTERVAL_S


def test_worse_candidate_is_published_unblessed_and_never_served_unpinned(
    live: tuple[Server, Prometheus, Controller, Clients], rollout_repo: Path, tmp_path: Path
) -> None:
    server, _prometheus, controller, clients = live
    # One epoch from scratch: clearly worse than version 1 on the held-out split.
    out = train_version_2(rollout_repo, tmp_path)
    assert "NOT blessed" in out, out
    published = time.time()
    # The replica loads it (the policy serves the newest), pinned requests reach it...
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pinned = httpx.post(
            server.url + "/models/digits/versions/2/predict",
            files={"file": ("d.png", digit_pngs(1)[0], "image/png")},
            timeout=30,
        )
        if pinned.status_code == 200:
            break
        time.sleep(0.5)
    assert pinned.status_code == 200 and pinned.json()["model"]["version"] == 2
    # ...and for several intervals the controller starts nothing: unpinned traffic stays on 1.
    time.sleep(4 * INTERVAL_S)
    clients.stop()
    assert entries(rollout_repo) == []
    assert labels(rollout_repo) == {"stable": (1, 0.0)}
    after = clients.between(published, math.inf)
    assert len(after) > 50 and all(a.status == 200 and a.version == 1 for a in after)
    assert controller.metric("imgcls_rollout_decisions_total", decision="start") == 0


def test_candidate_failing_live_is_rolled_back_and_stable_keeps_serving(
    live: tuple[Server, Prometheus, Controller, Clients], rollout_repo: Path
) -> None:
    server, _prometheus, controller, clients = live
    done = run_module("tests.helpers.faulty_version", str(rollout_repo))
    assert done.returncode == 0 and done.stdout.split()[-1] == "2", done.stderr[-3000:]

    rollback = wait_for_decision(rollout_repo, "rollback", controller)
    time.sleep(SETTLE_S + 2 * POLL_S)
    clients.stop()

    log = entries(rollout_repo)
    assert [e["decision"] for e in log if e["decision"] != "wait"] == [
        "start",
        *["hold"] * (THRESHOLD - 1),
        "rollback",
    ]
    assert {e["weight"] for e in log if e["decision"] in ("start", "hold")} == {STEP}
    assert rollback["rolled_back"] == {"2": rollback["reason"]}
    assert f"{THRESHOLD} failed checks" in rollback["reason"]
    errors = next(c for c in rollback["checks"] if c["name"] == "error_ratio_delta")
    assert errors["passed"] is False and errors["value"] > errors["threshold"] == 0.01
    assert labels(rollout_repo) == {"stable": (1, 0.0)}

    # The canary failed its own share; stable never failed, even batched with it.
    failed = [a for a in clients.answers if a.status != 200]
    assert failed and all(a.status == 500 for a in failed)
    text = metrics_text(server)
    assert metric_value(text, "imgcls_requests_total", {"version": "2", "code": "500"}) > 0
    assert metric_value(text, "imgcls_requests_total", {"version": "1", "code": "500"}) == 0
    after = clients.between(rollback["time"] + SETTLE_S, math.inf)
    assert after and all(a.status == 200 and a.version == 1 for a in after)
    assert controller.metric("imgcls_rollout_decisions_total", decision="rollback") == 1
    assert controller.metric("imgcls_rollout_check_value", check="error_ratio_delta") > 0.01
    versions = httpx.get(server.url + "/models", timeout=10).json()["models"][0]["versions"]
    assert {row["version"]: row.get("rolled_back") for row in versions}[2] == rollback["reason"]


def test_a_killed_controller_resumes_without_jumping_a_step_or_a_second_canary(
    rollout_repo: Path, tmp_path: Path
) -> None:
    server = start_server(rollout_repo, tmp_path, poll_interval_s=str(POLL_S))
    controller = start_controller(rollout_repo, tmp_path, "--scrape", server.url)
    clients = Clients([server.url]).start()
    seen_labels: list[dict[str, tuple[int, float]]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen_labels.append(labels(rollout_repo))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert republish(rollout_repo) == 2  # the same network: blessed, and as good
        step = wait_for_decision(rollout_repo, "step", controller)
        controller.stop(signal.SIGKILL)
        killed = time.time()
        time.sleep(INTERVAL_S)  # the interval runs out while no controller runs
        controller.start()
        wait_for_decision(rollout_repo, "promote", controller)
    finally:
        watching.set()
        watcher.join(10)
        clients.stop()
        controller.stop()
        stop_server(server)

    log = entries(rollout_repo)
    assert step["weight"] == 0.2
    weights = [e["weight"] for e in log if e["decision"] in ("start", "step")]
    assert weights == [0.1, 0.2, 0.3, 0.4, 0.5], log
    # The first step after the restart came a whole interval after the restart, not at once.
    resumed = next(e for e in log if e["time"] > killed and e["decision"] != "wait")
    assert resumed["time"] - killed >= INTERVAL_S + INTERVAL_S, log
    assert {e["canary"] for e in log if e["canary"] is not None} == {2}
    assert all(sum(w > 0 for _v, w in seen.values()) <= 1 for seen in seen_labels)
    assert all(a.status == 200 for a in clients.answers)
    assert labels(rollout_repo) in (
        {"stable": (2, 0.0), "previous": (1, 0.0)},
        {"stable": (2, 0.0)},
    )


def test_two_replicas_behind_one_serving_yaml_both_follow_the_controller(
    rollout_repo: Path, tmp_path: Path
) -> None:
    replicas = [start_server(rollout_repo, tmp_path, poll_interval_s=str(POLL_S)) for _ in range(2)]
    controller = start_controller(rollout_repo, tmp_path, "--scrape", *[r.url for r in replicas])
    clients = Clients([r.url for r in replicas], threads=8).start()
    try:
        assert republish(rollout_repo) == 2
        wait_for_decision(rollout_repo, "promote", controller)
        time.sleep(SETTLE_S)
    finally:
        clients.stop()
        controller.stop()
    try:
        log = entries(rollout_repo)
        assert [e["weight"] for e in log if e["decision"] in ("start", "step")] == [
            0.1,
            0.2,
            0.3,
            0.4,
            0.5,
        ]
        for index, replica in enumerate(replicas):
            assert check_shares(clients, log, replica=index) >= 2
            models = httpx.get(replica.url + "/models", timeout=10).json()["models"][0]
            assert models["default_version"] == 2
            # Each replica counted its own share of the canary's requests.
            text = metrics_text(replica)
            assert metric_value(text, "imgcls_requests_total", {"version": "2"}) > 0
        assert all(a.status == 200 for a in clients.answers)
    finally:
        for replica in replicas:
            stop_server(replica)
