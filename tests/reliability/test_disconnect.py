"""Clients that disconnect while their images are queued or computed cost the others nothing:
their queue slots are freed at once, queued images are never computed, and each such request
is counted once (``imgcls_requests_total{code="499"}``)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers.clients import http_head
from tests.helpers.images import noise_png
from tests.helpers.servers import Server, address, metric_value, metrics_text
from tests.helpers.stress_model import MODEL_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DISCONNECTING = 16  # = the stress server's queue size: all accepted, most of them queued


def wait_for_metric(server: Server, name: str, predicate: object, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric_value(metrics_text(server), name)
        if predicate(value) or time.monotonic() > deadline:  # type: ignore[operator]
            return value
        time.sleep(0.02)


def test_clients_that_leave_while_queued_free_their_slots_and_are_not_computed(
    stress_server: Server,
) -> None:
    image = noise_png((64, 64), 1)
    request = http_head(
        "POST", "/predict", {"Content-Type": "image/png", "Content-Length": str(len(image))}
    )
    before = metrics_text(stress_server)
    sockets = [socket.create_connection(address(stress_server)) for _ in range(DISCONNECTING)]
    for sock in sockets:
        sock.sendall(request + image)
    # Wait until the model is busy and the rest are queued, then everyone hangs up.
    depth = wait_for_metric(stress_server, "imgcls_batch_queue_depth", lambda v: v >= 8, 10)
    assert depth >= 8
    for sock in sockets:
        sock.close()

    assert wait_for_metric(stress_server, "imgcls_batch_queue_depth", lambda v: v == 0, 5) == 0
    time.sleep(0.5)  # let a batch that was running finish
    after = metrics_text(stress_server)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    computed = delta("imgcls_batch_size_sum")
    print(
        f"\nqueue depth at hang-up {depth:.0f}; images computed {computed:.0f} of {DISCONNECTING}"
    )
    # At most the batch that was running and the one about to start were computed.
    assert computed <= DISCONNECTING - depth + 4
    # Each request has exactly one outcome: answered before the hang-up, or counted as 499.
    gone = delta("imgcls_requests_total", route="/predict", code="499")
    answered = delta("imgcls_requests_total", route="/predict", code="200")
    assert gone + answered == DISCONNECTING
    assert gone >= depth
    assert delta("imgcls_rejected_requests_total", reason="client_disconnected") == gone
    assert delta("imgcls_requests_total", route="/predict", code="500") == 0
    assert "Traceback" not in stress_server.log()

    # The others are served at once.
    started = time.monotonic()
    response = httpx.post(
        stress_server.url + "/predict", files={"file": ("n.png", image, "image/png")}, timeout=30
    )
    assert response.status_code == 200
    assert time.monotonic() - started < 2.0


def test_a_client_that_leaves_while_uploading_costs_nothing(stress_server: Server) -> None:
    image = noise_png((64, 64), 2)
    before = metrics_text(stress_server)
    with socket.create_connection(address(stress_server)) as sock:
        head = http_head(
            "POST", "/predict", {"Content-Type": "image/png", "Content-Length": str(len(image))}
        )
        sock.sendall(head + image[:100])
        time.sleep(0.3)
    time.sleep(0.3)
    after = metrics_text(stress_server)
    code = {"route": "/predict", "code": "499"}
    assert (
        metric_value(after, "imgcls_requests_total", code)
        - metric_value(before, "imgcls_requests_total", code)
        == 1
    )
    assert metric_value(after, "imgcls_batch_size_sum") == metric_value(
        before, "imgcls_batch_size_sum"
    )


# --- the gRPC port: a client's cancel and its own deadline -----------------------------------


def _grpc_calls(
    server: Server, count: int, timeout_s: float, cancel_after_s: float | None
) -> list[str]:
    """``count`` one-image V2 calls at once on the gRPC port; each one's final status name."""
    assert server.grpc_target is not None
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1])
    image = noise_png((64, 64), 2)
    request.raw_input_contents.append(struct.pack("<I", len(image)) + image)

    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:  # type: ignore[arg-type]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer(request, timeout=timeout_s) for _ in range(count)]
            if cancel_after_s is not None:
                await asyncio.sleep(cancel_after_s)
                for call in calls:
                    call.cancel()
            outcomes = []
            for call in calls:
                try:
                    await call
                    outcomes.append("OK")
                except asyncio.CancelledError:
                    outcomes.append("CANCELLED")
                except grpc.aio.AioRpcError as error:
                    outcomes.append(error.code().name)
            return outcomes

    return asyncio.run(run())


def test_grpc_calls_past_their_deadline_are_not_computed(stress_server: Server) -> None:
    """16 calls with a 0.15 s gRPC deadline on a model that computes ~40 images/s: the first
    are answered, the rest end DEADLINE_EXCEEDED, and images whose deadline passed while they
    were queued are never computed."""
    before = metrics_text(stress_server)
    outcomes = _grpc_calls(stress_server, DISCONNECTING, timeout_s=0.15, cancel_after_s=None)
    assert set(outcomes) <= {"OK", "DEADLINE_EXCEEDED"}, outcomes
    assert outcomes.count("DEADLINE_EXCEEDED") >= DISCONNECTING // 4, outcomes
    assert wait_for_metric(stress_server, "imgcls_batch_queue_depth", lambda v: v == 0, 5) == 0
    time.sleep(0.5)  # let a batch that was running finish
    computed = metric_value(metrics_text(stress_server), "imgcls_batch_size_sum") - metric_value(
        before, "imgcls_batch_size_sum"
    )
    # Answered in time, plus at most the batches that had formed before the deadline passed and
    # finished after it (the running one and the next: 2 x 4 images).
    assert computed <= outcomes.count("OK") + 8, (computed, outcomes)


def test_grpc_calls_cancelled_while_queued_are_not_computed(stress_server: Server) -> None:
    before = metrics_text(stress_server)
    outcomes = _grpc_calls(stress_server, DISCONNECTING, timeout_s=30, cancel_after_s=0.15)
    assert outcomes.count("CANCELLED") >= DISCONNECTING // 2, outcomes
    assert wait_for_metric(stress_server, "imgcls_batch_queue_depth", lambda v: v == 0, 5) == 0
    time.sleep(0.5)
    after = metrics_text(stress_server)
    computed = metric_value(after, "imgcls_batch_size_sum") - metric_value(
        before, "imgcls_batch_size_sum"
    )
    assert computed <= outcomes.count("OK") + 8, (computed, outcomes)
    route = {"route": "/inference.GRPCInferenceService/ModelInfer", "code": "CANCELLED"}
    assert (
        metric_value(after, "imgcls_requests_total", route)
        - metric_value(before, "imgcls_requests_total", route)
        >= 1
    )
