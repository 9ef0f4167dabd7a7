"""Smoke test of ``python -m bench.input_pipeline --quick`` (issue 12's benchmark).

Nothing is timed: the test checks that every part produced well-formed numbers, and that peak
memory does not grow with the dataset: one epoch of the real CLI on 800 images may take at most
:data:`RSS_BOUND_MB` more resident memory than on 200 (streamed: the difference measured is a few
MB; a loader holding every image would add the images themselves plus TensorFlow's copy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
RSS_BOUND_MB = 150.0

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_quick_run_reports_every_figure_and_flat_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.input_pipeline", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [r["kind"] for r in records]
    assert kinds == ["machine", "rss", "rss", "pipeline", "train_step", "pipeline", "train_step"]

    machine = records[0]
    assert machine["quick"] is True and machine["cpus"] >= 1 and len(machine["load"]) == 3

    small, large = records[1], records[2]
    assert (small["images"], large["images"]) == (200, 800)
    for record in (small, large):
        assert record["peak_rss_mb"] > 100  # TensorFlow alone is more than that
        assert record["seconds"] > 0 and "training/train.py --data" in record["command"]
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < RSS_BOUND_MB

    rates = {(r["kind"], r["arch"]): r for r in records[3:]}
    assert rates["pipeline", "simple"]["images"] == 300  # every generated file, decoded once
    assert rates["pipeline", "vgg16"]["images"] == 16
    for record in rates.values():
        assert record["images_per_s"] > 0 and record["seconds"] > 0
    assert rates["train_step", "simple"]["input_shape"] == [28, 28, 1]
    assert all(rates["train_step", arch]["device"] for arch in ("simple", "vgg16"))
    assert "| simple 28x28x1 |" in done.stderr and "| 800 | 32 |" in done.stderr
