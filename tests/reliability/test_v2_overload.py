"""Overload on the Open Inference V2 route: a burst of concurrent ``/v2/models/{name}/infer``
requests far beyond the stress model's queue. Every request gets one answer: 200 with the right
probabilities for its own images, or 503 ``{"error": ...}`` with Retry-After (504 past the
deadline); the refusals are counted once per request; the service is normal right after."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers.servers import Server, metric_value, metrics_text
from tests.helpers.stress_model import INPUT_SIZE, MODEL_NAME, NUM_CLASSES, STRESS_SETTINGS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

REQUESTS = 120
IMAGES_PER_REQUEST = 2
INFER = f"/v2/models/{MODEL_NAME}/infer"
ROUTE = "/v2/models/{name}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Distinct images (random noise, never all white: the stress model's injected fault).
IMAGES = (
    np.random.default_rng(3)
    .integers(0, 250, (8, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    .astype(np.float32)
)


def infer_body(indices: list[int]) -> tuple[bytes, dict[str, str]]:
    """A binary FP32 request for IMAGES[indices], asking for binary probabilities back."""
    data = np.ascontiguousarray(IMAGES[indices], dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": [len(indices), INPUT_SIZE, INPUT_SIZE, 3],
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + data, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def probabilities(response: httpx.Response) -> np.ndarray:
    cut = int(response.headers[HEADER_LENGTH])
    answer = json.loads(response.content[:cut])
    output = answer["outputs"][0]
    assert output["datatype"] == "FP32"
    return np.frombuffer(response.content[cut:], dtype="<f4").reshape(output["shape"])


def indices_of(n: int) -> list[int]:
    return [(n + k) % len(IMAGES) for k in range(IMAGES_PER_REQUEST)]


async def burst(url: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def post(n: int) -> httpx.Response:
            body, headers = infer_body(indices_of(n))
            return await client.post(INFER, content=body, headers=headers)

        return list(await asyncio.gather(*(post(n) for n in range(REQUESTS))))


def test_v2_infer_under_overload_refuses_with_503_and_loses_nothing(
    stress_server: Server,
) -> None:
    with stress_server.client() as client:
        body, headers = infer_body(list(range(len(IMAGES))))
        alone = client.post(INFER, content=body, headers=headers)
        assert alone.status_code == 200, alone.text
        reference = probabilities(alone)
    assert reference.shape == (len(IMAGES), NUM_CLASSES)

    before = metrics_text(stress_server)
    responses = asyncio.run(burst(stress_server.url))
    after = metrics_text(stress_server)

    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {200, 503, 504}, statuses
    assert statuses[200] >= 1 and statuses[503] >= 1, statuses
    full = 0
    for n, response in enumerate(responses):
        if response.status_code == 200:
            np.testing.assert_allclose(
                probabilities(response), reference[indices_of(n)], rtol=0, atol=1e-4
            )
            continue
        answer = response.json()
        assert set(answer) == {"error"}, answer
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert "queue" in answer["error"]
            full += 1

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert delta("imgcls_rejected_requests_total", reason="queue_full") == full
    assert delta("imgcls_requests_total", route=ROUTE, code="503") == statuses[503]
    assert delta("imgcls_requests_total", route=ROUTE, code="200") == statuses[200]
    assert delta("imgcls_predictions_total", model=MODEL_NAME) == IMAGES_PER_REQUEST * statuses[200]

    # Normal right after: the next request is answered, correctly.
    with stress_server.client() as client:
        body, headers = infer_body([0, 1])
        response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(probabilities(response), reference[[0, 1]], rtol=0, atol=1e-4)
    assert httpx.get(stress_server.url + "/healthz", timeout=10).status_code == 200


GRPC_ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(indices: list[int]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    request.inputs.add(
        name="images", datatype="FP32", shape=[len(indices), INPUT_SIZE, INPUT_SIZE, 3]
    )
    request.raw_input_contents.append(np.ascontiguousarray(IMAGES[indices], dtype="<f4").tobytes())
    return request


async def grpc_burst(target: str) -> list[service_pb2.ModelInferResponse | grpc.aio.AioRpcError]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def call(n: int) -> service_pb2.ModelInferResponse | grpc.aio.AioRpcError:
            try:
                return await stub.ModelInfer(grpc_request(indices_of(n)), timeout=120)
            except grpc.aio.AioRpcError as error:
                return error

        return list(await asyncio.gather(*(call(n) for n in range(REQUESTS))))


def test_grpc_infer_under_overload_refuses_with_resource_exhausted_and_loses_nothing(
    stress_server: Server,
) -> None:
    """The same burst on the gRPC port: OK with the right probabilities for its own images, or
    RESOURCE_EXHAUSTED naming the queue (DEADLINE_EXCEEDED past the deadline), counted once."""
    assert stress_server.grpc_target is not None
    with stress_server.client() as client:
        body, headers = infer_body(list(range(len(IMAGES))))
        reference = probabilities(client.post(INFER, content=body, headers=headers))

    before = metrics_text(stress_server)
    answers = asyncio.run(grpc_burst(stress_server.grpc_target))
    after = metrics_text(stress_server)

    codes = Counter(a.code().name if isinstance(a, grpc.aio.AioRpcError) else "OK" for a in answers)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert codes["OK"] >= 1 and codes["RESOURCE_EXHAUSTED"] >= 1, codes
    for n, answer in enumerate(answers):
        if isinstance(answer, grpc.aio.AioRpcError):
            if answer.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "queue" in (answer.details() or "")
            continue
        values = np.frombuffer(answer.raw_output_contents[0], dtype="<f4")
        np.testing.assert_allclose(
            values.reshape(IMAGES_PER_REQUEST, NUM_CLASSES),
            reference[indices_of(n)],
            rtol=0,
            atol=1e-4,
        )

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert (
        delta("imgcls_rejected_requests_total", reason="queue_full") == codes["RESOURCE_EXHAUSTED"]
    )
    for code, count in codes.items():
        assert delta("imgcls_requests_total", route=GRPC_ROUTE, code=code) == count
    assert delta("imgcls_predictions_total", model=MODEL_NAME) == IMAGES_PER_REQUEST * codes["OK"]
    assert httpx.get(stress_server.url + "/healthz", timeout=10).status_code == 200


def test_an_overloaded_model_does_not_starve_another(
    stress_repo: Path,
    trained_repo: Path,
    tmp_path: Path,
    server_factory: Callable[..., Server],
) -> None:
    """Each model has its own queue: while ``stress`` refuses most of a burst (its queue is
    full), ``digits`` on the same server answers every request."""
    models = tmp_path / "models"
    shutil.copytree(stress_repo, models)
    shutil.copytree(trained_repo / "digits", models / "digits")
    server = server_factory(models, **STRESS_SETTINGS)
    digits_body = json.dumps(
        {
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": [1, 28, 28, 3], "data": [0] * 2352}
            ]
        }
    ).encode()

    async def both() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=REQUESTS + 4, max_keepalive_connections=REQUESTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

            async def stress(n: int) -> httpx.Response:
                body, headers = infer_body(indices_of(n))
                return await client.post(INFER, content=body, headers=headers)

            async def digits() -> list[httpx.Response]:
                answers = []
                await asyncio.sleep(0.05)  # let the burst fill the stress queue first
                for _ in range(20):
                    answers.append(
                        await client.post(
                            "/v2/models/digits/infer",
                            content=digits_body,
                            headers={"Content-Type": "application/json"},
                        )
                    )
                return answers

            digits_task = asyncio.create_task(digits())
            stressed = await asyncio.gather(*(stress(n) for n in range(REQUESTS)))
            return list(stressed), await digits_task

    stress_answers, digits_answers = asyncio.run(both())
    stress_statuses = Counter(r.status_code for r in stress_answers)
    assert stress_statuses[503] >= 1, stress_statuses
    assert [r.status_code for r in digits_answers] == [200] * 20, [
        r.text for r in digits_answers if r.status_code != 200
    ][:2]
    assert {r.json()["model_name"] for r in digits_answers} == {"digits"}
