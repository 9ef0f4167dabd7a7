"""The gRPC load generator: ``h2load`` (nghttp2's HTTP/2 benchmark, C, one epoll thread) sending
one framed gRPC message over h2c, as :mod:`bench.loadgen` does with wrk for HTTP/1.1.

Each of ``concurrency`` connections carries one stream at a time (``-m 1``): a closed loop with
``concurrency`` calls in flight, like wrk's connections. The body file is the gRPC message as it
goes on the wire (a 0 flag byte, the 4-byte big-endian length, the serialized message), sent
with ``content-type: application/grpc`` and ``te: trailers`` to
``/inference.GRPCInferenceService/ModelInfer``.

h2load counts an HTTP 200 as a success even when the gRPC status (the ``grpc-status`` trailer)
is an error, and a gRPC server answers its errors with HTTP 200. So :func:`run_h2load` also
checks the answers' bytes: an OK ModelInfer answer to the same request always has the same
size (``ok_answer_bytes``, from one call with a real client beforehand: :func:`answer_size`),
while an error is a trailers-only answer (no DATA) and a short one is cut. Answers whose DATA
bytes do not add up to ``ok_answer_bytes`` each are counted in ``errors["grpc"]``. Latency
percentiles come from h2load's per-request log (``--log-file``), its summary has none.
"""

from __future__ import annotations

import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.loadgen import LevelResult, LoadgenError, run_pinned

