"""Tests for service.process.supervisor with stand-in workers (no TensorFlow): how many it starts,
restarts after a crash, forwards SIGTERM, and stops everything when a worker cannot start.

The stand-ins are real worker processes, so every test here is ``e2e``; how many workers
``auto`` means is a setting (tests/service/test_settings.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from service.process.supervisor import STARTUP_FAILURE, Supervisor, bind_socket
from service.process.worker_report import READY_DIR_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: Where the stand-in workers write their pids (set per test through the environment, which
#: spawned workers inherit).
PIDS_ENV = "IMGCLS_TEST_SUPERVISOR_PIDS"


def _record_pid() -> None:
    with open(os.environ[PIDS_ENV], "a") as handle:
        handle.write(f"{os.getpid()}\n")


def serve_until_signalled(sock: socket.socket) -> int:
    """A stand-in worker: records its pid, then waits for a signal (SIGTERM ends it)."""
    _record_pid()
    time.sleep(60)
    return 0


def report_then_serve(sock: socket.socket) -> int:
    """A stand-in worker whose default model costs ``IMGCLS_TEST_COST_S`` per image; it
    reports, as the service does, only when the supervisor asks (the probe)."""
    _record_pid()
    directory = os.environ.get(READY_DIR_ENV)
    if directory:
        cost = float(os.environ["IMGCLS_TEST_COST_S"])
        (Path(directory) / f"{os.getpid()}.json").write_text(
            json.dumps({"pid": os.getpid(), "seconds_per_image": cost})
        )
    time.sleep(60)
    return 0


def fail_to_start(sock: socket.socket) -> int:
    """A stand-in worker that cannot start, as uvicorn reports it."""
    _record_pid()
    return STARTUP_FAILURE


def pids(path: Path, at_least: int, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [int(line) for line in path.read_text().split()] if path.exists() else []
        if len(found) >= at_least:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} workers started")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_crashed_worker_is_replaced_and_sigterm_reaches_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(PIDS_ENV, str(pid_file))
    sock = bind_socket("127.0.0.1", 0)
    seen: dict[str, list[int]] = {}

    def crash_then_stop() -> None:
        first = pids(pid_file, 2)
        os.kill(first[0], signal.SIGKILL)  # a worker dies while serving
        seen["after_restart"] = pids(pid_file, 3)
        os.kill(os.getpid(), signal.SIGTERM)  # then the service is told to stop

    helper = threading.Thread(target=crash_then_stop)
    helper.start()
    try:
        code = Supervisor(serve_until_signalled, sock, 2).run()
    finally:
        helper.join(timeout=60)
        sock.close()
    workers = seen["after_restart"]
    assert code == 0
    assert len(workers) == 3 and len(set(workers)) == 3  # two, then one more in place of one
    assert not any(alive(pid) for pid in workers)  # the SIGTERM reached the replacement too


def test_a_worker_that_cannot_start_stops_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(PIDS_ENV, str(pid_file))
    sock = bind_socket("127.0.0.1", 0)
    try:
        code = Supervisor(fail_to_start, sock, 2).run()
    finally:
        sock.close()
    assert code == STARTUP_FAILURE
    # The first failure stops the other worker (perhaps before it got as far as recording
    # itself), and neither is restarted: the next one would fail the same way.
    started = pids(pid_file, 1)
    assert len(started) <= 2
    assert not any(alive(pid) for pid in started)


@pytest.mark.parametrize(
    ("cost_s", "serving"), [(0.0002, 2), (0.005, 1)], ids=["cheap model", "costly model"]
)
def test_auto_measures_the_model_then_keeps_the_first_worker_or_hands_over_to_one_per_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cost_s: float, serving: int
) -> None:
    """The first worker serves while it measures: a costly model keeps it alone (it has every
    core); a cheap one gets one worker per CPU, and the first retires once they report."""
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(PIDS_ENV, str(pid_file))
    monkeypatch.setenv("IMGCLS_TEST_COST_S", str(cost_s))
    sock = bind_socket("127.0.0.1", 0)
    seen: dict[str, list[int]] = {}

    def settle_then_stop() -> None:
        expected = 1 if serving == 1 else 1 + serving  # the first, and those it hands over to
        started = pids(pid_file, expected)
        time.sleep(2.0)  # the decision and the measuring worker's exit, if any
        seen["started"] = pids(pid_file, expected)
        seen["alive"] = [pid for pid in started if alive(pid)]
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=settle_then_stop)
    helper.start()
    try:
        code = Supervisor(report_then_serve, sock, 2, probe_env={}, model_bound_s=0.002).run()
    finally:
        helper.join(timeout=60)
        sock.close()
    assert code == 0
    assert len(seen["alive"]) == serving
    if serving == 1:
        assert seen["alive"] == seen["started"][:1]  # the measuring worker serves on
    else:
        assert seen["started"][0] not in seen["alive"]  # the measuring worker handed over
    assert not any(alive(pid) for pid in seen["started"])
