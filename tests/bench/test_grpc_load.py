"""The gRPC load generator (``bench/grpc_load.py``): the framed body, h2load's summary, and the
check that h2load's HTTP 200s were OK gRPC answers (h2load alone counts a gRPC error a success).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from bench import grpc_load
from tests.helpers.processes import missing_tool

# A real h2load summary (nghttp2 1.52.0, 4 connections, 2 s).
SUMMARY = (
    "finished in 2.00s, 2244.00 req/s, 316.06KB/s\n"
    "requests: 4488 total, 4492 started, 4488 done, 4488 succeeded, 0 failed, 0 errored, "
    "0 timeout\n"
    "status codes: 4488 2xx, 0 3xx, 0 4xx, 0 5xx\n"
    "traffic: 632.12KB (647290) total, 13.44KB (13764) headers (space savings 96.21%), "
    "372.54KB (381480) data\n"
    "                     min         max         mean         sd        +/- sd\n"
    "time for request:      430us     28.07ms      2.20ms      1.78ms    96.09%\n"
)


def test_a_frame_is_flag_length_message() -> None:
    framed = grpc_load.frame(b"abc")
    assert framed == b"\x00\x00\x00\x00\x03abc"
    assert grpc_load.unframe(framed + grpc_load.frame(b"")) == [b"abc", b""]


def test_the_body_is_a_framed_model_infer_request() -> None:
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    (message,) = grpc_load.unframe(grpc_load.infer_body(images, "digits"))
    request = service_pb2.ModelInferRequest()
    request.ParseFromString(message)
    assert request.model_name == "digits"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("images", "UINT8", [2, 4, 4, 3])
    ]
    assert [o.name for o in request.outputs] == ["probabilities"]
    assert request.raw_input_contents[0] == images.tobytes()


def test_the_summary_gives_exact_counts_and_bytes() -> None:
    found = grpc_load.parse_summary(SUMMARY)
    assert found["seconds"] == 2.0
    assert (found["done"], found["succeeded"], found["2xx"], found["failed"]) == (
        4488,
        4488,
        4488,
        0,
    )
    assert (found["data_bytes"], found["header_bytes"]) == (381480, 13764)


def test_answers_short_of_an_ok_answer_are_errors() -> None:
    assert grpc_load.grpc_errors(4488, 381480, 85) == 0  # 4488 x 85 B
    assert grpc_load.grpc_errors(4488, 381480 + 85, 85) == 0  # a stream cut at the end
    assert grpc_load.grpc_errors(4488, 381480 - 85 * 10, 85) == 10  # ten trailers-only answers
    assert grpc_load.grpc_errors(100, 0, 85) == 100
    assert grpc_load.grpc_errors(100, 0, None) == 0  # no check asked for


def test_the_command_posts_the_body_with_grpc_headers(tmp_path: Path) -> None:
    if grpc_load.h2load_path() is None:
        missing_tool("h2load is not installed (apt-get install nghttp2-client)")
    args = grpc_load.command("http://127.0.0.1:1/x/Y", tmp_path / "b", concurrency=32, duration_s=8)
    assert {"-c32", "-m1", "-t1", "-D8"} <= set(args)
    assert args[args.index("-d") + 1] == str(tmp_path / "b")
    headers = [args[i + 1] for i, arg in enumerate(args) if arg == "-H"]
    assert headers == ["content-type: application/grpc", "te: trailers"]
    assert not any(arg.startswith("--warm-up-time") for arg in args)


ANSWER = b"\x0a\x06digits" + b"\x32" + bytes([40]) + bytes(40)  # any fixed-size message


@pytest.fixture
def grpc_server() -> Iterator[str]:
    """A gRPC server: ``/t.S/Ok`` answers :data:`ANSWER`, ``/t.S/Fail`` NOT_FOUND."""

    def ok(request: bytes, context: object) -> bytes:
        return ANSWER

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        raise AssertionError("abort raises")

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=None, response_serializer=None
        )
        for name, fn in (("Ok", ok), ("Fail", fail))
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.e2e
def test_h2load_successes_that_were_grpc_errors_are_counted(
    grpc_server: str, tmp_path: Path
) -> None:
    if grpc_load.h2load_path() is None:
        missing_tool("h2load is not installed (apt-get install nghttp2-client)")
    body = tmp_path / "body"
    body.write_bytes(grpc_load.frame(b"\x0a\x06digits"))
    size = len(grpc_load.frame(ANSWER))
    good = grpc_load.run_h2load(
        f"http://{grpc_server}/t.S/Ok", body, concurrency=2, duration_s=1, ok_answer_bytes=size
    )
    bad = grpc_load.run_h2load(
        f"http://{grpc_server}/t.S/Fail", body, concurrency=2, duration_s=1, ok_answer_bytes=size
    )
    assert good.requests > 0 and good.error_count == 0 and good.rps > 0
    assert 0 < good.p50_ms <= good.p99_ms <= good.max_ms
    # every answer was an HTTP 200, yet none was OK
    assert bad.requests > 0 and bad.errors["status"] == 0
    assert bad.errors["grpc"] == bad.requests and bad.rps == 0
