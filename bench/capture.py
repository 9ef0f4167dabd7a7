"""``python -m bench.capture``: what capture costs on ``/predict``, measured interleaved.

Three servers on the same digits model, each with the service's defaults, measured at the same
points back to back in rotating order (the machine is shared: interleaving spreads its noise):

* ``before``: the service from another checkout (``--before DIR``, e.g. the tree before capture
  existed: ``git worktree add /tmp/before <commit>``): what a user ran until now;
* ``capture off``: this tree, ``IMGCLS_CAPTURE_RATE=0`` (the default);
* ``capture 1``: this tree, every input stored (``IMGCLS_CAPTURE_RATE=1``, into a temporary
  folder under ``--out``).

Each point runs ``--repeats`` times and keeps the median rate; the summary gives each server's
rate as a ratio to ``before`` (or to ``capture off`` without ``--before``).

    python -m bench.capture --before /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench import loadgen
from bench.digits import digit_png, write_scripts
from bench.harness import Runner, stop_all
from bench.models import DIGITS, ensure_digits
from bench.servers import ROOT, ServerProcess, service_spec, spawn, wait_ready
from service.feedback.samples import SampleReader, model_folder

DEFAULT_OUT = ROOT / "bench" / "results" / "capture"
#: The issue's points: digits at 32 and 64 connections.
CONCURRENCIES = (32, 64)


def start(models_dir: Path, out: Path, before: Path | None) -> dict[str, ServerProcess]:
    """The servers of the comparison, ready (name -> server)."""
    captured = out / "captured"
    shutil.rmtree(captured, ignore_errors=True)
    specs = []
    if before is not None:
        env = {"IMGCLS_MODELS_DIR": str(models_dir), "IMGCLS_MODEL_NAME": DIGITS}
        specs.append(spawn("before", "service", out, ready_path="/readyz", env=env, cwd=before))
    specs.append(service_spec(models_dir, DIGITS, out, "capture off"))
    specs.append(
        service_spec(
            models_dir, DIGITS, out, "capture 1", capture_rate=1, capture_dir=str(captured)
        )
    )
    servers = wait_ready(specs)
    return {server.name: server for server in servers}


def summary(levels: dict[str, list[loadgen.LevelResult]], reference: str) -> str:
    """A Markdown table: req/s per server and point with its ratio to ``reference``, and the
    server's CPU per request in that run (ms; the machine's noise moves it far less)."""
    names = list(levels)
    lines = [
        "| server | "
        + " | ".join(f"c={c} req/s (x {reference}) | c={c} server ms/req" for c in CONCURRENCIES)
        + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in CONCURRENCIES) + " |",
    ]
    for name in names:
        cells = []
        for result, base in zip(levels[name], levels[reference], strict=True):
            ratio = result.rps / base.rps if base.rps else 0.0
            cells.append(f"{result.rps:,.0f} ({ratio:.3f}) | {cpu_ms_per_request(result)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_ms_per_request(result: loadgen.LevelResult) -> str:
    """Server CPU (all its processes) per answered request, ms; '-' when unmeasured."""
    if result.server_cpu_s is None or not result.requests:
        return "-"
    return f"{result.server_cpu_s * 1000 / result.requests:.2f}"


def stored_samples(capture_dir: Path, model: str) -> int:
    """How many samples ``model``'s capture folder holds."""
    return len(SampleReader(model_folder(capture_dir, model)).ids())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__)
    parser.add_argument("--before", type=Path, help="checkout of the service to compare with")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (median kept)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per run")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if loadgen.wrk_path() is None:
        raise SystemExit("error: wrk is not installed (apt-get install wrk)")
    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = ensure_digits(args.cache, args.models_dir)
    runner = Runner(write_scripts(args.out / "scripts", digit_png(), (1,)), loadgen.wrk_cpu())
    servers = start(models_dir, args.out, args.before)
    try:
        levels = runner.interleaved(
            servers, [(c, 1) for c in CONCURRENCIES], args.duration, repeats=args.repeats
        )
        stored = stored_samples(args.out / "captured", DIGITS)
    finally:
        stop_all(servers.values())
    reference = "before" if args.before is not None else "capture off"
    table = summary(levels, reference)
    (args.out / "summary.md").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {name: [vars(level) for level in runs] for name, runs in levels.items()}, default=str
        )
        + "\n"
    )
    print(table)
    print(f"\ncaptured samples on disk: {stored}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
