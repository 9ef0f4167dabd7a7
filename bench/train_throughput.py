"""Training throughput of the project's architectures on whatever accelerator Keras sees.

    python -m bench.train_throughput --arch simple vgg16 --precision float32 mixed_float16

It builds each architecture with ``training.architectures.build`` (the very builders the CLI
uses), fits it for a few epochs on the bundled digits (upscaled to the architecture's input
size), and prints one JSON line per (arch, precision): device, seconds per epoch (the first,
compiling epoch reported apart), images/s and held-out accuracy. Backend-agnostic Keras 3: it
runs under TensorFlow (the project's default) and also under ``KERAS_BACKEND=jax``, which is how
the GPU figures in BENCHMARKS.md were taken on a machine without TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


def device_name() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"jax:{jax.devices()[0].device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow:{gpus[0].name if gpus else 'CPU'}"
    return backend


def digits_at(size: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 RGB 0..255 at ``size`` pixels (the model converts/rescales itself)."""
    from PIL import Image

    from training.data import load_digits_data

    data = load_digits_data(0.1)

    def resize(images: np.ndarray) -> np.ndarray:
        if images.shape[1] == size:
            return images.astype(np.float32)
        return np.stack(
            [
                np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
                for img in images
            ]
        ).astype(np.float32)

    return resize(data.train.images), data.train.labels, resize(data.test.images), data.test.labels


def measure(arch: str, precision: str, epochs: int, batch_size: int, size: int) -> dict[str, Any]:
    import keras

    from training.architectures import build

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = digits_at(size, 1)
    model = build(arch, (size, size, 1), 10)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(x_train, y_train, batch_size=batch_size, epochs=1, verbose=0)
        times.append(time.perf_counter() - started)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    keras.mixed_precision.set_global_policy("float32")
    return {
        "arch": arch,
        "precision": precision,
        "input": f"{size}x{size}x1",
        "device": device_name(),
        "params": int(model.count_params()),
        "first_epoch_s": round(times[0], 3),
        "epoch_s": round(steady, 3),
        "images_per_s": round(len(x_train) / steady, 1),
        "test_accuracy": round(float(accuracy), 4),
        "epochs": epochs,
        "batch_size": batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", nargs="+", default=["simple"])
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32"],
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--size", type=int, default=0, help="input pixels (default: 28, vgg16 32, alexnet 67)"
    )
    args = parser.parse_args(argv)
    default_size = {"simple": 28, "lenet5": 32, "alexnet": 67, "vgg16": 32}
    for arch in args.arch:
        for precision in args.precision:
            size = args.size or default_size.get(arch, 28)
            print(
                json.dumps(measure(arch, precision, args.epochs, args.batch_size, size)), flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
