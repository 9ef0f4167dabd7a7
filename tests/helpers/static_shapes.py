"""``python -m tests.helpers.static_shapes VERSION_DIR MAX_BATCH COUNTS``: every passed, runnable
OpenVINO artifact of a version, compiled per static batch size (as the service does) and once
with a dynamic batch dimension, run on the version's held-out digits; prints JSON.

A child process of tests/e2e/test_runtimes.py: with OpenVINO's CPU plugin created on the pytest
process's main thread (the plugin calls ``sigaltstack`` there) beside TensorFlow, a later test,
tests/service/process/test_supervisor.py, crashed that process (SIGSEGV in ``time.sleep``). The
service compiles on a loader thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import read_metadata
from contract.runtimes import cpu_flags, runnable_fastest_first
from service.serving import runtimes
from tests.helpers.protocol_digits import held_out, rgb_pixels


def compare(version_dir: Path, max_batch_size: int, counts: list[int]) -> dict[str, Any]:
    """Per artifact: what served, the static and dynamic batch sizes, and per batch of
    ``counts[i]`` held-out digits the largest difference and whether the top-1 classes agree."""
    metadata = read_metadata(version_dir)
    assert metadata.runtimes is not None
    passed = [a for a in metadata.runtimes.artifacts if a.passed]
    gray, labels = held_out(max(counts))
    pixels = rgb_pixels(gray)
    found: dict[str, Any] = {}
    for artifact in runnable_fastest_first(passed, cpu_flags()):
        static = runtimes.choose(
            version_dir, metadata, artifact.name, threads=1, max_batch_size=max_batch_size
        )
        dynamic = runtimes.choose(version_dir, metadata, artifact.name, threads=1)
        assert static.network is not None and dynamic.network is not None, (static, dynamic)
        rows = []
        for count in counts:
            got = static.network.predict(pixels[:count])
            want = dynamic.network.predict(pixels[:count])
            rows.append(
                {
                    "count": count,
                    "shape": list(got.shape),
                    "max_abs_difference": float(np.abs(got - want).max()),
                    "same_top1": bool((got.argmax(1) == want.argmax(1)).all()),
                }
            )
        top1 = static.network.predict(pixels).argmax(1)
        found[artifact.name] = {
            "served": [static.name, dynamic.name],
            "batch_sizes": [list(static.network.batch_sizes), list(dynamic.network.batch_sizes)],
            "precision": artifact.precision,
            "published_max_abs_difference": artifact.max_abs_difference,
            "rows": rows,
            "accuracy": float((top1 == labels).mean()),
        }
    return found


if __name__ == "__main__":
    version, largest, sizes = sys.argv[1:4]
    result = compare(Path(version), int(largest), [int(c) for c in sizes.split(",")])
    sys.stdout.write(json.dumps(result) + "\n")
