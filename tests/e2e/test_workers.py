"""Several workers on one port (the default on a machine with more than one CPU): every worker
serves, answers are as accurate as one process's, and /metrics counts every request once.
(Draining with several workers: tests/reliability/test_shutdown.py.)"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.images import gray_png
from tests.helpers.servers import Server, metric_value
from training.data import load_digits_data

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is not one)."""
    found = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(pid))
    return found


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_two_workers_share_the_load_and_the_counts(
    server_factory: object, trained_repo: Path
) -> None:
    srv: Server = server_factory(trained_repo, workers="2")  # type: ignore[operator]
    workers = worker_pids(srv.process.pid)
    assert len(workers) == 2
    test = load_digits_data(0.1).test
    count = 240
    bodies = [gray_png(test.images[i % len(test.labels), ..., 0]) for i in range(count)]
    labels = [str(test.labels[i % len(test.labels)]) for i in range(count)]
    before = {pid: cpu_s(pid) for pid in workers}

    def classify(index: int) -> httpx.Response:
        # A new connection per request, as many clients do: each is accepted by one worker.
        return httpx.post(
            srv.url + "/predict",
            files={"file": (f"d{index}.png", bodies[index], "image/png")},
            timeout=60,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(classify, range(count)))
    assert [r.status_code for r in responses] == [200] * count
    top = [r.json()["results"][0]["predictions"][0]["label"] for r in responses]
    assert np.mean([a == b for a, b in zip(top, labels, strict=True)]) >= 0.95
    # Both workers did part of the work (each spent CPU on it)...
    spent = {pid: cpu_s(pid) - before[pid] for pid in workers}
    assert all(seconds > 0.05 for seconds in spent.values()), spent
    # ...and the one /metrics answer counts every request and image once, whichever worker.
    text = httpx.get(srv.url + "/metrics", timeout=30).text
    served = {"route": "/predict", "code": "200", "model": "digits", "version": "1"}
    assert metric_value(text, "imgcls_requests_total", served) == count
    assert metric_value(text, "imgcls_batch_size_sum", {"model": "digits"}) == count


def test_auto_measures_the_default_model_then_runs_one_worker_per_cpu(
    server_factory: object, trained_repo: Path
) -> None:
    """The small digits model is cheap per image: HTTP bounds throughput, so ``auto`` ends
    with one worker per usable CPU (at most 4), after the measuring worker has left."""
    from service.settings import auto_workers, usable_cpus

    srv: Server = server_factory(trained_repo, workers="auto")  # type: ignore[operator]
    cpus = auto_workers(usable_cpus())
    expected = cpus if cpus > 1 else 0  # one CPU: the service runs as one process, no workers
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(worker_pids(srv.process.pid)) != expected:
        time.sleep(0.5)
    assert len(worker_pids(srv.process.pid)) == expected
    if expected > 1:
        assert "HTTP and decoding bound throughput" in srv.log()
    response = httpx.post(
        srv.url + "/predict", files={"file": ("d.png", gray_png(np.zeros((8, 8), np.uint8)))}
    )
    assert response.status_code == 200


def test_auto_without_a_model_starts_the_workers_at_once(
    server_factory: object, tmp_path: Path
) -> None:
    """Started before the first training: nothing to measure, so ``auto`` does not wait for a
    model; the workers answer at once (503 saying how to train, until a version appears)."""
    from service.settings import auto_workers, usable_cpus

    empty = tmp_path / "models"
    empty.mkdir()
    srv: Server = server_factory(empty, wait_ready=False, workers="auto")  # type: ignore[operator]
    response = httpx.post(
        srv.url + "/predict", files={"file": ("d.png", gray_png(np.zeros((8, 8), np.uint8)))}
    )
    assert response.status_code == 503
    assert "train.py" in response.json()["detail"]
    cpus = auto_workers(usable_cpus())
    assert len(worker_pids(srv.process.pid)) == (cpus if cpus > 1 else 0)
    if cpus > 1:
        assert "no default model measured" in srv.log()
