"""``bench.handoff``: its framing, and a short run of both layouts without a model.

The measurement itself (``python -m bench.handoff --model ...``, a few minutes) is not repeated
here; this only checks that requests go round both layouts (ten probabilities back for each)
and that the figures add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import handoff

ROOT = Path(__file__).resolve().parents[2]


def test_frames_split_across_reads_come_out_whole_and_in_order() -> None:
    frames = [(7, b"abc"), (8, b""), (9, np.arange(10, dtype=np.float32).tobytes())]
    stream = b"".join(handoff.HEADER.pack(rid, len(body)) + body for rid, body in frames)
    seen: list[tuple[int, bytes]] = []
    reader = handoff.FrameReader(lambda _, rid, body: seen.append((rid, body)))
    for start in range(0, len(stream), 5):  # reads that cut headers and payloads anywhere
        reader.data_received(stream[start : start + 5])
    assert seen == frames
    assert reader.buffer == bytearray()


def test_both_layouts_answer_every_request_and_their_figures_add_up(tmp_path: Path) -> None:
    out = tmp_path / "handoff.json"
    command = [sys.executable, "-m", "bench.handoff", "--runtime", "none", "--rate", "400",
               "--concurrency", "8", "--frontend-us", "50", "--seconds", "1.5", "--warm", "0.5",
               "--repeats", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = {run["layout"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"per-worker", "handoff"}
    for run in runs.values():
        # paced at 400/s; a loaded machine may fall behind, but every loop got answers
        assert 50 < run["req_per_s"] <= 440
        assert run["mean_batch"] >= 1
        parts = run["frontend_cpu_us"] + run["model_process_cpu_us"]
        assert abs(run["total_cpu_us"] - parts) < 0.2
    assert runs["per-worker"]["model_process_cpu_us"] == 0  # no model process in that layout
    assert runs["handoff"]["model_process_cpu_us"] > 0
    assert "| handoff | none |" in done.stdout
