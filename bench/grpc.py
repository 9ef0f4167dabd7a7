"""``python -m bench.grpc``: the same V2 inference over HTTP JSON, HTTP binary and gRPC.

One service (``python -m service`` with its defaults, digits model; HTTP and gRPC in the same
processes, every worker serving both) and one request: the digit of :mod:`bench.digits` as the
Open Inference Protocol's ``images`` tensor, UINT8 [1, 28, 28, 3], sent three ways:

* ``V2 HTTP JSON``: ``POST /v2/models/digits/infer``, the tensor as a JSON list (wrk);
* ``V2 HTTP binary``: the same route with the binary tensor extension (raw bytes after the
  JSON header, ``Inference-Header-Content-Length``; output asked for as binary) (wrk);
* ``V2 gRPC``: ``inference.GRPCInferenceService/ModelInfer``, the tensor in
  ``raw_input_contents`` (h2load over h2c, :mod:`bench.grpc_load`).

The bodies are made by tritonclient's own helpers (``generate_request_body`` for HTTP, its
``service_pb2`` messages for gRPC). Before measuring, each transport must answer the same
probabilities, and a real gRPC client (``tritonclient.grpc``) must too, before and after the
load. h2load counts an HTTP 200 as success even when the gRPC status is an error: each run
checks the answers' DATA bytes against the size of an OK answer, and the server's own
``imgcls_requests_total`` by code around each run.

Every point (c=32, c=64) runs on the three transports back to back, in an order rotating from
point to point and repeat to repeat, ``--repeats`` times; the median rate is kept. Per run:
req/s, p50/p99 latency, the server's CPU per request (all its processes), the mean batch, the
load generator's own CPU, and what the rest of the machine used meanwhile.

Writes ``bench/results/grpc/results.json`` and ``summary.md`` (also printed).

    python -m bench.grpc --repeats 3 --duration 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import grpc_load, loadgen
from bench.digits import digit_tensor
from bench.harness import batch_counters, median_level, stop_all
from bench.loadgen import LevelResult
from bench.machine import machine_info
from bench.models import DIGITS, ensure_digits
from bench.servers import (
    ROOT,
    ServerProcess,
    box_busy_cpu_s,
    fetch_text,
    free_port,
    service_spec,
    wait_ready,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "grpc"
#: The issue's points: 32 and 64 connections (gRPC: one stream each).
CONCURRENCIES = (32, 64)
JSON_CT = "application/json"
BINARY_CT = "application/octet-stream"


@dataclass(frozen=True)
class Transport:
    """One way of sending the request: a run name, a title, and one load run."""

    name: str
    title: str
    tool: str
    #: (concurrency, seconds) -> the load generator's result
    load: Callable[[int, int], LevelResult]


@dataclass(frozen=True)
class Bodies:
    """The same request three ways, and what a correct answer holds."""

    json: bytes
    binary: bytes
    binary_header_length: int
    grpc: bytes  # framed

    def binary_headers(self) -> dict[str, str]:
        """The headers the binary body goes with (the JSON header's length in bytes)."""
        return {
            "Content-Type": BINARY_CT,
            "Inference-Header-Content-Length": str(self.binary_header_length),
        }


def v2_bodies(images: np.ndarray, model: str = DIGITS) -> Bodies:
    """The request bodies, made with tritonclient's own helpers."""
    import tritonclient.http as httpclient

    def http_body(binary: bool) -> tuple[bytes, int | None]:
        tensor = httpclient.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        output = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        body, length = httpclient.InferenceServerClient.generate_request_body(
            [tensor], outputs=[output]
        )
        return (body if isinstance(body, bytes) else body.encode()), length

    json_body, _ = http_body(False)
    binary_body, header_length = http_body(True)
    assert header_length is not None
    return Bodies(json_body, binary_body, header_length, grpc_load.infer_body(images, model))


def http_probabilities(url: str, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """POST a V2 infer body; the ``probabilities`` output (JSON or binary answer)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        cut = response.headers.get("Inference-Header-Content-Length")
    head = json.loads(raw[: int(cut)] if cut else raw)
    output = next(o for o in head["outputs"] if o["name"] == "probabilities")
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    else:
        size = output["parameters"]["binary_data_size"]
        values = np.frombuffer(raw[int(cut) : int(cut) + size], dtype="<f4")
    return values.reshape(output["shape"])


def check_answers(
    infer_url: str, grpc_target: str, bodies: Bodies, *, exact: bool = True
) -> dict[str, Any]:
    """One call per transport (and one with tritonclient.grpc): they must give the same
    probabilities (``exact=False``: the same top class only, for a gRPC server that is not
    the service). Returns the top class and score and the OK gRPC answer's size on the wire."""
    answers = {
        "v2_json": http_probabilities(infer_url, bodies.json, {"Content-Type": JSON_CT}),
        "v2_binary": http_probabilities(infer_url, bodies.binary, bodies.binary_headers()),
        "tritonclient.grpc": grpc_load.client_infer(grpc_target, bodies.grpc).as_numpy(
            "probabilities"
        ),
    }
    response, ok_bytes = grpc_load.call(grpc_target, bodies.grpc)
    answers["grpc"] = grpc_load.output_array(response)
    reference = answers["v2_json"]
    top = int(reference[0].argmax())
    for name, probabilities in answers.items():
        same = probabilities.shape == reference.shape and (
            np.allclose(probabilities, reference, atol=1e-5)
            if exact
            else int(probabilities[0].argmax()) == top
        )
        if not same:
            raise RuntimeError(f"{name} answered {probabilities!r}, V2 JSON {reference!r}")
    return {"top_class": top, "top_score": float(reference[0][top]), "ok_grpc_bytes": ok_bytes}


_SAMPLE = re.compile(r"^imgcls_requests_total\{([^}]*)\}\s+(\S+)$", re.MULTILINE)


def requests_by_code(server: ServerProcess) -> dict[tuple[str, str], float]:
    """``imgcls_requests_total`` from /metrics: (route, code) -> count."""
    counts: dict[tuple[str, str], float] = {}
    for labels, value in _SAMPLE.findall(fetch_text(server.url + "/metrics")):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = (found.get("route", ""), found.get("code", ""))
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def is_ok_code(code: str) -> bool:
    """An HTTP 2xx or gRPC OK (``OK`` or ``0``) ``code`` label."""
    return code.startswith("2") or code.upper() in ("OK", "0")


def measure(
    server: ServerProcess, transport: Transport, concurrency: int, seconds: int
) -> LevelResult:
    """One load run, with the server's CPU, the rest of the machine's, the mean batch and the
    server's own answer counts (``extra["server_ok"]``, ``extra["server_not_ok"]``) around it."""
    before_cpu, before_box = server.cpu_seconds(), box_busy_cpu_s()
    before_batches, before_codes = batch_counters(server), requests_by_code(server)
    result = transport.load(concurrency, seconds)
    box = box_busy_cpu_s() - before_box
    result.server_cpu_s = round(server.cpu_seconds() - before_cpu, 2)
    after_batches, after_codes = batch_counters(server), requests_by_code(server)
    other = max(0.0, box - result.server_cpu_s - result.loadgen_cpu_s) / result.duration_s
    result.extra["other_load_cores"] = round(other, 2)
    if before_batches and after_batches and after_batches[1] > before_batches[1]:
        result.mean_batch_size = round(
            (after_batches[0] - before_batches[0]) / (after_batches[1] - before_batches[1]), 2
        )
    delta = {key: after_codes[key] - before_codes.get(key, 0.0) for key in after_codes}
    result.extra["server_ok"] = int(sum(v for (_, code), v in delta.items() if is_ok_code(code)))
    # h2load drops the calls still in flight when its time is up: the server counts those (at
    # most one per connection) CANCELLED; they are the end of the run, not the server's errors
    cut = int(sum(v for (_, code), v in delta.items() if code.upper() == "CANCELLED"))
    result.extra["server_cancelled"] = cut
    not_ok = {
        f"{route} {code}": int(v)
        for (route, code), v in delta.items()
        if v and not is_ok_code(code) and code.upper() != "CANCELLED"
    }
    if cut > concurrency:
        not_ok["CANCELLED beyond the calls in flight at the end"] = cut - concurrency
    result.extra["server_not_ok"] = not_ok
    print(
        f"  {transport.title:<16} c={concurrency:<3} {result.rps:8.1f} req/s  p50 "
        f"{result.p50_ms:6.2f} p99 {result.p99_ms:6.2f} ms  err {result.error_count}"
        f"{' server ' + str(not_ok) if not_ok else ''}  batch {result.mean_batch_size or 0:5.1f}  "
        f"cores: server {result.server_cpu_s / result.duration_s:.2f} "
        f"{transport.tool} {result.loadgen_cpu_s / result.duration_s:.2f} other {other:.2f}",
        flush=True,
    )
    return result


def interleaved(
    server: ServerProcess, transports: list[Transport], seconds: int, repeats: int
) -> dict[str, list[LevelResult]]:
    """Every point on every transport back to back, rotating the order; median of repeats."""
    runs: dict[tuple[str, int], list[LevelResult]] = {}
    for repeat in range(repeats):
        print(f"repeat {repeat + 1} of {repeats}", flush=True)
        for index, concurrency in enumerate(CONCURRENCIES):
            shift = (index + repeat) % len(transports)
            for transport in transports[shift:] + transports[:shift]:
                level = measure(server, transport, concurrency, seconds)
                runs.setdefault((transport.name, concurrency), []).append(level)
    return {t.name: [median_level(runs[(t.name, c)]) for c in CONCURRENCIES] for t in transports}


def transports(
    server: ServerProcess,
    grpc_url: str,
    bodies: Bodies,
    ok_grpc_bytes: int,
    folder: Path,
    cpu: int | None,
) -> list[Transport]:
    """The three transports, their bodies written under ``folder``."""
    infer_url = server.url + f"/v2/models/{DIGITS}/infer"
    json_script = loadgen.write_body_script(
        folder, bodies.json, "v2-json", {"Content-Type": JSON_CT}
    )
    binary_script = loadgen.write_body_script(
        folder, bodies.binary, "v2-binary", bodies.binary_headers()
    )
    grpc_body = folder / "grpc.body"
    grpc_body.write_bytes(bodies.grpc)

    def wrk(script: Path) -> Callable[[int, int], LevelResult]:
        return lambda c, s: loadgen.run_wrk(infer_url, script, concurrency=c, duration_s=s, cpu=cpu)

    def h2load(c: int, s: int) -> LevelResult:
        return grpc_load.run_h2load(
            grpc_url, grpc_body, concurrency=c, duration_s=s, ok_answer_bytes=ok_grpc_bytes, cpu=cpu
        )

    return [
        Transport("v2_json", "V2 HTTP JSON", "wrk", wrk(json_script)),
        Transport("v2_binary", "V2 HTTP binary", "wrk", wrk(binary_script)),
        Transport("grpc", "V2 gRPC", "h2load", h2load),
    ]


def warm(transport: Transport) -> None:
    """Two seconds of load, discarded; any error stops the run (measure no failures)."""
    result = transport.load(8, 2)
    if result.error_count or not result.requests:
        raise RuntimeError(
            f"{transport.title}: warm-up errors {result.errors} of {result.requests}"
        )


def cpu_ms(result: LevelResult) -> float | None:
    """Server CPU (all its processes) per answered request, ms."""
    answered = result.rps * result.duration_s
    if result.server_cpu_s is None or not answered:
        return None
    return result.server_cpu_s * 1000 / answered


def summary(
    levels: dict[str, list[LevelResult]], titles: dict[str, str], meta: dict[str, Any]
) -> str:
    """The Markdown table: one row per transport, each point's median run (req/s, latency,
    server CPU per request, mean batch, errors), and the rate over V2 HTTP binary's."""
    lines = [
        f"`{meta['command']}`; {meta['started']} UTC, {meta['seconds']:.0f} s; main at "
        f"`{meta['commit']}`; {meta['cpus']} CPUs; model `{DIGITS}` (top class "
        f"{meta['check']['top_class']}, p={meta['check']['top_score']:.4f} on every transport); "
        f"{meta['repeats']} repeats of {meta['duration']} s, median; the load generator pinned "
        f"to CPU {meta['loadgen_cpu']}.",
        "",
        "| transport | c | req/s (x binary) | p50 / p99 ms | server CPU ms/req | mean batch "
        "| errors (client / server) | load generator CPU ms/req | other load, cores "
        "| all runs req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index, concurrency in enumerate(CONCURRENCIES):
        base = levels["v2_binary"][index].rps
        for name, runs in levels.items():
            r = runs[index]
            ratio = r.rps / base if base else 0.0
            cpu = cpu_ms(r)
            answered = r.rps * r.duration_s
            gen = r.loadgen_cpu_s * 1000 / answered if answered else 0.0
            not_ok = sum(dict(r.extra.get("server_not_ok", {})).values())  # type: ignore[call-overload]
            all_runs = ", ".join(f"{v:,.0f}" for v in r.extra.get("repeats_rps", [r.rps]))  # type: ignore[attr-defined]
            lines.append(
                f"| {titles[name]} | {concurrency} | {r.rps:,.0f} ({ratio:.2f}) | "
                f"{r.p50_ms:.1f} / {r.p99_ms:.1f} | {'-' if cpu is None else f'{cpu:.2f}'} | "
                f"{r.mean_batch_size or '-'} | {r.error_count} / {not_ok} | {gen:.3f} | "
                f"{r.extra.get('other_load_cores', '-')} | {all_runs} |"
            )
    lines += [
        "",
        "Errors: client = the load generator's (wrk: socket errors and non-2xx; h2load: failed "
        "streams, non-2xx and HTTP 200s that were not a whole OK gRPC answer); server = answers "
        "`imgcls_requests_total` counted with another code than 2xx/OK during the run, apart "
        "from the calls h2load cuts when its time is up (CANCELLED, at most one per connection). "
        "Server CPU: every process of the service (utime + stime) over the run / OK answers.",
    ]
    return "\n".join(lines)


def commit() -> str:
    """The checkout's short commit, with ``+`` when it has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("+" if dirty else "") if head else "?"


def versions() -> dict[str, str | None]:
    """The gRPC stack's versions and h2load's."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("grpcio", "protobuf", "tritonclient"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    exe = grpc_load.h2load_path()
    if exe:
        found["h2load"] = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (median kept)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--grpc-target",
        help="HOST:PORT of the gRPC server to measure instead of the service's own (development)",
    )
    args = parser.parse_args(argv)
    if loadgen.wrk_path() is None or grpc_load.h2load_path() is None:
        raise SystemExit("error: wrk and h2load are needed (apt-get install wrk nghttp2-client)")
    args.out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), time.monotonic()
    models_dir = ensure_digits(args.cache, args.models_dir)
    grpc_port = free_port()
    target = args.grpc_target or f"127.0.0.1:{grpc_port}"
    images = digit_tensor()
    bodies = v2_bodies(images)
    cpu = loadgen.wrk_cpu()
    server = wait_ready(
        [service_spec(models_dir, DIGITS, args.out, "service", grpc_port=grpc_port)]
    )[0]
    try:
        infer_url = server.url + f"/v2/models/{DIGITS}/infer"
        exact = args.grpc_target is None
        check = check_answers(infer_url, target, bodies, exact=exact)
        print(
            f"answers agree: top class {check['top_class']}; "
            f"OK gRPC answer {check['ok_grpc_bytes']} B"
        )
        chosen = transports(
            server,
            f"http://{target}{grpc_load.INFER_PATH}",
            bodies,
            check["ok_grpc_bytes"],
            args.out / "bodies",
            cpu,
        )
        for transport in chosen:
            warm(transport)
        levels = interleaved(server, chosen, args.duration, args.repeats)
        check_after = check_answers(infer_url, target, bodies, exact=exact)
    finally:
        stop_all([server])
    meta = {
        "command": "python -m bench.grpc"
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
        + (f" --duration {args.duration}" if args.duration != 8 else ""),
        "started": started,
        "seconds": time.monotonic() - t0,
        "commit": commit(),
        "cpus": len(os.sched_getaffinity(0)),
        "machine": machine_info(),
        "versions": versions(),
        "repeats": args.repeats,
        "duration": args.duration,
        "loadgen_cpu": cpu,
        "check": check,
        "check_after": check_after,
        "grpc_target": target,
    }
    titles = {t.name: t.title for t in chosen}
    table = summary(levels, titles, meta)
    (args.out / "summary.md").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "levels": {n: [vars(x) for x in r] for n, r in levels.items()}},
            default=str,
        )
        + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
