"""Train a Keras CNN and publish it as a versioned SavedModel.

    python training/train.py                 # scikit-learn's bundled digits -> models/digits/N
    python training/train.py --data photos/  # a folder of class sub-folders -> models/photos/N
    python training/train.py --data digits/ --data data/feedback/digits   # merged by class name
    python training/train.py --describe --arch lenet5   # the conv arithmetic, layer by layer

:func:`train` runs the steps, one function each: load (the data, the digit options) -> devices
(seeds, precision, strategy) -> datasets (:mod:`training.data`'s tf.data pipelines) -> compile
(``build(arch, input_shape, num_classes)``) -> fit with callbacks -> evaluate on the held-out
splits -> publish (SavedModel, report, metadata.json last).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Run as `python training/train.py`: make `training` and `contract` importable (before either
# is imported: the repository root is not on sys.path then).
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from contract.names import REPORT_DIR
from contract.runtimes import RuntimeReport
from contract.tf_log import import_filtered, quiet_tensorflow
from training.arch_names import ARCHITECTURES
from training.data import (
    SPLITS,
    FolderData,
    ImageData,
    check_data_folders,
    class_counts,
    load_digits_data,
    load_folder_data,
    with_min_side,
)
from training.errors import UserError

if TYPE_CHECKING:
    from contract.drift import DriftBaseline
    from contract.metadata import InputSpec
    from training.distribute import Loop

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


def _drop(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a fraction between 0 and 1")
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


# declarative table: argparse flags (one add_argument per flag; longer than 80 lines by design)
class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one ``error:`` line (argparse prints its whole usage block
    first, which buries the line that says what to fix)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists every flag)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: every flag, its type check, default and help."""
    parser = _Parser(
        prog="train.py",
        description="Train a Keras CNN and publish it to models/<name>/<version>/.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="folder of class sub-folders; repeat the flag to train on several folders, merged "
        "by class (sub-folder) name (default: scikit-learn digits)",
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
    parser.add_argument(
        "--gate-max-accuracy-drop",
        type=_drop,
        help="evaluation gate: bless the new version only if its test accuracy is at most this "
        "much below the stable version's on the same examples (default: serving.yaml's gate for "
        "the model, else 0.005)",
    )
    parser.add_argument(
        "--gate-max-recall-drop",
        type=_drop,
        help="evaluation gate: ... and no class's recall is more than this much below stable's "
        "(default: serving.yaml's gate, else 0.05)",
    )
    parser.add_argument(
        "--model-name", help="default: 'digits', or the (first) --data folder's name"
    )
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
        "--init-from",
        type=_positive_int,
        metavar="VERSION",
        help="start from the weights of this published version of the model (same --arch and "
        "input shape; when the classes differ, the last layer starts afresh): a retrain on "
        "new or feedback data in a few epochs",
    )
    parser.add_argument(
        "--runtimes",
        choices=["openvino", "none"],
        default="openvino",
        help="compile the network for OpenVINO beside the SavedModel (fp32, bf16 where the CPU "
        "has it, int8), each checked against the SavedModel on the test split and timed; the "
        "service serves the fastest that passed (README, 'Compiled runtimes')",
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


def check_args(args: argparse.Namespace) -> None:
    """The mistakes found without TensorFlow, so that they are reported at once (its import
    takes seconds). ``--arch`` and the number formats are checked by the parser itself."""
    if args.data is not None:
        check_data_folders(args.data)  # each exists, is a folder, and none is inside another
    if args.distribute == "multi-worker":
        from training.distribute import check_tf_config

        check_tf_config(os.environ.get("TF_CONFIG"))


def describe(args: argparse.Namespace) -> int:
    """Print the conv-arithmetic layer table for --arch at --input-shape."""
    from training.architectures import build, describe_model
    from training.conv_math import format_table

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


# ---------------------------------------------------------------------------------------
# A training run, as steps:
#   load -> devices -> datasets -> compile -> fit -> evaluate -> publish
# Each step is one function; what it produces is a small frozen dataclass that the later
# steps take, so every value has one producer and :func:`train` reads as the list above.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """What the load step produces: the data and what it decides about the run."""

    data: ImageData | FolderData
    input_shape: tuple[int, int, int]  # (height, width, channels) the network sees, pixels
    model_name: str  # publishes to <models-dir>/<model_name>/<version>/
    run_dir: Path  # checkpoints and logs


@dataclass(frozen=True)
class Devices:
    """What the devices step produces: where the run computes."""

    strategy: Any  # tf.distribute.Strategy
    names: list[str]  # the GPUs' device names, or ["CPU"]


@dataclass(frozen=True)
class Datasets:
    """What the datasets step produces: tf.data pipelines of GLOBAL batches (per-replica
    ``--batch-size`` times replicas) of float32 RGB 0..255 images and int32 labels."""

    train: Any  # shuffled and augmented; (x, y, sample_weight) batches with class weights
    val: Any
    test: Any
    class_weights: dict[int, float] | None  # label -> loss weight (--class-weight balanced)


@dataclass(frozen=True)
class Compiled:
    """What the compile step produces: the model and the loop that drives it."""

    model: Any  # keras.Model, built and compiled inside the strategy's scope
    loop: Loop  # fit / evaluate / predict as this strategy needs them


@dataclass(frozen=True)
class Fitted:
    """What the fit step produces."""

    history: dict[str, list[float]]  # Keras History.history: one value per epoch run
    epochs_run: int  # early stopping may end before --epochs
    train_seconds: float  # from the start of the run (loading included) to the end of fit


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate step produces: scores of the best weights on the held-out splits."""

    val_loss: float
    val_accuracy: float  # fraction 0..1
    test_loss: float
    test_accuracy: float  # fraction 0..1
    y_true: np.ndarray  # test labels (N,) in dataset order, files that failed to decode left out
    y_pred: np.ndarray  # predicted test classes (N,), the same order
    confidence: np.ndarray  # top-1 probability (N,) of each test prediction, 0..1, the same order

    @property
    def metrics(self) -> dict[str, float]:
        """metadata.json's ``metrics``."""
        return {
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
        }


def train(args: argparse.Namespace) -> int:
    """One training run, step by step; returns the exit code (0)."""
    started = time.monotonic()
    loaded = load(args)
    devices = prepare_devices(args)
    datasets = make_run_datasets(args, loaded, devices)
    compiled = compile_model(args, loaded, devices)
    fitted = fit(args, loaded, compiled, datasets, started=started)
    evaluation = evaluate(loaded, compiled, datasets)
    remember_failures(args, loaded)
    publish_run(args, loaded, devices, datasets, compiled, fitted, evaluation, started=started)
    return 0


# -- load ---------------------------------------------------------------------------------


def load(args: argparse.Namespace) -> Loaded:
    """Read the digits or list the folder, settle the digit options, create the run folder.

    Mutates ``args``: the resolved ``--normalize-digits`` and ``--handwriting-augment``."""
    data = load_data(args)
    input_shape = args.input_shape or data.default_input_shape
    resolve_digit_options(args, input_shape)
    if args.jit and args.normalize_digits:
        logger.warning(
            "--jit is ignored with --normalize-digits: its training-time digit jitter "
            "(ImageProjectiveTransformV3) has no XLA kernel "
            "(train with --no-normalize-digits to use XLA)"
        )
    model_name = args.model_name or ("digits" if args.data is None else args.data[0].resolve().name)
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
    return Loaded(data, input_shape, model_name, run_dir)


def load_data(args: argparse.Namespace) -> ImageData | FolderData:
    """The bundled digits in memory, or the ``--data`` folder(s) listed, merged and split for
    streaming."""
    if args.data is None:
        if args.cache is not None:
            logger.warning("--cache applies to --data folders; the digits stay in memory")
        return load_digits_data(args.val_split, args.test_split or 0.2)
    data = load_folder_data(
        args.data,
        val_split=args.val_split,
        test_split=args.test_split or 0.15,
        input_shape=args.input_shape,
        class_weighted=args.class_weight == "balanced",
    )
    from training.architectures import min_input_size  # Keras: only once the data is fine

    return with_min_side(data, min_input_size(args.arch))


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


# -- devices ------------------------------------------------------------------------------


def prepare_devices(args: argparse.Namespace) -> Devices:
    """Seed every generator, set the precision policy and choose the distribution strategy
    (before any dataset or model exists: both depend on them)."""
    import keras
    import tensorflow as tf

    from training.distribute import make_strategy, strategy_name

    keras.utils.set_random_seed(args.seed)
    gpus = tf.config.list_physical_devices("GPU")
    if args.mixed_precision:
        if not gpus:
            logger.warning("--mixed-precision without a GPU is slower on most CPUs")
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(args.distribute)
    devices = Devices(strategy, [d.name for d in gpus] or ["CPU"])
    logger.info(
        "devices: %s; strategy %s with %d replica(s)",
        devices.names,
        strategy_name(strategy),
        strategy.num_replicas_in_sync,
    )
    return devices


# -- datasets -----------------------------------------------------------------------------


def make_run_datasets(args: argparse.Namespace, loaded: Loaded, devices: Devices) -> Datasets:
    """The run's pipelines (:func:`training.data.make_datasets`), class-weighted on request."""
    from training.data import class_weights, make_datasets, with_class_weights
    from training.distribute import is_multi_worker

    data = loaded.data
    train_ds, val_ds, test_ds = make_datasets(
        data,
        batch_size=args.batch_size * devices.strategy.num_replicas_in_sync,
        image_size=loaded.input_shape[:2],
        seed=args.seed,
        augment=args.augment,
        handwriting=bool(args.handwriting_augment),
        cache_dir=args.cache,
    )
    weights = None
    if args.class_weight == "balanced":
        if is_multi_worker(devices.strategy):  # its custom training loop takes (x, y) batches only
            raise UserError("--class-weight balanced does not work with --distribute multi-worker")

        weights = class_weights(data.train.labels, len(data.class_names))
        logger.info(
            "class weights (balanced): %s",
            {data.class_names[c]: round(w, 4) for c, w in weights.items()},
        )
        train_ds = with_class_weights(train_ds, weights)
    return Datasets(train_ds, val_ds, test_ds, weights)


# -- compile ------------------------------------------------------------------------------


def compile_model(args: argparse.Namespace, loaded: Loaded, devices: Devices) -> Compiled:
    """Build ``--arch`` for the data's input and classes and compile it, in the strategy's
    scope (so its variables are mirrored), with the loop that strategy needs."""
    import keras

    from training.architectures import build
    from training.distribute import training_loop

    with devices.strategy.scope():
        model = build(
            args.arch,
            loaded.input_shape,
            len(loaded.data.class_names),
            normalize_digits=args.normalize_digits,
        )
        if args.init_from is not None:
            from training.warm_start import init_from

            init_from(model, args, loaded.model_name, loaded.input_shape, loaded.data.class_names)
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=args.jit,
        )
    return Compiled(model, training_loop(model, devices.strategy))


