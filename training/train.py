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
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python training/train.py`: make `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from training.arch_names import ARCHITECTURES
from training.data import (
    FolderData,
    ImageData,
    class_counts,
    load_digits_data,
    load_folder_data,
    with_min_side,
)
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


def _architecture(text: str) -> str:
    if text not in ARCHITECTURES:
        raise argparse.ArgumentTypeError(
            f"unknown architecture {text!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    return text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` once, and only for a real value: not for flags whose default is
    None (their help says in words what happens) nor for on/off switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Keras CNN and publish it to models/<name>/<version>/.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--data", type=Path, help="folder of class sub-folders (default: scikit-learn digits)"
    )
    parser.add_argument(
        "--arch",
        type=_architecture,
        choices=ARCHITECTURES,
        default="simple",
        help="network architecture",
    )
    parser.add_argument(
        "--input-shape", type=parse_shape, help="network input H,W,C (default: from the data)"
    )
    parser.add_argument(
        "--num-classes", type=_positive_int, default=10, help="with --describe and no data"
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=20,
        help="most epochs (early stopping may end sooner)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per step, per replica"
    )
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
    parser.add_argument(
        "--normalize-digits",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MNIST-style normalisation inside the model (polarity from the border, crop to the "
        "ink, scale into 20/28 of the frame, centre by mass); grayscale models only "
        "(default: on for the bundled digits, off for --data)",
    )
    parser.add_argument(
        "--handwriting-augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on variants like uploads (dark on paper, small, moved, rotated, thin or "
        "thick strokes, blur, JPEG); bundled digits only (default: on with --normalize-digits)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's step size")
    parser.add_argument(
        "--class-weight",
        choices=["none", "balanced"],
        default="none",
        help="'balanced' weighs each class's loss by n / (classes * n_class) of the train split",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="with --data: cache decoded images in files under DIR (default: decode every epoch)",
    )
    parser.add_argument(
        "--patience", type=_positive_int, default=5, help="early-stopping patience, epochs"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="model repository; publishes to <models-dir>/<model-name>/<version>/",
    )
    parser.add_argument("--model-name", help="default: 'digits', or the data folder's name")
    parser.add_argument(
        "--run-dir", type=Path, help="checkpoints and logs (default: runs/<model-name>)"
    )
    parser.add_argument("--describe", action="store_true", help="print the layer table and exit")
    parser.add_argument(
        "--distribute",
        choices=["auto", "mirrored", "multi-worker"],
        default="auto",
        help="tf.distribute: auto (MirroredStrategy on 2+ local GPUs, else one device), mirrored "
        "(every local GPU), multi-worker (several machines, from TF_CONFIG)",
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
        help="Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 "
        "on a terminal, else 2); 1 or 2 also shows TensorFlow's own start-up log (CUDA and "
        "CPU-feature lines), hidden otherwise; a TF_CPP_MIN_LOG_LEVEL you set decides instead",
    )
    return parser


def describe(args: argparse.Namespace) -> int:
    """Print the conv-arithmetic layer table for --arch at --input-shape."""
    from training.architectures import build
    from training.conv_math import describe_model, format_table

    shape = args.input_shape or CANONICAL_SHAPES.get(args.arch, (28, 28, 1))
    if args.normalize_digits and shape[2] != 1:
        raise UserError(
            "--normalize-digits needs a grayscale model (input shape H,W,1); "
            f"got {','.join(map(str, shape))}"
        )
    model = build(args.arch, shape, args.num_classes, normalize_digits=bool(args.normalize_digits))
    print(f"{args.arch} on {shape[0]}x{shape[1]}x{shape[2]}, {args.num_classes} classes")
    print(format_table(describe_model(model)))
    return 0


def load_data(args: argparse.Namespace) -> ImageData | FolderData:
    """The bundled digits in memory, or ``--data`` listed and split for streaming."""
    if args.data is None:
        if args.cache is not None:
            logger.warning("--cache applies to --data folders; the digits stay in memory")
        return load_digits_data(args.val_split, args.test_split or 0.2)
    data = load_folder_data(
        args.data,
        val_split=args.val_split,
        test_split=args.test_split or 0.15,
        input_shape=args.input_shape,
    )
    from training.architectures import min_input_size  # Keras: only once the data is fine

    return with_min_side(data, min_input_size(args.arch))


def folder_datasets(
    data: FolderData, args: argparse.Namespace, *, batch_size: int, image_size: tuple[int, int]
) -> tuple[Any, Any, Any]:
    """Streamed (train, val, test) tf.data pipelines of a ``--data`` folder; see
    :func:`training.data.make_file_dataset`. ``--cache DIR`` caches each split's decoded images
    in a file named after the data fingerprint and the image size (so changed data or another
    input size never reads a stale cache)."""
    import warnings

    from training.data import make_file_dataset

    # Files that fail to decode are dropped while streaming, so a split's length is unknown
    # until it has been read once; Keras warns at the end of every such pass as if the data
    # had run out early. It has not: every readable file was used.
    warnings.filterwarnings(
        "ignore", message="Your input ran out of data", category=UserWarning, module="keras"
    )

    if args.cache is not None:
        try:
            args.cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--cache {args.cache}: {exc.strerror or exc}") from exc
        if not os.access(args.cache, os.W_OK | os.X_OK):
            raise UserError(f"--cache {args.cache}: the folder is not writable")

    def cache_file(split: str) -> Path | None:
        if args.cache is None:
            return None
        height, width = image_size
        return args.cache / f"{split}-{data.fingerprint[:16]}-{height}x{width}"

    train_ds, val_ds, test_ds = (
        make_file_dataset(
            getattr(data, split),
            image_size=image_size,
            batch_size=batch_size,
            shuffle=split == "train",
            seed=args.seed,
            failures=data.failures,
            cache_file=cache_file(split),
        )
        for split in ("train", "val", "test")
    )
    if args.augment:
        import keras
        import tensorflow as tf

        # The same random rotation, shift and zoom as make_dataset gives the digits.
        augmenter = keras.Sequential(
            [
                keras.layers.RandomRotation(0.05, fill_mode="constant", seed=args.seed),
                keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=args.seed),
                keras.layers.RandomZoom(0.1, fill_mode="constant", seed=args.seed),
            ],
            name="augment",
        )
        train_ds = train_ds.map(
            lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return train_ds, val_ds, test_ds


def with_class_weights(dataset: Any, weights: dict[int, float]) -> Any:
    """``(x, y)`` batches -> ``(x, y, sample_weight)`` with each label's class weight: works
    under every distribution strategy, unlike ``fit(class_weight=...)``."""
    import tensorflow as tf

    table = tf.constant([weights[c] for c in range(len(weights))], dtype=tf.float32)
    return dataset.map(lambda x, y: (x, y, tf.gather(table, y)))


def resolve_digit_options(args: argparse.Namespace, input_shape: tuple[int, int, int]) -> None:
    """Fill in ``--normalize-digits`` and ``--handwriting-augment`` defaults (on for the
    bundled digits on a grayscale input, off for --data) and refuse combinations that cannot
    work. The resolved values land in the metadata's training config."""
    bundled = args.data is None
    if args.normalize_digits is None:
        args.normalize_digits = bundled and input_shape[2] == 1
    if args.normalize_digits and input_shape[2] != 1:
        raise UserError(
            "--normalize-digits needs a grayscale model (input shape H,W,1); "
            f"got {','.join(map(str, input_shape))}"
        )
    if args.handwriting_augment is None:
        args.handwriting_augment = bundled and args.normalize_digits
    if args.handwriting_augment and not bundled:
        raise UserError(
            "--handwriting-augment works on the bundled digits only (light ink on black); "
            "use --augment for --data"
        )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
    handwriting: bool = False,
) -> Any:
    """tf.data pipeline: cache the uint8 arrays, shuffle, batch, float32, augment, prefetch.

    ``handwriting``: :func:`training.augment.handwriting` variants (new ones every epoch)."""
    import keras
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if handwriting:
        from training.augment import handwriting as handwriting_variants

        # One stateless seed per batch, different every epoch, reproducible from --seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (handwriting_variants(batch[0], s), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
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
    resolve_digit_options(args, input_shape)
    if args.jit and args.normalize_digits:
        logger.warning(
            "--jit is ignored with --normalize-digits: its image warp has no XLA kernel "
            "(train with --no-normalize-digits to use XLA)"
        )
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
    if isinstance(data, FolderData):
        train_ds, val_ds, test_ds = folder_datasets(
            data, args, batch_size=global_batch, image_size=input_shape[:2]
        )
    else:
        train_ds = make_dataset(
            data.train.images,
            data.train.labels,
            batch_size=global_batch,
            shuffle=True,
            augment=args.augment,
            seed=args.seed,
            handwriting=args.handwriting_augment,
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
    weights = None
    if args.class_weight == "balanced":
        from training.data import class_weights

        if is_multi_worker(strategy):  # its custom training loop takes (x, y) batches only
            raise UserError("--class-weight balanced does not work with --distribute multi-worker")

        weights = class_weights(data.train.labels, len(data.class_names))
        logger.info(
            "class weights (balanced): %s",
            {data.class_names[c]: round(w, 4) for c, w in weights.items()},
        )
        train_ds = with_class_weights(train_ds, weights)

    with strategy.scope():
        model = build(
            args.arch,
            input_shape,
            len(data.class_names),
            normalize_digits=args.normalize_digits,
        )
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
    y_true = decoded_labels(data, "test")
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

    if data.skipped_files:
        logger.warning("skipped %d unreadable file(s) in %s", data.skipped_files, data.source)

    from training.export import publish
    from training.metadata import InputSpec
    from training.reports import write_report

    def write_artifacts(tmp: Path) -> list[str]:
        endpoints = _export_with_explain(model, tmp)
        write_report(
            tmp / "report",
            history=history,
            y_true=y_true,
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
            "examples": {
                split: int(decoded_labels(data, split).size) for split in ("train", "val", "test")
            },
            "skipped_files": data.skipped_files,
            "data": data_summary(data, input_shape, args, weights).model_dump(),
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


def decoded_labels(data: ImageData | FolderData, split: str) -> np.ndarray:
    """Labels of ``split`` in dataset order, less the files that failed to decode while
    streaming (the pipeline drops them): what ``model.predict`` on that split lines up with."""
    part = getattr(data, split)
    if not isinstance(data, FolderData):
        return np.asarray(part.labels)
    failed = data.failures.files
    keep = [i for i, name in enumerate(part.files) if name not in failed]
    return np.asarray(part.labels)[keep]


def data_summary(
    data: ImageData | FolderData,
    input_shape: tuple[int, int, int],
    args: argparse.Namespace,
    weights: dict[int, float] | None,
) -> Any:
    """The metadata's :class:`training.metadata.DataSummary` of this run."""
    from training.metadata import DataSummary

    if isinstance(data, FolderData):
        counts = data.class_counts
        files = sum(counts.values()) + data.skipped_files
        reason = data.input_shape_reason
    else:
        labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
        counts = class_counts(labels, data.class_names)
        files = int(labels.size)
        reason = "from --input-shape" if args.input_shape else "the bundled digits' default"
    largest = max(counts.values())
    return DataSummary(
        source=data.source,
        files=files,
        skipped_files=data.skipped_files,
        class_counts=counts,
        imbalance_ratio=round(min(counts.values()) / largest, 4) if largest else 0.0,
        input_shape=list(input_shape),
        input_shape_reason=reason,
        class_weights=(
            None
            if weights is None
            else {data.class_names[c]: round(w, 6) for c, w in weights.items()}
        ),
    )


def _export_with_explain(model: Any, path: Path) -> list[str]:
    """SavedModel with ``serve`` (first: ``serving_default``) plus the explanation endpoints."""
    from training.explain import EXPLAIN_ENDPOINTS
    from training.export import export_saved_model

    return export_saved_model(model, path, extra_endpoints=list(EXPLAIN_ENDPOINTS))


def check_args(args: argparse.Namespace) -> None:
    """The mistakes found without TensorFlow, so that they are reported at once (its import
    takes seconds). ``--arch`` and the number formats are checked by the parser itself."""
    if args.data is not None:
        if not args.data.exists():
            raise UserError(f"data folder {args.data} does not exist")
        if not args.data.is_dir():
            raise UserError(
                f"{args.data} is not a folder; --data expects a folder of class sub-folders"
            )
    if args.distribute == "multi-worker":
        from training.distribute import check_tf_config

        check_tf_config(os.environ.get("TF_CONFIG"))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (C++ code writes there, not to ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow(*, show_log: bool) -> None:
    """Import TensorFlow and Keras, without their C++ start-up lines unless ``show_log``.

    ``TF_CPP_MIN_LOG_LEVEL`` (set to 3 here unless the user set it) filters what TensorFlow logs
    once running, such as ``failed call to cuInit`` on a machine without a GPU. The lines its
    libraries print while loading (``Could not find cuda drivers...``, absl's ``All log messages
    before absl::InitializeLog()...``) come before that setting is read, so the import itself
    runs with file descriptor 2 pointed at /dev/null whenever the level hides anything.
    """
    if not show_log:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    quiet = level not in ("", "0") and "tensorflow" not in sys.modules
    with _stderr_silenced() if quiet else contextlib.nullcontext():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    if not show_log:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # TensorFlow's Python-side warnings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_args(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    import_tensorflow(show_log=bool(args.verbose))
    from training.architectures import InputTooSmallError, UnknownArchitectureError

    try:
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
