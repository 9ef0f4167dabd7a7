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
from tests.helpers.servers import Server, metric_value, start_server, stop_server
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
    expected = cpus if cpus > 1 else 0
    deadline = time.monotonic() + 120  # the first worker hands over once the others are up
    while time.monotonic() < deadline and len(worker_pids(srv.process.pid)) != expected:
        time.sleep(0.5)
    assert len(worker_pids(srv.process.pid)) == expected
    if cpus > 1:
        assert "no default model measured" in srv.log()


def probe(url: str) -> str:
    """A probe's status code as text, or why there was none (``refused``, ``timeout``)."""
    try:
        return str(httpx.get(url, timeout=1.0).status_code)
    except httpx.ConnectError:
        return "refused"
    except httpx.TimeoutException:
        return "timeout"


@pytest.mark.parametrize("workers", ["auto", "2"])
def test_probes_are_answered_from_the_start_and_readiness_comes_once(
    trained_repo: Path, tmp_path: Path, workers: str
) -> None:
    """Several workers: /healthz and /readyz, polled every 100 ms from the first second, are
    refused until the first server listens, then always answered (200; 503 then 200, never
    back to 503), never left hanging, while ``auto``'s first worker
    measures the model and hands over, or while a fixed count of workers load their models
    (a worker joins the others only once ready)."""
    from service.settings import auto_workers, usable_cpus

    if auto_workers(usable_cpus()) < 2:
        pytest.skip("one usable CPU: auto runs one process, no hand-over")  # not CI's 2 cores
    started = time.monotonic()
    srv = start_server(trained_repo, tmp_path, wait=False, workers=workers)
    seen: list[tuple[float, str, str]] = []
    ready_at: float | None = None
    try:
        while time.monotonic() - started < 180:
            health, ready = probe(srv.url + "/healthz"), probe(srv.url + "/readyz")
            now = time.monotonic() - started
            seen.append((now, health, ready))
            if ready == "200" and ready_at is None:
                ready_at = now
            handed_over = workers != "auto" or "the first worker retires" in srv.log()
            if ready_at is not None and handed_over and now - ready_at > 5.0:
                break  # five more seconds after the hand-over began (or after ready)
            time.sleep(0.1)
        assert ready_at is not None, (seen[-5:], srv.log()[-3000:])
        if workers == "auto":
            assert "the first worker retires" in srv.log(), srv.log()[-3000:]
        # Never left hanging: refused until the first worker's server listens (a start like
        # any process's), then answered, every time.
        assert not [row for row in seen if "timeout" in row], seen
        first = next(i for i, row in enumerate(seen) if row[1] != "refused")
        answered = seen[first:]  # from the first answer on, nothing refused or unanswered
        assert answered[0][0] < 30.0, seen[:10]
        assert {health for _, health, _ in answered} == {"200"}, answered
        readiness = [ready for _, _, ready in answered]
        first_ready = readiness.index("200")
        assert set(readiness[:first_ready]) <= {"503"}, readiness
        assert set(readiness[first_ready:]) == {"200"}, readiness  # never back to 503
        print(f"workers={workers}: /readyz 200 after {ready_at:.1f} s")
    finally:
        stop_server(srv)
