"""Malformed and hostile calls on the gRPC port: every one gets a precise status and a message
saying what to fix, nothing crashes, and the HTTP side keeps classifying. The shared hostile
server has a 1 MiB message limit, 8 images per /predict and 64 calls in flight per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers.hostile import MAX_CONNECTIONS, MAX_IMAGES, MAX_UPLOAD_BYTES
from tests.helpers.servers import Server, healthy, metric_value, metrics_text

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INFER = "/inference.GRPCInferenceService/ModelInfer"
DIGIT = np.zeros((1, 28, 28, 3), dtype=np.float32)


def target(server: Server) -> str:
    assert server.grpc_target is not None
    return server.grpc_target


def infer_request(
    datatype: str = "FP32",
    shape: list[int] | None = None,
    raw: bytes | None = None,
    name: str = "images",
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name=name, datatype=datatype, shape=shape or [1, 28, 28, 3])
    request.raw_input_contents.append(DIGIT.tobytes() if raw is None else raw)
    return request


def two_inputs() -> service_pb2.ModelInferRequest:
    request = infer_request()
    request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 3])
    request.raw_input_contents.append(DIGIT.tobytes())
    return request


def typed_too_few() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 3])
    tensor.contents.fp32_contents.extend([0.0] * 10)
    return request


def length_prefixed(*blobs: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


CASES = [
    ("wrong-dtype", infer_request("INT64"), "INVALID_ARGUMENT", "datatype 'INT64'"),
    ("raw-too-short", infer_request(raw=b"\0" * 100), "INVALID_ARGUMENT", "raw_input_contents[0]"),
    (
        "no-channels",
        infer_request(shape=[1, 28, 28], raw=b"\0" * 28 * 28 * 4),
        "INVALID_ARGUMENT",
        "(N, height, width, 3)",
    ),
    (
        "huge-shape",
        infer_request(shape=[1, 100_000, 100_000, 3], raw=b"\0" * 16),
        "INVALID_ARGUMENT",
        "needs 120000000000 bytes",
    ),
    (
        "too-many-images",
        infer_request(shape=[2**31 - 1, 28, 28, 3], raw=b""),
        "INVALID_ARGUMENT",
        f"at most {MAX_IMAGES} per request",
    ),
    ("negative-dim", infer_request(shape=[-1, 28, 28, 3]), "INVALID_ARGUMENT", "shape"),
    ("two-inputs", two_inputs(), "INVALID_ARGUMENT", "exactly one tensor"),
    ("typed-too-few", typed_too_few(), "INVALID_ARGUMENT", "fp32_contents"),
    (
        "bytes-not-an-image",
        infer_request("BYTES", [1], length_prefixed(b"not an image"), "image_bytes"),
        "INVALID_ARGUMENT",
        "image",
    ),
    (
        "bytes-length-lies",
        infer_request("BYTES", [1], struct.pack("<I", 10**9) + b"x", "image_bytes"),
        "INVALID_ARGUMENT",
        "declares 1000000000 bytes",
    ),
    (
        "unknown-model",
        service_pb2.ModelInferRequest(model_name="nope"),
        "NOT_FOUND",
        "no model 'nope'",
    ),
]


@pytest.mark.parametrize(
    ("request_", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_infer_requests_get_a_precise_status(
    hostile_server: Server, request_: service_pb2.ModelInferRequest, code: str, words: str
) -> None:
    with grpc.insecure_channel(target(hostile_server)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request_, timeout=30)
    assert raised.value.code() == grpc.StatusCode[code], raised.value
    assert words in (raised.value.details() or ""), raised.value.details()
    assert healthy(hostile_server)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xff\xff\xff", "not a valid inference.ModelInferRequest"),
        (infer_request().SerializeToString()[:-100], "truncated or not protobuf"),
    ],
    ids=["garbage", "truncated"],
)
def test_bytes_that_are_no_message_are_invalid_argument(
    hostile_server: Server, body: bytes, words: str
) -> None:
    with grpc.insecure_channel(target(hostile_server)) as channel:
        call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            call(body, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    assert words in (raised.value.details() or "")


def test_messages_over_the_upload_limit_are_refused_even_compressed(
    hostile_server: Server,
) -> None:
    """1.5 MiB of pixels, plain, and gzip-compressed to a few KB (a small bomb): gRPC itself
    refuses both at MAX_UPLOAD_BYTES, after inflating, with RESOURCE_EXHAUSTED."""
    big = infer_request("UINT8", [1, 512, 768, 3], b"\0" * (512 * 768 * 3))  # 1.1 MiB
    assert big.ByteSize() > MAX_UPLOAD_BYTES
    assert len(gzip.compress(big.SerializeToString())) < 10_000
    with grpc.insecure_channel(target(hostile_server)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(big, timeout=30, compression=compression)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value
    assert healthy(hostile_server)


def test_tfserving_bad_tensors_are_invalid_argument(hostile_server: Server) -> None:
    def tensor(dtype: int, dims: list[int], **values: object) -> tensor_pb2.TensorProto:
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
        )
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)

    cases = [
        (tensor(types_pb2.DT_DOUBLE, [1, 28, 28, 3]), "DT_DOUBLE"),
        (tensor(types_pb2.DT_FLOAT, [1, 28, 28, 3], tensor_content=b"\0" * 7), "tensor_content"),
        (tensor(types_pb2.DT_FLOAT, [1, 28, 28, 3], float_val=[1.0]), "float_val"),
        (tensor(types_pb2.DT_STRING, [2], string_val=[b"x"]), "string_val"),
        (tensor(types_pb2.DT_STRING, [1], string_val=[b"not an image"]), "image"),
        (tensor(types_pb2.DT_FLOAT, [1, 2**20, 2**20, 3], float_val=[0.0]), "float_val"),
    ]
    with grpc.insecure_channel(target(hostile_server)) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for proto, words in cases:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.inputs["images"].CopyFrom(proto)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, raised.value)
            assert words in (raised.value.details() or ""), raised.value.details()
    assert healthy(hostile_server)


async def _many_calls(server: Server, count: int) -> Counter[str]:
    request = infer_request()
    async with grpc.aio.insecure_channel(target(server)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> str:
            try:
                await stub.ModelInfer(request, timeout=60)
                return "OK"
            except grpc.aio.AioRpcError as error:
                assert error.details(), error
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    # Streams opened before the client read the server's stream limit are
                    # refused by HTTP/2 (REFUSED_STREAM): gRPC's "retry" status.
                    assert "RST_STREAM" in error.details(), error
                return error.code().name

        return Counter(await asyncio.gather(*(one() for _ in range(count))))


def test_a_client_opening_1000_streams_gets_answers_or_resource_exhausted(
    hostile_server: Server,
) -> None:
    """1,000 calls at once on one connection: each answered OK or refused with a status (the
    per-process cap is MAX_CONNECTIONS calls in flight, the queue holds 256 images, a
    connection runs 128 streams at once), nothing hangs, HTTP keeps serving."""
    outcomes = asyncio.run(_many_calls(hostile_server, 1000))
    assert sum(outcomes.values()) == 1000
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, outcomes
    assert outcomes["OK"] >= MAX_CONNECTIONS, outcomes
    assert healthy(hostile_server)


def test_cancelled_calls_are_counted_and_harm_nothing(hostile_server: Server) -> None:
    """Calls of 4 images each, cancelled by the client at once or a moment later: each the
    server saw is counted once, as OK or CANCELLED; nothing else breaks."""

    async def cancel_some() -> None:
        async with grpc.aio.insecure_channel(target(hostile_server)) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            batch = infer_request("UINT8", [4, 28, 28, 3], b"\0" * (4 * 28 * 28 * 3))
            for pause_s in (0.0, 0.005, 0.02):
                calls = [stub.ModelInfer(batch, timeout=60) for _ in range(10)]
                await asyncio.sleep(pause_s)
                for call in calls:
                    call.cancel()
                for call in calls:
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await call

    def counts() -> Counter[str]:
        text = metrics_text(hostile_server)
        return Counter(
            {
                code: metric_value(text, "imgcls_requests_total", {"route": INFER, "code": code})
                for code in ("OK", "CANCELLED", "ALL")
            }
            | {"ALL": metric_value(text, "imgcls_requests_total", {"route": INFER})}
        )

    before = counts()
    asyncio.run(cancel_some())
    assert healthy(hostile_server)
    time.sleep(0.5)  # the server finishes counting the calls it saw cancelled
    after = counts()
    seen = after["ALL"] - before["ALL"]
    assert seen <= 30
    assert after["OK"] - before["OK"] + after["CANCELLED"] - before["CANCELLED"] == seen
