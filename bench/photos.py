"""The photo workload: real 640x480 JPEG photos, and a model trained on photos (96x96x3).

The photos are crops of the two photographs that ship with scikit-learn
(``sklearn.datasets.load_sample_images()``: ``china.jpg`` and ``flower.jpg``, 640x427 each):
a random 4:3 window of each (between 240 and 427 pixels high, anywhere in the frame), rescaled
to 640x480 and saved as JPEG at the highest quality (<= 95) that keeps the file at or under
:data:`MAX_JPEG_BYTES`, so each file has 50-100 KB of real photographic detail and no two are
identical. Nothing is downloaded.

* :func:`ensure_photo_workload`: the photos wrk sends (``serve/``, :data:`SERVED_PHOTOS` of
  them, cycled request by request) and a class-folder training set (``train/china``,
  ``train/flower``; other seeds than the served ones), then the model ``photos`` trained on it
  with the real CLI (``python training/train.py --data ... --input-shape 96,96,3``), all in the
  benchmark's cache folder, made once and reused;
* :func:`jpeg_decode_rate`: the machine's full-size JPEG decode rate on one core (Pillow, the
  same photos, one thread): the scale the photo rates are read against.

``python -m bench.photos OUT_DIR`` makes the photos and the model and prints where they are.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.servers import ROOT

PHOTOS = "photos"  # the model's name
PHOTO_SIZE = (640, 480)  # width, height of every photo sent, pixels
MODEL_INPUT = (96, 96, 3)  # height, width, channels of the photo model
MIN_JPEG_BYTES = 50_000
MAX_JPEG_BYTES = 100_000
TARGET_JPEG_BYTES = 90_000  # the highest quality whose file stays under this is chosen
SERVED_PHOTOS = 8  # distinct photos wrk cycles through
SERVE_SEED = 7
TRAIN_SEED = 1


@dataclass(frozen=True)
class PhotoWorkload:
    """Where the photo workload lives: the served JPEGs and the models folder of ``photos``."""

    served: list[Path]
    models_dir: Path
    train_dir: Path


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's two sample photographs, by name: ``{"china": (427, 640, 3) uint8, ...}``."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return {
        Path(filename).stem: np.asarray(image)
        for filename, image in zip(bunch.filenames, bunch.images, strict=True)
    }


def photo_jpeg(source: np.ndarray, rng: np.random.Generator) -> bytes:
    """One 640x480 JPEG: a random 4:3 crop of ``source`` rescaled (bicubic), 50-100 KB."""
    from PIL import Image

    rows, cols = source.shape[:2]
    width_out, height_out = PHOTO_SIZE
    high = int(rng.integers(240, min(rows, cols * height_out // width_out) + 1))
    wide = high * width_out // height_out
    top = int(rng.integers(0, rows - high + 1))
    left = int(rng.integers(0, cols - wide + 1))
    image = Image.fromarray(source[top : top + high, left : left + wide]).resize(
        PHOTO_SIZE, Image.Resampling.BICUBIC
    )
    chosen = b""
    for quality in range(95, 49, -5):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        chosen = buffer.getvalue()
        if len(chosen) <= TARGET_JPEG_BYTES:
            break
    return chosen


def make_photos(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` photos, alternating between the sample photographs; (class name, JPEG bytes)."""
    sources = sample_photos()
    names = sorted(sources)
    rng = np.random.default_rng(seed)
    return [
        (names[i % len(names)], photo_jpeg(sources[names[i % len(names)]], rng))
        for i in range(count)
    ]


def write_photos(directory: Path, count: int, seed: int) -> list[Path]:
    """Write :func:`make_photos` to ``directory/<index>-<class>.jpg``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, data) in enumerate(make_photos(count, seed)):
        path = directory / f"{index:03d}-{name}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def write_training_set(directory: Path, per_class: int, seed: int) -> Path:
    """A class-folder dataset (``china/``, ``flower/``) of ``per_class`` photos each."""
    for index, (name, data) in enumerate(make_photos(2 * per_class, seed)):
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:04d}.jpg").write_bytes(data)
    return directory


def _has_version(models_dir: Path, name: str) -> bool:
    return any((models_dir / name).glob("*/metadata.json"))


def ensure_photo_workload(
    cache_dir: Path, *, per_class: int = 60, epochs: int = 3, served: int = SERVED_PHOTOS
) -> PhotoWorkload:
    """The served photos and the trained ``photos`` model under ``cache_dir`` (made on first
    use: about a minute on two cores; later runs reuse them).

    Args:
        cache_dir: The benchmark's scratch folder (``bench/results/models`` by default).
        per_class: Training photos per class.
        epochs: Training epochs (``--epochs``).
        served: Distinct photos the load generator cycles through.
    """
    root = cache_dir / "photo-workload"
    serve_dir = root / "serve"
    paths = sorted(serve_dir.glob("*.jpg"))
    if len(paths) != served:
        paths = write_photos(serve_dir, served, SERVE_SEED)
    train_dir = root / "train"
    if not _has_version(cache_dir, PHOTOS):
        if not any(train_dir.glob("*/*.jpg")):
            write_training_set(train_dir, per_class, TRAIN_SEED)
        print(f"training {PHOTOS} into {cache_dir} ({epochs} epochs) ...", flush=True)
        command = [
            sys.executable,
            "training/train.py",
            "--data",
            str(train_dir),
            "--input-shape",
            ",".join(str(part) for part in MODEL_INPUT),
            "--epochs",
            str(epochs),
            "--model-name",
            PHOTOS,
            "--models-dir",
            str(cache_dir),
            "--run-dir",
            str(cache_dir / ".runs" / PHOTOS),
            "--verbose",
            "0",
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return PhotoWorkload(served=paths, models_dir=cache_dir, train_dir=train_dir)


def jpeg_decode_rate(paths: list[Path], seconds: float = 2.0) -> dict[str, Any]:
    """Full-size Pillow decodes per second on one thread (``Image.open(...).convert("RGB")``,
    which decodes every pixel), cycling over ``paths``; and, beside it, decode + resize to
    the photo model's input, the bare app's whole per-image work."""
    from PIL import Image

    blobs = [path.read_bytes() for path in paths]
    height, width = MODEL_INPUT[:2]

    def rate(work: Any) -> float:
        for blob in blobs:  # warm: allocator, caches
            work(blob)
        count = 0
        started = time.perf_counter()
        while True:
            work(blobs[count % len(blobs)])
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and count >= len(blobs):
                return count / elapsed

    def decode(blob: bytes) -> Any:
        return Image.open(io.BytesIO(blob)).convert("RGB")

    def decode_resize(blob: bytes) -> Any:
        return decode(blob).resize((width, height))

    full = rate(decode)
    return {
        "photos": len(blobs),
        "mean_jpeg_bytes": round(sum(map(len, blobs)) / len(blobs)),
        "size": list(PHOTO_SIZE),
        "decode_per_s_one_core": round(full, 1),
        "decode_ms": round(1000 / full, 3),
        "decode_resize_per_s_one_core": round(rate(decode_resize), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.photos", description=__doc__)
    parser.add_argument("cache_dir", type=Path, help="where the photos and the model go")
    parser.add_argument("--per-class", type=int, default=60, help="training photos per class")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    workload = ensure_photo_workload(args.cache_dir, per_class=args.per_class, epochs=args.epochs)
    sizes = [path.stat().st_size for path in workload.served]
    print(
        json.dumps(
            {
                "served": [str(path) for path in workload.served],
                "jpeg_bytes": sizes,
                "models_dir": str(workload.models_dir),
                "decode": jpeg_decode_rate(workload.served, 1.0),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
