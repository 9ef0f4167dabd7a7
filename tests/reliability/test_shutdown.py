"""SIGTERM with requests in flight, against a real process: /readyz turns 503 first, every
request in flight or queued is answered, and the process exits 0 within its grace period."""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers.images import noise_png
from tests.helpers.processes import PYTHON, ROOT, quiet_env
from tests.helpers.servers import Server, free_port, metric_value, metrics_text
from tests.helpers.stress_model import MODEL_NAME as STRESS_MODEL
from tests.helpers.stress_model import STRESS_SETTINGS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

#: Interpreter and TensorFlow teardown after the last answer (2 shared cores).
EXIT_OVERHEAD_S = 6.0

T = TypeVar("T")


def send(server: Server, index: int) -> httpx.Response:
    image = noise_png((64, 64), index % 8)
    return httpx.post(
        server.url + "/predict",
        files={"file": (f"img-{index}.png", image, "image/png")},
        timeout=60,
    )


def start_requests(
    server: Server,
    count: int,
    send: Callable[[Server, int], T] = send,  # type: ignore[assignment]
) -> tuple[ThreadPoolExecutor, list[Future[T]]]:
    """Fire ``count`` one-image requests at once; return when all of them are queued or done."""
    before = metrics_text(server)
    base = metric_value(before, "imgcls_batch_size_sum") + metric_value(
        before, "imgcls_batch_queue_depth"
    )
    pool = ThreadPoolExecutor(count)
    futures = [pool.submit(send, server, i) for i in range(count)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = metrics_text(server)
        taken = metric_value(text, "imgcls_batch_size_sum") + metric_value(
            text, "imgcls_batch_queue_depth"
        )
        if taken - base >= count:
            return pool, futures
        time.sleep(0.02)
    raise AssertionError("the requests were not all accepted in time")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_everything_in_flight_then_exits_0(
    server_factory: object, stress_repo: Path, workers: str
) -> None:
    """One process, or several workers under the supervisor: each drains the same way."""
    grace_s, delay_s, count = 15.0, 1.5, 40
    srv: Server = server_factory(  # type: ignore[operator]
        stress_repo,
        **{**STRESS_SETTINGS, "max_queue_size": "64", "request_timeout_s": "30"},
        workers=workers,
        shutdown_grace_s=str(grace_s),
        shutdown_delay_s=str(delay_s),
    )
    pool, futures = start_requests(srv, count)
    depth = metric_value(metrics_text(srv), "imgcls_batch_queue_depth")
    assert depth > 0  # work is really queued when the signal comes

    signalled = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    # Not ready at once, while the listening socket stays open for the delay.
    ready = httpx.get(srv.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["detail"] == "shutting down"
    late = httpx.post(
        srv.url + "/predict", files={"file": ("late.png", noise_png(), "image/png")}, timeout=10
    )
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert "shutting down" in late.json()["detail"]
    assert late.headers["connection"] == "close"  # clients leave kept-alive connections
    assert time.monotonic() - signalled < delay_s

    responses = [future.result(timeout=60) for future in futures]
    pool.shutdown()
    code = srv.process.wait(timeout=grace_s + EXIT_OVERHEAD_S)
    took = time.monotonic() - signalled
    print(f"\nSIGTERM with {depth:.0f} queued of {count}: exit code {code} after {took:.1f} s")
    assert [r.status_code for r in responses] == [200] * count
    assert [r.json()["results"][0]["filename"] for r in responses] == [
        f"img-{i}.png" for i in range(count)
    ]
    assert code == 0
    assert delay_s <= took < grace_s + EXIT_OVERHEAD_S
    log = srv.log()
    assert "shutdown requested" in log and "Finished server process" in log
    assert "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/healthz", timeout=5)


def grpc_infer(server: Server, index: int) -> str:
    """One encoded image over gRPC (V2 ModelInfer); the id it was answered for."""
    assert server.grpc_target is not None
    request = service_pb2.ModelInferRequest(model_name=STRESS_MODEL, id=f"img-{index}")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    blob = noise_png((64, 64), index % 8)
    request.raw_input_contents.append(struct.pack("<I", len(blob)) + blob)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return str(stub.ModelInfer(request, timeout=60).id)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_grpc_calls_in_flight_like_http(
    server_factory: object, stress_repo: Path, workers: str
) -> None:
    """gRPC calls queued when SIGTERM comes are answered; a new call is UNAVAILABLE 'shutting
    down' at once; the process exits 0 (with two workers, both serve the gRPC port)."""
    grace_s, delay_s, count = 15.0, 1.5, 24
    srv: Server = server_factory(  # type: ignore[operator]
        stress_repo,
        **{**STRESS_SETTINGS, "max_queue_size": "64", "request_timeout_s": "30"},
        workers=workers,
        shutdown_grace_s=str(grace_s),
        shutdown_delay_s=str(delay_s),
    )
    pool, futures = start_requests(srv, count, grpc_infer)
    signalled = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the signal handler has run
    with pytest.raises(grpc.RpcError) as late:
        grpc_infer(srv, count)
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE, late.value
    assert "shutting down" in (late.value.details() or "")

    answered = [future.result(timeout=60) for future in futures]
    pool.shutdown()
    code = srv.process.wait(timeout=grace_s + EXIT_OVERHEAD_S)
    assert answered == [f"img-{i}" for i in range(count)]
    assert code == 0
    assert time.monotonic() - signalled < grace_s + EXIT_OVERHEAD_S
    assert "Traceback" not in srv.log()


def test_work_left_when_the_grace_period_ends_is_answered_503(
    server_factory: object, stress_repo: Path
) -> None:
    # 150 images take ~3 s or more (the stress model does 40-55 a second): twice the grace.
    grace_s, count = 1.5, 150
    srv: Server = server_factory(  # type: ignore[operator]
        stress_repo,
        **{**STRESS_SETTINGS, "max_queue_size": "256", "request_timeout_s": "30"},
        shutdown_grace_s=str(grace_s),
    )
    pool, futures = start_requests(srv, count)
    signalled = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    responses = [future.result(timeout=60) for future in futures]
    pool.shutdown()
    answered_by = time.monotonic() - signalled
    code = srv.process.wait(timeout=grace_s + EXIT_OVERHEAD_S)
    took = time.monotonic() - signalled
    statuses = [r.status_code for r in responses]
    print(
        f"\ngrace {grace_s} s: {statuses.count(200)} answered 200, {statuses.count(503)} 503 "
        f"within {answered_by:.1f} s; exit code {code} after {took:.1f} s"
    )
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) > 0
    for response in responses:
        if response.status_code == 503:
            assert "shutting down" in response.json()["detail"]
            assert response.headers["retry-after"] == "1"
    assert answered_by < grace_s + 0.5
    assert code == 0
    assert took < grace_s + EXIT_OVERHEAD_S


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"IMGCLS_SHUTDOWN_DELAY_S": "30", "IMGCLS_SHUTDOWN_GRACE_S": "20"},
            "IMGCLS_SHUTDOWN_DELAY_S",
        ),
        ({"IMGCLS_HEADER_TIMEOUT_S": "0"}, "IMGCLS_HEADER_TIMEOUT_S"),
        ({"IMGCLS_BODY_TIMEOUT_S": "inf"}, "IMGCLS_BODY_TIMEOUT_S"),
        ({"IMGCLS_MAX_HEADER_BYTES": "10"}, "IMGCLS_MAX_HEADER_BYTES"),
    ],
)
def test_nonsense_limits_are_refused_at_start(env: dict[str, str], words: str) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "service"],
        cwd=ROOT,
        env=quiet_env(IMGCLS_PORT=str(free_port()), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and words in done.stderr
