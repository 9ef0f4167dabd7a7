"""``bench.handoff``: its framing, and a short run of both layouts without a model.

The measurement itself (``python -m bench.handoff --model ...``, a few minutes) is not repeated
here; this only checks that requests go round both layouts (ten probabilities back for each)
and that the batches hold the images the front ends sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import handoff

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
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


def test_both_layouts_answer_every_request_and_batch_each_image(tmp_path: Path) -> None:
    out = tmp_path / "handoff.json"
    command = [sys.executable, "-m", "bench.handoff", "--runtime", "none", "--rate", "400",
               "--concurrency", "8", "--frontend-us", "50", "--seconds", "2", "--warm", "0.5",
               "--repeats", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = {run["layout"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"per-worker", "handoff"}
    for run in runs.values():
        # every answer counted was ten probabilities back for one image; the window's batches
        # held the same images, give or take the 8 requests in flight at each end of it
        assert run["answered"] > 0
        assert abs(run["images_batched"] - run["answered"]) <= 2 * 8
        assert run["mean_batch"] >= 1
    # with the hand-off, the model process did the batching and paid for it
    assert runs["handoff"]["model_process_cpu_us"] > 0
    assert "| handoff | none |" in done.stdout
