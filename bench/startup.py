"""``python -m bench.startup``: how long ``python -m service`` takes to answer, by worker count.

Starts the service on a free loopback port, polls ``/healthz`` and ``/readyz`` every 100 ms
from the first moment, and reports the seconds until each first answers 200; ``--workers``
settings alternate run by run (the machine is shared: interleaving spreads its noise).

    python -m bench.startup --models-dir bench/results/models --runs 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.servers import ROOT, free_port

#: Longest wait for readiness, seconds.
TIMEOUT_S = 180.0


def time_to_ready(models_dir: Path, workers: str) -> tuple[float | None, float | None]:
    """Seconds from the start until ``/healthz`` and until ``/readyz`` first answer 200."""
    port = free_port()
    env = {
        **os.environ,
        "IMGCLS_WORKERS": workers,
        "IMGCLS_PORT": str(port),
        "IMGCLS_GRPC_PORT": str(free_port()),  # on, as by default, but on a port of its own
        "IMGCLS_MODELS_DIR": str(models_dir),
    }
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    healthy: float | None = None
    try:
        while time.monotonic() - started < TIMEOUT_S:
            base = f"http://127.0.0.1:{port}"
            try:
                if healthy is None and httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    healthy = time.monotonic() - started
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    return healthy, time.monotonic() - started
            except httpx.HTTPError:
                pass  # not listening yet, or a probe left unanswered
            time.sleep(0.1)
        return healthy, None
    finally:
        process.terminate()
        process.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--workers", nargs="+", default=["1", "auto"])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    for _ in range(args.runs):
        for workers in args.workers:
            healthy, ready = time_to_ready(args.models_dir, workers)
            print(
                f"workers={workers}: /healthz 200 after "
                f"{'-' if healthy is None else f'{healthy:.1f} s'}, /readyz 200 after "
                f"{'-' if ready is None else f'{ready:.1f} s'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