if TYPE_CHECKING:
    import numpy as np

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def h2load_path() -> str | None:
    """Path of the ``h2load`` executable, or None (Debian/Ubuntu: ``apt-get install
    nghttp2-client``)."""
    return shutil.which("h2load")


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), length, the message."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    """The messages of a gRPC DATA stream (uncompressed frames only)."""
    messages, offset = [], 0
    while offset < len(data):
        flag, length = struct.unpack_from(">BI", data, offset)
        if flag != 0:
            raise ValueError("compressed gRPC message")
        messages.append(data[offset + 5 : offset + 5 + length])
        offset += 5 + length
    return messages


def infer_request(
    images: np.ndarray,
    model: str,
    *,
    input_name: str = "images",
    output_name: str = "probabilities",
    version: str = "",
) -> Any:
    """A ``ModelInferRequest`` (tritonclient's ``service_pb2``) of ``images`` as one tensor in
    ``raw_input_contents`` (as tritonclient sends it), asking for ``output_name``."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype

    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add()
    tensor.name = input_name
    tensor.datatype = np_to_triton_dtype(images.dtype)
    tensor.shape.extend(images.shape)
    request.outputs.add().name = output_name
    request.raw_input_contents.append(images.tobytes())
    return request


def infer_body(images: np.ndarray, model: str, **names: str) -> bytes:
    """The framed body h2load sends: :func:`infer_request` on the wire."""
    return frame(infer_request(images, model, **names).SerializeToString())


def call(target: str, body: bytes, timeout_s: float = 30.0) -> tuple[Any, int]:
    """Send the framed ``body`` once with grpcio (a real gRPC client) to ``target``
    (``host:port``): the ``ModelInferResponse`` and its size on the wire (framed, bytes).
    A gRPC error raises ``grpc.RpcError`` with its status."""
    import grpc
    from tritonclient.grpc import service_pb2

    with grpc.insecure_channel(target) as channel:
        method = channel.unary_unary(
            INFER_PATH,
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        (message,) = unframe(body)
        raw = method(message, timeout=timeout_s)
    response = service_pb2.ModelInferResponse()
    response.ParseFromString(raw)
    return response, len(frame(raw))


def client_infer(target: str, body: bytes, timeout_s: float = 30.0) -> Any:
    """The request in the framed ``body`` sent again with Triton's own client
    (``tritonclient.grpc.InferenceServerClient``, raw input contents): its ``InferResult``."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import triton_to_np_dtype

    (message,) = unframe(body)
    request = service_pb2.ModelInferRequest()
    request.ParseFromString(message)
    inputs = []
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        inputs.append(grpcclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype))
        inputs[-1].set_data_from_numpy(array.reshape(tuple(tensor.shape)))
    outputs = [grpcclient.InferRequestedOutput(output.name) for output in request.outputs]
    client = grpcclient.InferenceServerClient(target)
    try:
        return client.infer(
            request.model_name,
            inputs,
            model_version=request.model_version,
            outputs=outputs,
            client_timeout=timeout_s,
        )
    finally:
        client.close()


def output_array(response: Any, name: str = "probabilities") -> np.ndarray:
    """Output ``name`` of a ``ModelInferResponse`` as an array (raw contents or typed)."""
    import numpy as np
    from tritonclient.utils import triton_to_np_dtype

    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        dtype = triton_to_np_dtype(output.datatype)
        if len(response.raw_output_contents) > index:
            values = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            values = np.asarray(output.contents.fp32_contents, dtype=dtype)
        return values.reshape(tuple(output.shape))
    raise KeyError(f"no output {name!r} in the answer")


def command(
    url: str,
    body_path: Path,
    *,
    concurrency: int,
    duration_s: float,
    log_file: Path | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """The h2load command line: ``concurrency`` h2c connections of one stream each, one thread,
    posting ``body_path`` to ``url`` (``http://host:port/<service>/<method>``) with the gRPC
    headers for ``duration_s`` seconds. No ``--warm-up-time``: h2load then counts the warm-up's
    DATA bytes in the total but not its requests, which would hide errors; warm up with a run
    of its own."""
    exe = h2load_path()
    if exe is None:
        raise LoadgenError(
            "h2load is not installed (Debian/Ubuntu: apt-get install nghttp2-client)"
        )
    args = [
        exe,
        "-t1",
        f"-c{concurrency}",
        "-m1",
        f"-D{duration_s:g}",
        f"-T{max(1, round(timeout_s))}",
        "-d",
        str(body_path),
    ]
    for header in GRPC_HEADERS:
        args += ["-H", header]
    if log_file is not None:
        args.append(f"--log-file={log_file}")
    return [*args, url]


def parse_summary(output: str) -> dict[str, float]:
    """The counts of h2load's summary: ``seconds``, ``total``, ``started``, ``done``,
    ``succeeded``, ``failed``, ``errored``, ``timeout``, ``2xx`` ... ``5xx``, ``data_bytes``
    (response DATA, i.e. the gRPC messages with their prefixes) and ``header_bytes``."""
    found: dict[str, float] = {}
    match = re.search(r"finished in ([\d.]+)(m?s)", output)
    if match is None:
        raise LoadgenError(f"h2load printed no summary:\n{output[-2000:]}")
    found["seconds"] = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    match = re.search(r"requests: (.+)", output)
    if match is None:
        raise LoadgenError(f"h2load printed no request counts:\n{output[-2000:]}")
    for count, what in re.findall(r"(\d+) (\w+)", match.group(1)):
        found[what] = int(count)
    match = re.search(r"status codes: (.+)", output)
    if match is not None:
        for count, what in re.findall(r"(\d+) (\dxx)", match.group(1)):
            found[what] = int(count)
    # "traffic: 632.12KB (647290) total, 13.44KB (13764) headers (space savings 96.21%),
    # 372.54KB (381480) data": the exact counts are in parentheses
    match = re.search(
        r"traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) headers.*?\((\d+)\) data", output
    )
    if match is not None:
        found["total_bytes"] = int(match.group(1))
        found["header_bytes"] = int(match.group(2))
        found["data_bytes"] = int(match.group(3))
    return found


def parse_log(path: Path) -> list[tuple[int, int, int]]:
    """h2load's ``--log-file``: (start µs since the epoch, HTTP status or -1, µs to the end of
    the answer) per request."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def percentile(sorted_values: list[int], pct: float) -> float:
    """The nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def grpc_errors(succeeded: int, data_bytes: int, ok_answer_bytes: int | None) -> int:
    """Answers counted a success by h2load (HTTP 2xx) that cannot all have been OK gRPC
    answers: ``succeeded`` minus the whole OK answers their DATA bytes hold (a gRPC error is
    trailers-only: no DATA). A few more bytes than ``succeeded`` answers are fine: a stream
    still open when the time is up counts its DATA but not itself."""
    if ok_answer_bytes is None or ok_answer_bytes <= 0:
        return 0
    return max(0, succeeded - data_bytes // ok_answer_bytes)


def run_h2load(
    url: str,
    body_path: Path,
    *,
    concurrency: int,
    duration_s: int,
    ok_answer_bytes: int | None,
    images_per_request: int = 1,
    cpu: int | None = None,
    timeout_s: float = 30.0,
) -> LevelResult:
    """Run h2load for ``duration_s`` seconds with ``concurrency`` connections (one thread).

    Args:
        url: ``http://host:port/inference.GRPCInferenceService/ModelInfer``.
        body_path: The framed request (:func:`infer_body`).
        concurrency: Connections of one stream each, i.e. calls in flight (closed loop).
        duration_s: Whole seconds of measured load.
        ok_answer_bytes: The framed size of an OK answer (:func:`answer_size`); None: no check.
        images_per_request: Only recorded, to compute images/s.
        cpu: Pin h2load to this CPU (None: let the scheduler decide).
        timeout_s: A connection with no answer for this long is dropped (its calls: errors).

    Errors (``errors``): ``failed`` and ``errored`` are h2load's (failed streams, connection
    errors), ``status`` answers other than HTTP 2xx, ``grpc`` 2xx answers that were not a
    whole OK answer (:func:`grpc_errors`); the rate counts only the rest.
    """
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        log_file = Path(scratch) / "requests.log"
        args = command(
            url,
            body_path,
            concurrency=concurrency,
            duration_s=duration_s,
            log_file=log_file,
            timeout_s=timeout_s,
        )
        output, usage = run_pinned(args, cpu)
        summary = parse_summary(output)
        log = parse_log(log_file) if log_file.exists() else []
    succeeded = int(summary.get("2xx", summary.get("succeeded", 0)))
    done = int(summary.get("done", 0))
    errors = {
        "failed": int(summary.get("failed", 0)),
        "errored": int(summary.get("errored", 0)),
        "timeout": int(summary.get("timeout", 0)),
        "status": max(0, done - succeeded),
        "grpc": grpc_errors(succeeded, int(summary.get("data_bytes", 0)), ok_answer_bytes),
    }
    ok = max(0, succeeded - errors["grpc"])
    seconds = summary["seconds"] or float(duration_s)
    latencies = sorted(us for _, code, us in log if 200 <= code < 300)
    mean_us = sum(latencies) / len(latencies) if latencies else 0.0
    result = LevelResult(
        concurrency=concurrency,
        images_per_request=images_per_request,
        duration_s=round(seconds, 3),
        requests=done,
        rps=round(ok / seconds, 1),
        images_per_s=round(ok * images_per_request / seconds, 1),
        p50_ms=percentile(latencies, 50) / 1000,
        p90_ms=percentile(latencies, 90) / 1000,
        p95_ms=percentile(latencies, 95) / 1000,
        p99_ms=percentile(latencies, 99) / 1000,
        max_ms=(latencies[-1] / 1000) if latencies else 0.0,
        mean_ms=round(mean_us / 1000, 3),
        errors=errors,
        loadgen_cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
    )
    result.extra["data_bytes"] = int(summary.get("data_bytes", 0))
    result.extra["ok_answer_bytes"] = ok_answer_bytes
    result.extra["logged_requests"] = len(log)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.grpc_load check|run ...``: the pieces above for a shell script (the V2
    peers' ``run.sh``): ``check`` makes one call with grpcio and prints a verdict with the OK
    answer's size; ``run`` prints one JSON line, the :class:`LevelResult` of a load run."""
    import argparse
    import json

    import numpy as np

    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="the body once with grpcio and once with tritonclient.grpc; the verdict"
    )
    check.add_argument("target", help="HOST:PORT")
    check.add_argument("body", type=Path, help="framed ModelInferRequest (make_bodies.py)")
    check.add_argument("--expect", type=int, help="the top class a right answer has")
    check.add_argument("--output", default="probabilities")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds")
    run = sub.add_parser("run", help="one h2load run; prints the result as one JSON line")
    run.add_argument("url", help="http://HOST:PORT/inference.GRPCInferenceService/ModelInfer")
    run.add_argument("body", type=Path)
    run.add_argument("--concurrency", type=int, required=True)
    run.add_argument("--duration", type=int, required=True, help="seconds")
    run.add_argument("--ok-bytes", type=int, help="framed size of an OK answer (from check)")
    run.add_argument("--cpu", type=int, help="pin h2load to this CPU")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            body = args.body.read_bytes()
            response, size = call(args.target, body, args.timeout)
            probabilities = output_array(response, args.output)
            again = client_infer(args.target, body, args.timeout).as_numpy(args.output)
            if again is None or again.shape != probabilities.shape:
                raise ValueError(f"tritonclient.grpc's answer differs: {again!r}")
            if not np.allclose(again, probabilities, atol=1e-5):
                raise ValueError(f"tritonclient.grpc's answer differs: {again!r}")
        except Exception as exc:
            code, details = getattr(exc, "code", None), getattr(exc, "details", None)
            why = f"{code().name}: {details()}" if code and details else str(exc)
            print(f"error: {type(exc).__name__}: {' '.join(why.split())[:300]}")
            return 2
        top = int(probabilities[0].argmax())
        print(
            f"top class {top} (p={probabilities[0][top]:.4f}), gRPC answer {size} B "
            "(grpcio and tritonclient.grpc agree)"
        )
        return 0 if args.expect is None or top == args.expect else 1
    result = run_h2load(
        args.url,
        args.body,
        concurrency=args.concurrency,
        duration_s=args.duration,
        ok_answer_bytes=args.ok_bytes,
        cpu=args.cpu,
    )
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
