"""``python -m service.rollout.demo`` (``make loop-demo``): the loop on this machine in a few
minutes, printing each decision.

In a temporary repository: train version 1, serve it with a ``rollout:`` section (intervals
scaled down to seconds), start the controller and a few clients; then publish a worse version
(one epoch from scratch: the gate refuses it, nothing is rolled out) and a good one
(``--init-from 1``: blessed, stepped up and promoted). Only the project's own commands run:
``training/train.py``, ``python -m service``, ``python -m service.rollout``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.rollout import journal

ROOT = Path(__file__).resolve().parents[2]


def serving_yaml(rollout: str) -> str:
    return f"""\
# written by the loop demo
models:
  digits:
    labels: {{stable: 1}}
    rollout: {rollout}
"""


def say(text: str, at: float | None = None) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.localtime(at))}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python(
    *args: str, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )


def train(models: Path, runs: Path, *flags: str) -> str:
    """Run train.py; its one-line result."""
    done = subprocess.run(
        [
            sys.executable,
            "training/train.py",
            "--models-dir",
            str(models),
            "--run-dir",
            str(runs / uuid.uuid4().hex[:8]),
            "--verbose",
            "0",
            *flags,
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"train.py failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url + "/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"the service at {url} was not ready in {timeout_s:.0f} s")


class Clients:
    """Threads posting digits to /predict; counts answers per version."""

    def __init__(self, url: str, images: list[bytes], threads: int = 2) -> None:
        self.url = url
        self.images = images
        self.by_version: dict[str, int] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]

    def _loop(self, index: int) -> None:
        sent = index
        while not self._stop.is_set():
            image = self.images[sent % len(self.images)]
            sent += 1
            request = urllib.request.Request(
                self.url + "/predict", data=image, headers={"Content-Type": "image/png"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    version = str(json.loads(response.read())["model"]["version"])
                with self._lock:
                    self.by_version[version] = self.by_version.get(version, 0) + 1
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                with self._lock:
                    self.failed += 1

    def take(self) -> tuple[dict[str, int], int]:
        """The counts since the last take."""
        with self._lock:
            counts, failed = dict(self.by_version), self.failed
            self.by_version, self.failed = {}, 0
        return counts, failed

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def digit_images(count: int = 32) -> list[bytes]:
    """The first ``count`` of scikit-learn's handwritten digits as 28x28 PNGs, light ink on
    black, as the digits model was trained on."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pngs = []
    for small in load_digits().images[:count]:
        pixels = np.clip(small * (255.0 / 16.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((28, 28), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def follow(models: Path, seen: int) -> Iterator[dict[str, Any]]:
    """rollout.log lines after the first ``seen``."""
    yield from journal.entries(journal.journal_path(models))[seen:]


def describe(entry: dict[str, Any]) -> str:
    def verdict(check: dict[str, Any]) -> str:
        return {True: "ok", False: "FAIL"}.get(check["passed"], "not judged")

    shown = ", ".join(
        f"{check['name']}={check['value']} ({verdict(check)})"
        for check in entry.get("checks") or []
    )
    canary = (
        f"canary {entry['canary']} at {entry['weight']}" if entry.get("canary") else "no canary"
    )
    return (
        f"{str(entry['decision']).upper():8} stable {entry['stable']}, {canary}"
        f"{'; ' + shown if shown else ''}"
    )


def watch(models: Path, clients: Clients, seen: int, until: set[str], timeout_s: float) -> None:
    """Print each decision after the first ``seen`` and the answers per version since the
    previous one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in follow(models, seen):
            seen += 1
            counts, failed = clients.take()
            since = f"answers since the last line: {counts}, failed {failed}"
            say(f"{describe(entry)}\n{' ' * 11}{since}", at=float(entry["time"]))
            if entry["decision"] in until:
                return
        time.sleep(0.3)
    say(f"no {'/'.join(sorted(until))} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.rollout.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--interval-s", type=float, default=5, help="rollout.interval_s (5)")
    parser.add_argument("--step-weight", type=float, default=0.2, help="rollout.step_weight (0.2)")
    parser.add_argument("--max-weight", type=float, default=0.6, help="rollout.max_weight (0.6)")
    parser.add_argument("--min-requests", type=int, default=10, help="rollout.min_requests (10)")
    args = parser.parse_args(argv)
    rollout = (
        f"{{step_weight: {args.step_weight}, max_weight: {args.max_weight}, "
        f"interval_s: {args.interval_s:g}, threshold: 2, min_requests: {args.min_requests}}}"
    )
    steps = math.ceil(args.max_weight / args.step_weight - 1e-9)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imgcls-loop-demo-"))
    models, runs = workdir / "models", workdir / "runs"
    models.mkdir(parents=True, exist_ok=True)
    say(f"working in {workdir}")
    say("training version 1 (default settings, about half a minute on 2 cores)")
    say(train(models, runs))
    (models / "serving.yaml").write_text(serving_yaml(rollout))
    say(f"serving.yaml: stable 1, rollout {rollout}")

    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    service = python(
        "-m",
        "service",
        "--port",
        str(port),
        "--models-dir",
        str(models),
        log=workdir / "service.log",
        # gRPC on a free port too: the default 8001 may be taken by a service already running.
        env={"IMGCLS_GRPC_PORT": str(free_port())},
    )
    controller = None
    try:
        wait_ready(url)
        controller = python(
            "-m",
            "service.rollout",
            "--models-dir",
            str(models),
            "--scrape",
            url,
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "127.0.0.1",
            "--tick-s",
            "0.5",
            log=workdir / "rollout.out",
        )
        say(f"service on {url}, controller metrics on http://127.0.0.1:{metrics_port}/metrics")
        with Clients(url, digit_images()) as clients:
            say("BAD: one epoch from scratch, clearly worse than version 1")
            say(train(models, runs, "--epochs", "1"))
            time.sleep(15)
            counts, failed = clients.take()
            decisions = journal.entries(journal.journal_path(models))
            say(
                f"after 15 s: {len(decisions)} rollout decisions; answers by version {counts}, "
                f"failed {failed}: the unblessed version takes no unpinned traffic"
            )
            seen = len(journal.entries(journal.journal_path(models)))
            say("GOOD: --init-from 1, one epoch at a low learning rate")
            say(
                train(
                    models, runs, "--init-from", "1", "--epochs", "1", "--learning-rate", "0.0001"
                )
            )
            trained = time.time()
            # start, the steps, promote and retire, each an interval, and slack for a busy box
            timeout_s = (steps + 3) * args.interval_s + 120
            watch(models, clients, seen, {"retire", "rollback"}, timeout_s=timeout_s)
        promoted = [
            entry
            for entry in journal.entries(journal.journal_path(models))
            if entry["decision"] == "promote"
        ]
        if promoted:
            say(f"train.py finished -> promotion: {float(promoted[0]['time']) - trained:.1f} s")
        say(f"serving.yaml now:\n{(models / 'serving.yaml').read_text()}")
        say(f"every decision: {journal.journal_path(models)}")
    finally:
        for process in (controller, service):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
