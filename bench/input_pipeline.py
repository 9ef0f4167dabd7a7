"""The streamed input pipeline (issue 12): peak memory against dataset size, and whether the
accelerator would wait for data.

    python -m bench.input_pipeline            # full run: 2,000 and 20,000 images; simple and vgg16
    python -m bench.input_pipeline --quick    # smoke run (tests/bench/test_input_pipeline_smoke.py)

Two measurements, one JSON object per line on stdout (then a Markdown summary on stderr):

* ``{"kind": "rss", "images": N, ...}``: a folder of N JPEG images of 128x128 (two classes) is
  generated in a temporary folder, then ONE epoch of the real CLI runs on it in a subprocess
  (``python training/train.py --data DIR --epochs 1 --input-shape 128,128,3``: listing,
  fingerprint, streamed training, evaluation, export), and its peak resident set size is read
  from the kernel (``ru_maxrss`` of that child, via ``os.wait4``). Streaming means the figure
  must not grow with N.
* ``{"kind": "pipeline", "arch": ..., ...}``: images/s of the input pipeline alone
  (:func:`training.data.make_file_dataset`: read, decode, resize, batch; the second pass timed)
  and ``{"kind": "train_step", ...}``: images/s of ``train_on_batch`` alone on in-memory batches,
  for ``simple`` (28x28x1 on digit PNGs) and ``vgg16`` (224x224x3 on 640x480 JPEG photos, a few
  steps). When the pipeline's rate is below the step's, the accelerator waits for data.

Every line says the machine's load average at the start and end, so that a run shared with other
processes is visible as such.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RSS_IMAGE_SIDE = 128  # pixels
DISTINCT_IMAGES = 512  # encoded once, then written round-robin: generation stays cheap


def load() -> list[float]:
    """1-, 5- and 15-minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------- folders


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_rss_folder(root: Path, images: int, side: int = RSS_IMAGE_SIDE) -> Path:
    """``images`` JPEGs of ``side`` x ``side`` in two class folders (smooth colour fields with
    noise, distinct per class, so the one epoch is a real, learnable task)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    encoded: dict[int, list[bytes]] = {0: [], 1: []}
    for index in range(DISTINCT_IMAGES):
        label = index % 2
        base = np.stack([xx, yy, 1 - xx] if label == 0 else [yy, 1 - yy, xx], axis=-1) * 200
        noisy = base + rng.normal(0, 25, base.shape)
        encoded[label].append(_jpeg(np.clip(noisy, 0, 255).astype(np.uint8)))
    for name in ("warm", "cool"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(images):
        label = index % 2
        pool = encoded[label]
        name = ("warm", "cool")[label]
        (root / name / f"{index:06d}.jpg").write_bytes(pool[(index // 2) % len(pool)])
    return root


def make_digit_folder(root: Path, images: int) -> Path:
    """``images`` 28x28 grey digit PNGs (scikit-learn's digits, cycled) in ten class folders."""
    from PIL import Image

    from training.data import digit_images

    gray, labels = digit_images()
    for index in range(images):
        folder = root / str(int(labels[index % len(labels)]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gray[index % len(labels)]).save(folder / f"{index:06d}.png")
    return root


def make_photo_folder(root: Path, images: int) -> Path:
    """``images`` 640x480 JPEG photos: random 4:3 crops of scikit-learn's two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(1)
    for index in range(images):
        photo = photos[index % len(photos)]
        height = int(rng.integers(240, photo.shape[0] + 1))
        width = height * 4 // 3
        top = int(rng.integers(0, photo.shape[0] - height + 1))
        left = int(rng.integers(0, photo.shape[1] - width + 1))
        crop = Image.fromarray(photo[top : top + height, left : left + width]).resize((640, 480))
        folder = root / ("china", "flower")[index % len(photos)]
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{index:05d}.jpg", "JPEG", quality=90)
    return root


# ------------------------------------------------------------------------------------- peak RSS


def epoch_peak_rss(data_dir: Path, work: Path, *, side: int, batch_size: int) -> dict[str, Any]:
    """Run one epoch of the real CLI on ``data_dir`` in a child; its peak RSS and wall time."""
    command = [
        sys.executable,
        "training/train.py",
        "--data",
        str(data_dir),
        "--epochs",
        "1",
        "--input-shape",
        f"{side},{side},3",
        "--batch-size",
        str(batch_size),
        "--models-dir",
        str(work / "models"),
        "--run-dir",
        str(work / "run"),
        "--verbose",
        "2",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = work / f"train-{data_dir.name}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"training exited with {child.returncode}:\n{tail}")
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "seconds": round(seconds, 1),
        "command": " ".join(command[1:]),
    }


def measure_rss(
    sizes: list[int], work: Path, *, side: int, batch_size: int
) -> list[dict[str, Any]]:
    records = []
    for images in sizes:
        folder = make_rss_folder(work / f"rss-{images}", images, side)
        before = load()
        result = epoch_peak_rss(folder, work, side=side, batch_size=batch_size)
        record = {
            "kind": "rss",
            "images": images,
            "image_side": side,
            **result,
            "load_before": before,
            "load_after": load(),
        }
        emit(record)
        records.append(record)
        shutil.rmtree(folder)
    return records


# --------------------------------------------------------------------------- pipeline vs step


def pipeline_rate(folder: Path, *, size: tuple[int, int], batch_size: int) -> dict[str, Any]:
    """images/s of read + decode + resize + batch over every file of ``folder`` (second pass)."""
    import tensorflow as tf  # noqa: F401  (imported before timing)

    from contract.decoding.files import IMAGE_SUFFIXES
    from training.data import DecodeFailures, FileSplit, make_file_dataset

    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    split = FileSplit(tuple(files), np.zeros(len(files), dtype=np.int32))
    dataset = make_file_dataset(
        split,
        image_size=size,
        batch_size=batch_size,
        shuffle=True,
        seed=0,
        failures=DecodeFailures(),
    )
    for _ in dataset:  # warm-up pass: graph tracing, AUTOTUNE, the page cache
        pass
    started = time.perf_counter()
    count = 0
    for images, _labels in dataset:
        count += int(images.shape[0])
    seconds = time.perf_counter() - started
    return {
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 1),
    }


def train_step_rate(
    arch: str, shape: tuple[int, int, int], *, batch_size: int, steps: int
) -> dict[str, Any]:
    """images/s of ``train_on_batch`` on one in-memory batch (after two warm-up steps)."""
    import keras
    import tensorflow as tf

    from training.architectures import build

    keras.utils.set_random_seed(0)
    model = build(arch, shape, 10)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    # The pipeline hands the model RGB at the model's own size; its grey/resize layers follow.
    x = tf.constant(rng.uniform(0, 255, (batch_size, shape[0], shape[1], 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, batch_size).astype(np.int32))
    for _ in range(2):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - started
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "images_per_s": round(steps * batch_size / seconds, 1),
        "device": gpus[0].name if gpus else "CPU",
        "backend": f"keras {keras.__version__} on tensorflow {tf.__version__}",
    }


def measure_rates(work: Path, *, quick: bool) -> list[dict[str, Any]]:
    cases = [
        # arch, input shape, folder maker, files, pipeline batch, step batch, steps
        (
            "simple",
            (28, 28, 1),
            make_digit_folder,
            300 if quick else 3000,
            64,
            64,
            5 if quick else 50,
        ),
        (
            "vgg16",
            (32, 32, 3) if quick else (224, 224, 3),
            make_photo_folder,
            16 if quick else 256,
            16,
            4 if quick else 16,
            1 if quick else 3,
        ),
    ]
    records = []
    for arch, shape, maker, files, pipe_batch, step_batch, steps in cases:
        folder = maker(work / f"rates-{arch}", files)
        before = load()
        pipe = pipeline_rate(folder, size=shape[:2], batch_size=pipe_batch)
        record = {"kind": "pipeline", "arch": arch, "input_shape": list(shape), **pipe}
        record.update(load_before=before, load_after=load())
        emit(record)
        records.append(record)
        before = load()
        step = train_step_rate(arch, shape, batch_size=step_batch, steps=steps)
        record = {"kind": "train_step", "arch": arch, "input_shape": list(shape), **step}
        record.update(load_before=before, load_after=load())
        emit(record)
        records.append(record)
        shutil.rmtree(folder)
    return records


def summary(records: list[dict[str, Any]]) -> str:
    """Markdown tables of the records (what BENCHMARKS.md quotes)."""
    lines = [
        "| images (JPEG) | side, px | peak RSS, MB | one epoch, s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        if r["kind"] == "rss":
            rss, seconds = r["peak_rss_mb"], r["seconds"]
            lines.append(f"| {r['images']:,} | {r['image_side']} | {rss:,.0f} | {seconds:.0f} |")
    lines += [
        "",
        "| arch, input | pipeline, images/s | train step, images/s | device | waits for data? |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    pipes = {r["arch"]: r for r in records if r["kind"] == "pipeline"}
    for r in records:
        if r["kind"] == "train_step":
            pipe = pipes[r["arch"]]["images_per_s"]
            shape = "x".join(map(str, r["input_shape"]))
            waits = "yes" if pipe < r["images_per_s"] else "no"
            step = r["images_per_s"]
            lines.append(
                f"| {r['arch']} {shape} | {pipe:,.0f} | {step:,.1f} | {r['device']} | {waits} |"
            )
    return "\n".join(lines)


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="imgcls-input-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.input_pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny folders, few steps")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="dataset sizes for the RSS run (default 2000 20000)"
    )
    parser.add_argument("--skip-rss", action="store_true", help="only the pipeline/step rates")
    parser.add_argument("--skip-rates", action="store_true", help="only the RSS run")
    parser.add_argument("--workdir", type=Path, help="keep the generated folders here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    sizes = args.sizes or ([200, 800] if args.quick else [2000, 20000])
    side = 32 if args.quick else RSS_IMAGE_SIDE
    records: list[dict[str, Any]] = []
    emit({"kind": "machine", "cpus": os.cpu_count(), "load": load(), "quick": args.quick})
    with workdir(args.workdir) as work:
        if not args.skip_rss:
            records += measure_rss(sizes, work, side=side, batch_size=64)
        if not args.skip_rates:
            records += measure_rates(work, quick=args.quick)
    print(summary(records), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
