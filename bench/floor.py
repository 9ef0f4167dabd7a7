"""The Python floor of a V2 infer request: echo servers beside the service, same request, same run.

Issue 23 asks where the service's CPU per V2 request goes, compared with "an echo route on the
same server and with Triton's". ``python -m bench.floor`` starts, side by side, one process each:

* ``echo-asgi``: uvicorn (uvloop, httptools, no access log) with a raw ASGI app that reads the
  body and answers a constant V2 answer (:mod:`bench.echo_apps`): no framework, no model;
* ``echo-fastapi``: the same with a FastAPI route (``await request.body()``);
* ``service``: ``python -m service`` with ``IMGCLS_WORKERS=1`` (its default runtime), the
  real answer (checked: the expected class before the load).

and loads each with wrk (one thread, pinned to the last CPU), ``--concurrency`` connections,
the V2 binary and JSON bodies of one digit (tritonclient's helpers, as ``bench.grpc``), rotating
the order every repeat. Per point: req/s and the server's CPU per answered request (its whole
process tree, ``/proc``); the median of ``--repeats`` is reported. The echo rows are the floor
no Python server on uvicorn goes below on this machine; the service's row less the floor is
what the service adds, model call included.

    python -m bench.floor                      # ~3 min
    python -m bench.floor --models-dir /tmp/v2work/models --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.digits import digit_tensor
from bench.grpc import JSON_CT, http_probabilities, v2_bodies
from bench.models import DIGITS, ensure_digits
from bench.servers import ROOT, ServerProcess, spawn, wait_ready

DEFAULT_OUT = ROOT / "bench" / "results" / "floor"
SERVERS = ("echo-asgi", "echo-fastapi", "service")
BODIES = ("binary", "json")


@dataclass
class Point:
    """One load run: a server and a body, its req/s, the server's CPU per answered request
    (µs, its whole process tree), wrk's latencies (ms) and error count."""

    server: str
    body: str
    repeat: int
    rps: float
    cpu_us: float
    p50_ms: float
    p99_ms: float
    errors: int


def start(models_dir: Path, out: Path) -> dict[str, ServerProcess]:
    """The three servers, started together, ready."""
    pending = [
        spawn(
            f"echo-{app}",
            "bench.echo_apps",
            out,
            ready_path="/healthz",
            env={"BENCH_ECHO_APP": app},
        )
        for app in ("asgi", "fastapi")
    ]
    env = {"IMGCLS_MODELS_DIR": str(models_dir), "IMGCLS_MODEL_NAME": DIGITS, "IMGCLS_WORKERS": "1"}
    pending.append(spawn("service", "service", out, ready_path="/readyz", env=env))
    return {server.name: server for server in wait_ready(pending)}


def scripts(out: Path) -> tuple[dict[str, Path], dict[str, tuple[bytes, dict[str, str]]]]:
    """The wrk scripts of the two bodies, and each body with its headers."""
    bodies = v2_bodies(digit_tensor())
    requests = {
        "binary": (bodies.binary, bodies.binary_headers()),
        "json": (bodies.json, {"Content-Type": JSON_CT}),
    }
    paths = {
        name: loadgen.write_body_script(out, body, f"floor-{name}", headers)
        for name, (body, headers) in requests.items()
    }
    return paths, requests


def load(server: ServerProcess, script: Path, concurrency: int, seconds: int) -> Point:
    """``seconds`` of wrk with ``concurrency`` connections on ``script``'s body, pinned to the
    last CPU, and the server's CPU around it."""
    url = server.url + f"/v2/models/{DIGITS}/infer"
    before = server.cpu_seconds()
    level = loadgen.run_wrk(
        url, script, concurrency=concurrency, duration_s=seconds, cpu=loadgen.wrk_cpu()
    )
    answered = level.rps * level.duration_s
    cpu = server.cpu_seconds() - before
    return Point(
        server.name,
        script.stem.removeprefix("floor-"),
        0,
        level.rps,
        round(1e6 * cpu / max(answered, 1), 1),
        level.p50_ms,
        level.p99_ms,
        level.error_count,
    )


def table(points: list[Point], repeats: int) -> str:
    """The Markdown table: per body and server, the medians, and the CPU over the raw echo."""
    lines = [
        "| body | server | req/s (median) | server CPU µs/req (median) | p50 / p99 ms | "
        "CPU over echo-asgi | all runs req/s |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for body in BODIES:
        floor = None
        for name in SERVERS:
            mine = [p for p in points if p.server == name and p.body == body]
            if not mine:
                continue
            cpu = statistics.median(p.cpu_us for p in mine)
            floor = cpu if name == "echo-asgi" else floor
            over = f"+{cpu - floor:.0f}" if floor is not None and name != "echo-asgi" else "-"
            lines.append(
                f"| {body} | {name} | {statistics.median(p.rps for p in mine):,.0f} | {cpu:.0f} "
                f"| {statistics.median(p.p50_ms for p in mine):.1f} / "
                f"{statistics.median(p.p99_ms for p in mine):.1f} | {over} | "
                + ", ".join(f"{p.rps:,.0f}" for p in mine)
                + " |"
            )
    return "\n".join(lines) + f"\n\n(median of {repeats} repeats)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "models")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = ensure_digits(args.cache, args.models_dir)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    servers = start(models_dir, args.out)
    points: list[Point] = []
    try:
        paths, requests = scripts(args.out)
        url = servers["service"].url + f"/v2/models/{DIGITS}/infer"
        for kind, (payload, headers) in requests.items():
            top = int(http_probabilities(url, payload, headers).argmax())
            if top != 7:
                raise RuntimeError(f"the service answered class {top} to the digit 7 ({kind})")
        for server in servers.values():  # warm every path once
            for path in paths.values():
                load(server, path, args.concurrency, 2)
        for repeat in range(args.repeats):
            order = [*SERVERS[repeat % 3 :], *SERVERS[: repeat % 3]]
            for body in BODIES:
                for name in order:
                    point = load(servers[name], paths[body], args.concurrency, args.seconds)
                    point.repeat = repeat + 1
                    points.append(point)
                    print(json.dumps(point.__dict__), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report = (
        f"`python -m bench.floor --repeats {args.repeats}`, {started} UTC, "
        f"c={args.concurrency}, {args.seconds} s per point\n\n" + table(points, args.repeats)
    )
    (args.out / "floor.md").write_text(report)
    raw: list[dict[str, Any]] = [p.__dict__ for p in points]
    (args.out / "floor.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