# -- fit ----------------------------------------------------------------------------------


def fit(
    args: argparse.Namespace,
    loaded: Loaded,
    compiled: Compiled,
    datasets: Datasets,
    *,
    started: float,
) -> Fitted:
    """Train with the callbacks until ``--epochs`` or early stopping (best weights restored).

    ``started``: ``time.monotonic()`` at the start of the run, for ``train_seconds``."""
    from training.distribute import weights_sha256

    callbacks = make_callbacks(loaded.run_dir, args)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    history = compiled.loop.fit(
        datasets.train,
        datasets.val,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    fitted = Fitted(history, len(history.get("loss", [])), time.monotonic() - started)
    # Equal on every worker of a synchronous run: compare the lines to prove it.
    logger.info("final weights sha256 %s", weights_sha256(compiled.model))
    return fitted


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


# -- evaluate -----------------------------------------------------------------------------


def evaluate(loaded: Loaded, compiled: Compiled, datasets: Datasets) -> Evaluation:
    """Loss and accuracy on the validation and test splits, and the test predictions."""
    val_loss, val_accuracy = compiled.loop.evaluate(datasets.val)
    test_loss, test_accuracy = compiled.loop.evaluate(datasets.test)
    probabilities = compiled.loop.predict(datasets.test)
    y_pred = np.argmax(probabilities, axis=-1)
    confidence = np.max(probabilities, axis=-1) if len(probabilities) else np.zeros(0)
    # After the test pass: only then is every file that fails to decode known.
    y_true = decoded_labels(loaded.data, "test")
    return Evaluation(
        val_loss=float(val_loss),
        val_accuracy=float(val_accuracy),
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        y_true=y_true,
        y_pred=y_pred,
        confidence=confidence,
    )


def drift_baseline(evaluation: Evaluation, class_names: list[str]) -> DriftBaseline | None:
    """metadata.json's ``drift_baseline``: the share of each predicted class and the histogram
    of top-1 confidences over the test split, which the service compares its live predictions
    with. Only predictions count, so the files that failed to decode (left out of ``y_pred``)
    need no lining up; None (with a warning) when nothing of the test split decoded."""
    from contract.drift import baseline_from

    if evaluation.y_pred.size == 0:
        logger.warning("no test predictions: the version has no drift baseline")
        return None
    return baseline_from(evaluation.y_pred.tolist(), evaluation.confidence.tolist(), class_names)


def remember_failures(args: argparse.Namespace, loaded: Loaded) -> None:
    """With ``--cache``: keep the files that failed to decode beside the decoded images (every
    split has been read once by now), so a run that reuses the cache counts them the same."""
    from training.data import remember_decode_failures

    if args.cache is not None and isinstance(loaded.data, FolderData):
        remember_decode_failures(loaded.data, args.cache, loaded.input_shape[:2])


def decoded_labels(data: ImageData | FolderData, split: str) -> np.ndarray:
    """Labels of ``split`` in dataset order, less the files that failed to decode while
    streaming (the pipeline drops them): what ``model.predict`` on that split lines up with."""
    part = getattr(data, split)
    if not isinstance(data, FolderData):
        return np.asarray(part.labels)
    failed = data.failures.files
    keep = [i for i, name in enumerate(part.files) if name not in failed]
    return np.asarray(part.labels)[keep]


# -- publish ------------------------------------------------------------------------------


def publish_run(
    args: argparse.Namespace,
    loaded: Loaded,
    devices: Devices,
    datasets: Datasets,
    compiled: Compiled,
    fitted: Fitted,
    evaluation: Evaluation,
    *,
    started: float,
) -> None:
    """The chief publishes the next version (SavedModel, report, metadata.json last) and
    prints one line; any other worker only exports a throw-away copy."""
    from training.distribute import is_chief
    from training.export import publish

    model, data = compiled.model, loaded.data
    if not is_chief(devices.strategy):
        logger.info(
            "worker done (test accuracy %.4f); the chief publishes", evaluation.test_accuracy
        )
        # TF's multi-worker guide has every worker save, because saving may read SyncOnRead
        # variables collectively. Our models hold only mirrored variables (a chief-only export
        # works), but the throw-away copy keeps that safe for any model.
        with tempfile.TemporaryDirectory() as scratch:
            _export_with_explain(model, Path(scratch) / "model")
        return
    if data.skipped_files:
        logger.warning("skipped %d unreadable file(s) in %s", data.skipped_files, data.source)
    from training.gate import run_gate

    gate = run_gate(
        args, loaded.model_name, data, datasets.test, evaluation.y_true, evaluation.y_pred
    )
    version, path = publish(
        models_dir=args.models_dir,
        name=loaded.model_name,
        write_artifacts=lambda tmp: write_artifacts(tmp, model, data, fitted, evaluation),
        input_spec=input_spec(loaded.input_shape),
        class_names=data.class_names,
        arch=args.arch,
        parameter_count=int(model.count_params()),
        training=training_metadata(args, loaded, devices, fitted, datasets.class_weights),
        data_fingerprint=data.fingerprint,
        metrics=evaluation.metrics,
        drift_baseline=drift_baseline(evaluation, data.class_names),
        evaluation=gate,
        compile_runtimes=(
            (lambda tmp: compile_artifacts(tmp, model, datasets))
            if args.runtimes != "none"
            else None
        ),
    )
    total = time.monotonic() - started
    verdict = "blessed" if gate.blessed else "NOT blessed"
    print(
        f"published {path} (version {version}): test accuracy {evaluation.test_accuracy:.4f}, "
        f"val accuracy {evaluation.val_accuracy:.4f}, {fitted.epochs_run} epochs, {total:.0f} s; "
        f"{verdict}: {gate.reason}"
    )


def write_artifacts(
    tmp: Path, model: Any, data: ImageData | FolderData, fitted: Fitted, evaluation: Evaluation
) -> list[str]:
    """Everything of a version but metadata.json into ``tmp``: the SavedModel (its endpoints
    returned) and the report."""
    from training.reports import write_report

    endpoints = _export_with_explain(model, tmp)
    from training.warm_start import WEIGHTS_FILE

    # The Keras weights beside the SavedModel: what --init-from starts the next version from.
    model.save_weights(str(tmp / WEIGHTS_FILE))
    write_report(
        tmp / REPORT_DIR,
        history=fitted.history,
        y_true=evaluation.y_true,
        y_pred=evaluation.y_pred,
        class_names=data.class_names,
        first_conv_kernels=first_conv_kernels(model),
    )
    return endpoints


def compile_artifacts(tmp: Path, model: Any, datasets: Datasets) -> RuntimeReport | None:
    """The compiled runtimes of the version in ``tmp`` (:mod:`training.compile`), checked on
    the test split and calibrated on a sample of the training split."""
    from training.runtimes import (
        CALIBRATION_IMAGES,
        MAX_TEST_IMAGES,
        compile_runtimes,
        take_images,
    )

    test = take_images(datasets.test, MAX_TEST_IMAGES)
    calibration = take_images(datasets.train, CALIBRATION_IMAGES)
    return compile_runtimes(model, tmp, test, calibration.images)


def _export_with_explain(model: Any, path: Path) -> list[str]:
    """SavedModel with ``serve`` (first: ``serving_default``) plus the explanation endpoints."""
    from training.explain import EXPLAIN_ENDPOINTS
    from training.export import export_saved_model

    return export_saved_model(model, path, extra_endpoints=list(EXPLAIN_ENDPOINTS))


def first_conv_kernels(model: Any) -> np.ndarray | None:
    """The first Conv2D layer's kernel, float32 ``(f, f, channels in, filters)``, for the
    report's filter picture; None without a Conv2D layer."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return np.asarray(layer.kernel.numpy(), dtype=np.float32)
    return None


def input_spec(input_shape: tuple[int, int, int]) -> InputSpec:
    """metadata.json's ``input``: the network's (height, width) in pixels and color mode."""
    from contract.metadata import InputSpec

    return InputSpec(
        height=input_shape[0],
        width=input_shape[1],
        channels=1 if input_shape[2] == 1 else 3,
        color_mode="grayscale" if input_shape[2] == 1 else "rgb",
    )


def training_metadata(
    args: argparse.Namespace,
    loaded: Loaded,
    devices: Devices,
    fitted: Fitted,
    weights: dict[int, float] | None,
) -> dict[str, Any]:
    """metadata.json's ``training``: every flag as resolved, then what the run measured."""
    import keras
    import tensorflow as tf

    from training.distribute import strategy_name

    data = loaded.data
    config = {key: _plain(value) for key, value in vars(args).items()}
    return {
        **config,
        "epochs_run": fitted.epochs_run,
        "train_seconds": round(fitted.train_seconds, 2),
        "examples": {split: int(decoded_labels(data, split).size) for split in SPLITS},
        "skipped_files": data.skipped_files,
        "data": data_summary(data, loaded.input_shape, args, weights).model_dump(),
        "strategy": strategy_name(devices.strategy),
        "replicas": devices.strategy.num_replicas_in_sync,
        "devices": devices.names,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "data_source": data.source,
    }


def _plain(value: Any) -> Any:
    """A flag's value as JSON holds it: paths (also in a list, as repeated ``--data``) as str."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def data_summary(
    data: ImageData | FolderData,
    input_shape: tuple[int, int, int],
    args: argparse.Namespace,
    weights: dict[int, float] | None,
) -> Any:
    """The metadata's :class:`contract.metadata.DataSummary` of this run."""
    from contract.metadata import DataSource, DataSummary

    if isinstance(data, FolderData):
        counts = data.readable_class_counts()  # each file once: an image of a class, or skipped
        files = sum(counts.values()) + data.skipped_files
        reason = data.input_shape_reason
        sources = [
            DataSource(
                path=source.path,
                files=source.files,
                skipped_files=source.skipped_files,
                class_counts=source.class_counts,
            )
            for source in data.readable_sources()
        ]
    else:
        labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
        counts = class_counts(labels, data.class_names)
        files = int(labels.size)
        reason = "from --input-shape" if args.input_shape else "the bundled digits' default"
        sources = [DataSource(path=data.source, files=files, class_counts=counts)]
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
        sources=sources,
    )


def import_tensorflow(*, show_log: bool) -> None:
    """Import TensorFlow and Keras, without their C++ start-up lines unless ``show_log``
    (:mod:`contract.tf_log`, the same filter the service uses)."""
    quiet_tensorflow(show_log=show_log)
    import_filtered("tensorflow")
    import_filtered("keras")
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
