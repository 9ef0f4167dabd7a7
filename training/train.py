"""Train a Keras CNN and publish it as a versioned SavedModel.

    python training/train.py                 # scikit-learn's bundled digits -> models/digits/N
    python training/train.py --data photos/  # a folder of class sub-folders -> models/photos/N
    python training/train.py --describe --arch lenet5   # the conv arithmetic, layer by layer

Steps: parse args -> datasets -> ``build(arch, input_shape, num_classes)`` -> fit with callbacks
-> evaluate on the held-out test split -> publish (SavedModel, report, metadata.json last).
A user mistake ends with one ``error:`` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python training/train.py`: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from training.data import ImageData, class_counts, load_digits_data, load_folder_data
from training.errors import UserError

logger = logging.getLogger("training")

EXIT_USER_ERROR = 2
#: Input shapes of the published architectures, used by --describe when none is given.
CANONICAL_SHAPES = {
    "simple": (28, 28, 1),
    "lenet5": (32, 32, 1),
    "alexnet": (227, 227, 3),
    "vgg16": (224, 224, 3),
}


def parse_shape(text: str) -> tuple[int, int, int]:
    """'H,W,C' -> (H, W, C) with C in {1, 3}."""
    try:
        height, width, channels = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C (e.g. 28,28,1), got {text!r}") from None
    if height < 1 or width < 1 or channels not in (1, 3):
        raise argparse.ArgumentTypeError(
            "H and W must be positive and C must be 1 (grayscale) or 3 (RGB)"
        )
    return height, width, channels


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 0.5:
        raise argparse.ArgumentTypeError("must be between 0 and 0.5")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Keras CNN and publish it to models/<name>/<version>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, help="folder of class sub-folders (default: scikit-learn digits)"
    )
    parser.add_argument("--arch", default="simple", help="simple, lenet5, alexnet or vgg16")
    parser.add_argument(
        "--input-shape", type=parse_shape, help="network input H,W,C (default: from the data)"
    )
    parser.add_argument(
        "--num-classes", type=_positive_int, default=10, help="with --describe and no data"
    )
    parser.add_argument("--epochs", type=_positive_int, default=20)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument(
        "--val-split", type=_fraction, default=0.1, help="fraction held out for validation"
    )
    parser.add_argument(
        "--test-split",
        type=_fraction,
        default=None,
        help="fraction held out for the final test (default 0.2 digits, 0.15 folders)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed for weights, shuffling and augmentation"
    )
    parser.add_argument(
        "--augment", action="store_true", help="random rotation, shift and zoom while training"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--patience", type=_positive_int, default=5, help="early-stopping patience, epochs"
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model-name", help="default: 'digits', or the data folder's name")
    parser.add_argument(
        "--run-dir", type=Path, help="checkpoints and logs (default: runs/<model-name>)"
    )
    parser.add_argument("--describe", action="store_true", help="print the layer table and exit")
    parser.add_argument(
        "--distribute", choices=["auto", "mirrored", "multi-worker"], default="auto"
    )
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU)")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its backup"
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        default=None,
        help="Keras progress output: 0 silent, 1 bar, 2 one line per epoch",
    )
    return parser


def describe(args: argparse.Namespace) -> int:
    """Print the conv-arithmetic layer table for --arch at --input-shape."""
    from training.architectures import build
    from training.conv_math import describe_model, format_table

    shape = args.input_shape or CANONICAL_SHAPES.get(args.arch, (28, 28, 1))
    model = build(args.arch, shape, args.num_classes)
    print(f"{args.arch} on {shape[0]}x{shape[1]}x{shape[2]}, {args.num_classes} classes")
    print(format_table(describe_model(model)))
    return 0


def load_data(args: argparse.Namespace) -> ImageData:
    if args.data is None:
        return load_digits_data(args.val_split, args.test_split or 0.2)
    size = args.input_shape[:2] if args.input_shape else None
    channels = args.input_shape[2] if args.input_shape else None
    data = load_folder_data(
        args.data,
        val_split=args.val_split,
        test_split=args.test_split or 0.15,
        image_size=size,
        channels=channels,
    )
    if data.skipped_files:
        logger.warning("skipped %d unreadable file(s) in %s", data.skipped_files, args.data)
    return data


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
) -> Any:
    """tf.data pipeline: cache the uint8 arrays, shuffle, batch, float32, augment, prefetch."""
    import keras
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment:
        augmenter = keras.Sequential(
            [
                keras.layers.RandomRotation(0.05, fill_mode="constant", seed=seed),
                keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
            ],
            name="augment",
        )
        ds = ds.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def make_callbacks(run_dir: Path, args: argparse.Namespace) -> list[Any]:
    """Early stopping, best-weights checkpoint, resumable backup, CSV and TensorBoard logs."""
    import keras

    backup_dir = run_dir / "backup"
    if not args.resume and backup_dir.exists():
        shutil.rmtree(backup_dir)  # a fresh run must not silently continue an old one
    return [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=args.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv"), append=args.resume),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
    ]


def first_conv_kernels(model: Any) -> np.ndarray | None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return np.asarray(layer.kernel.numpy(), dtype=np.float32)
    return None


def train(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data = load_data(args)
    input_shape = args.input_shape or data.default_input_shape
    model_name = args.model_name or ("digits" if args.data is None else args.data.resolve().name)
    run_dir = args.run_dir or Path("runs") / model_name
    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "data %s: train %d, val %d, test %d; classes %s",
        data.source,
        len(data.train),
        len(data.val),
        len(data.test),
        class_counts(data.train.labels, data.class_names),
    )

    import keras
    import tensorflow as tf

    from training.architectures import build
    from training.distribute import (
        evaluate_multi_worker,
        fit_multi_worker,
        is_chief,
        is_multi_worker,
        make_strategy,
        predict_locally,
        strategy_name,
        weights_sha256,
    )

    keras.utils.set_random_seed(args.seed)
    gpus = tf.config.list_physical_devices("GPU")
    if args.mixed_precision:
        if not gpus:
            logger.warning("--mixed-precision without a GPU is slower on most CPUs")
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(args.distribute)
    logger.info(
        "devices: %s; strategy %s with %d replica(s)",
        [d.name for d in gpus] or ["CPU"],
        strategy_name(strategy),
        strategy.num_replicas_in_sync,
    )

    global_batch = args.batch_size * strategy.num_replicas_in_sync
    train_ds = make_dataset(
        data.train.images,
        data.train.labels,
        batch_size=global_batch,
        shuffle=True,
        augment=args.augment,
        seed=args.seed,
    )
    val_ds = make_dataset(
        data.val.images,
        data.val.labels,
        batch_size=global_batch,
        shuffle=False,
        augment=False,
        seed=args.seed,
    )
    test_ds = make_dataset(
        data.test.images,
        data.test.labels,
        batch_size=global_batch,
        shuffle=False,
        augment=False,
        seed=args.seed,
    )

    with strategy.scope():
        model = build(args.arch, input_shape, len(data.class_names))
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=args.jit,
        )
    callbacks = make_callbacks(run_dir, args)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)

    multi_worker = is_multi_worker(strategy)
    if multi_worker:
        history = fit_multi_worker(
            model,
            strategy,
            train_ds,
            val_ds,
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=args.epochs,
            callbacks=callbacks,
            shuffle=False,
            verbose=verbose,
        ).history  # tf.data shuffles
    epochs_run = len(history.get("loss", []))
    train_seconds = time.monotonic() - started

    # Equal on every worker of a synchronous run: compare the lines to prove it.
    logger.info("final weights sha256 %s", weights_sha256(model))

    if multi_worker:  # Keras 3's evaluate fails under MultiWorkerMirroredStrategy, as fit does
        val_loss, val_acc = evaluate_multi_worker(model, strategy, val_ds)
        test_loss, test_acc = evaluate_multi_worker(model, strategy, test_ds)
        probabilities = predict_locally(model, test_ds)
    else:
        val_loss, val_acc = model.evaluate(val_ds, verbose=0)
        test_loss, test_acc = model.evaluate(test_ds, verbose=0)
        probabilities = model.predict(test_ds, verbose=0)
    y_pred = np.argmax(probabilities, axis=-1)
    metrics = {
        "val_accuracy": float(val_acc),
        "val_loss": float(val_loss),
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
    }

    if not is_chief(strategy):
        logger.info("worker done (test accuracy %.4f); the chief publishes", test_acc)
        # TF's multi-worker guide has every worker save, because saving may read SyncOnRead
        # variables collectively. Our models hold only mirrored variables (a chief-only export
        # works), but the throw-away copy keeps that safe for any model.
        with tempfile.TemporaryDirectory() as scratch:
            _export_with_explain(model, Path(scratch) / "model")
        return 0

    from training.export import publish
    from training.metadata import InputSpec
    from training.reports import write_report

    def write_artifacts(tmp: Path) -> list[str]:
        endpoints = _export_with_explain(model, tmp)
        write_report(
            tmp / "report",
            history=history,
            y_true=data.test.labels,
            y_pred=y_pred,
            class_names=data.class_names,
            first_conv_kernels=first_conv_kernels(model),
        )
        return endpoints

    config = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
    }
    version, path = publish(
        models_dir=args.models_dir,
        name=model_name,
        write_artifacts=write_artifacts,
        input_spec=InputSpec(
            height=input_shape[0],
            width=input_shape[1],
            channels=1 if input_shape[2] == 1 else 3,
            color_mode="grayscale" if input_shape[2] == 1 else "rgb",
        ),
        class_names=data.class_names,
        arch=args.arch,
        parameter_count=int(model.count_params()),
        training={
            **config,
            "epochs_run": epochs_run,
            "train_seconds": round(train_seconds, 2),
            "examples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "strategy": strategy_name(strategy),
            "replicas": strategy.num_replicas_in_sync,
            "devices": [d.name for d in gpus] or ["CPU"],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "data_source": data.source,
        },
        data_fingerprint=data.fingerprint,
        metrics=metrics,
    )
    total = time.monotonic() - started
    print(
        f"published {path} (version {version}): test accuracy {test_acc:.4f}, "
        f"val accuracy {val_acc:.4f}, {epochs_run} epochs, {total:.0f} s"
    )
    return 0


def _export_with_explain(model: Any, path: Path) -> list[str]:
    """SavedModel with ``serve`` (first: ``serving_default``) plus the explanation endpoints."""
    from training.explain import EXPLAIN_ENDPOINTS
    from training.export import export_saved_model

    return export_saved_model(model, path, extra_endpoints=list(EXPLAIN_ENDPOINTS))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from training.architectures import ARCHITECTURES, InputTooSmallError, UnknownArchitectureError

    try:
        if args.arch not in ARCHITECTURES:
            raise UserError(
                f"unknown architecture {args.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        if args.describe:
            return describe(args)
        return train(args)
    except (UserError, InputTooSmallError, UnknownArchitectureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "interrupted; run again with --resume to continue from the last epoch", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
