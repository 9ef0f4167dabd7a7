"""The compute ceiling: the published SavedModel called in-process, no HTTP, images/s per batch.

``python -m bench.compute VERSION_DIR [--batch-sizes 1,8,32,64] [--seconds 2]`` prints one JSON
object. Two paths are timed at each batch size:

* ``serve``: ``module.serve(tensor)`` on a tensor built once, the model's own cost;
* ``predict``: the service's :meth:`service.serving.model_store.LoadedModel.predict` from a
  NumPy batch (conversion in and out included), what the batcher's thread pays per call.

The ceiling is the best images/s of ``serve`` over the batch sizes. Runs in its own process so
TensorFlow's thread pools start fresh with their defaults (both cores), as in the service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _time_calls(fn: Any, seconds: float) -> tuple[int, float]:
    """Call ``fn`` repeatedly for about ``seconds``; return (calls, elapsed seconds)."""
    fn()  # one more warm-up call at this shape
    calls = 0
    started = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            return calls, elapsed


def measure(version_dir: Path, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """Images/s of ``serve`` and of ``LoadedModel.predict`` at each batch size."""
    import numpy as np
    import tensorflow as tf

    from contract.metadata import verify_version_dir
    from service.serving.model_store import load_saved_model

    metadata = verify_version_dir(version_dir, repository_root=version_dir.parent.parent)
    model = load_saved_model(version_dir, metadata)
    height, width = model.input_size
    rng = np.random.default_rng(0)
    rows = []
    for size in batch_sizes:
        images = rng.uniform(0, 255, (size, height, width, 3)).astype(np.float32)
        tensor = tf.constant(images)
        serve_calls, serve_s = _time_calls(lambda t=tensor: model.module.serve(t), seconds)
        predict_calls, predict_s = _time_calls(lambda x=images: model.predict(x), seconds)
        rows.append(
            {
                "batch_size": size,
                "serve_ms_per_call": round(1000 * serve_s / serve_calls, 3),
                "serve_images_per_s": round(size * serve_calls / serve_s, 1),
                "predict_ms_per_call": round(1000 * predict_s / predict_calls, 3),
                "predict_images_per_s": round(size * predict_calls / predict_s, 1),
            }
        )
    best = max(rows, key=lambda row: row["serve_images_per_s"])
    return {
        "model": f"{metadata.name}/{metadata.version}",
        "arch": metadata.arch,
        "input": [height, width, metadata.input.channels],
        "parameters": metadata.parameter_count,
        "tensorflow": tf.__version__,
        "rows": rows,
        "best_batch_size": best["batch_size"],
        "images_per_s": best["serve_images_per_s"],
        "ms_per_image_at_best": round(1000 / best["serve_images_per_s"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compute", description=__doc__)
    parser.add_argument("version_dir", type=Path, help="models/<name>/<version>/")
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = [int(part) for part in args.batch_sizes.split(",")]
    print(json.dumps(measure(args.version_dir, sizes, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
