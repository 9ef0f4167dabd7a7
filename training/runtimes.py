"""Compiled runtimes: the whole model of a version converted for OpenVINO, checked, measured.

At publish (``train.py``) and for versions published before (``python -m training.compile
models/<name>/<version>``, :mod:`training.compile`) the trained Keras model is converted
beside its SavedModel into ``runtimes/<artifact>/``, one OpenVINO IR per precision:

* ``openvino-fp32``: the model as trained;
* ``openvino-bf16``: fp16-stored weights run in bfloat16 (only on a CPU with bf16 instructions);
* ``openvino-int8``: post-training quantization (NNCF) calibrated on a sample of the training
  split.

Every artifact is run on the version's held-out test split beside the SavedModel: the largest
probability difference, top-1 agreement and test accuracy decide whether it passes
:data:`contract.runtimes.EQUIVALENCE_RULE`; images/s at batch 1, 8 and 32 are measured
interleaved with the SavedModel's on this machine. All of it goes into ``metadata.json``.

The whole model converts, pixels in (``network_input`` "pixels"): the digit normalisation
resamples with matrix products (:func:`training.normalization._warp`), which OpenVINO takes.
Versions published before that kept it in TensorFlow, as a ``preprocess`` SavedModel inside
each artifact (``network_input`` "preprocessed"), and the service still runs those as they
are; compiling such a version again (:mod:`training.compile`) converts it whole. The in-model
resize is a no-op at the model's own input size (the service resizes uploads to it), so it is
never converted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import sha256_file
from contract.names import SERVE_ENDPOINT
from contract.runtimes import (
    EQUIVALENCE_RULE,
    MEASURED_BATCH_SIZES,
    OPENVINO_COMPILE_CONFIG,
    RUNTIMES_DIR,
    RuntimeArtifact,
    RuntimeReport,
    cpu_flags,
    cpu_model,
)

logger = logging.getLogger("training")

#: Layers int8 leaves in float: the preprocessing before the network (the grey conversion, the
#: digit normalisation's ink thresholds, centre of mass and resample) is arithmetic on pixels,
#: not learned weights; in 8 bits it moves the digit in its frame (top-1 agreement fell to 0.986
#: when the grey conversion or the normalisation was quantized with the network). The resize is
#: an identity at the traced input size, so nothing of it is left to quantize.
FLOAT_ONLY_LAYERS = ("grayscale", "normalize_digits")
#: The IR file of every artifact (its weights are the .bin of the same name).
IR_FILE = "model.xml"
#: At most this many test images are compared (the whole split when smaller).
MAX_TEST_IMAGES = 2000
#: Calibration images for int8 (NNCF's default subset size).
CALIBRATION_IMAGES = 300
#: CPU flags under which OpenVINO runs bfloat16 natively.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Seconds per (runtime, batch size) timing; three interleaved rounds take the median.
TIMING_S = 0.25
TIMING_ROUNDS = 3


@dataclass(frozen=True)
class HeldOut:
    """Images at the model's input size, float32 RGB 0..255 (N, H, W, 3), and their labels."""

    images: np.ndarray
    labels: np.ndarray  # (N,) int class indices


def to_input_size(model: Any, images: np.ndarray) -> np.ndarray:
    """``images`` brought to the model's input size by its own ``resize`` layer (what the
    service's decoder does to uploads), float32 (N, H, W, 3)."""
    height, width = _input_size(model)
    if images.shape[1:3] == (height, width):
        return np.asarray(images, dtype=np.float32)
    resize = model.get_layer("resize")
    out = [np.asarray(resize(images[i : i + 256])) for i in range(0, len(images), 256)]
    return np.concatenate(out).astype(np.float32)


def _input_size(model: Any) -> tuple[int, int]:
    resize = model.get_layer("resize")
    return int(resize.height), int(resize.width)


# -- conversion ----------------------------------------------------------------------------


def _concrete(fn: Any, shape: tuple[int | None, ...]) -> Any:
    import tensorflow as tf

    spec = tf.TensorSpec(shape=shape, dtype=tf.float32, name="images")
    return tf.function(lambda images: fn(images, training=False)).get_concrete_function(spec)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("openvino", "nncf", "tensorflow", "keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


class _Runner:
    """One way to compute probabilities from pixels, for comparison and timing."""

    def __init__(self, name: str, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name = name
        self.predict = predict

    def probabilities(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        parts = [self.predict(images[i : i + batch]) for i in range(0, len(images), batch)]
        return np.concatenate(parts).astype(np.float32)


def _openvino_runner(name: str, xml: Path, settings: dict[str, str]) -> _Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {**OPENVINO_COMPILE_CONFIG, **settings})
    request = compiled.create_infer_request()

    def predict(images: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: images})[0], dtype=np.float32)

    return _Runner(name, predict)


def _images_per_s(runners: list[_Runner], images: np.ndarray) -> dict[str, dict[str, float]]:
    """images/s per runner and batch size: medians of interleaved rounds."""
    samples: dict[str, dict[int, list[float]]] = {r.name: {} for r in runners}
    for _round in range(TIMING_ROUNDS):
        for size in MEASURED_BATCH_SIZES:
            batch = np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])))
            for runner in runners:
                runner.predict(batch)  # warm this shape
                calls = 0
                started = time.perf_counter()
                while (elapsed := time.perf_counter() - started) < TIMING_S or calls < 2:
                    runner.predict(batch)
                    calls += 1
                samples[runner.name].setdefault(size, []).append(calls * size / elapsed)
    return {
        name: {str(size): round(statistics.median(v), 1) for size, v in per.items()}
        for name, per in samples.items()
    }


def artifact_checksums(version_dir: Path, folder: Path) -> dict[str, str]:
    """sha256 of every file under an artifact's ``folder``, keyed by its path relative to
    ``version_dir`` (what :class:`~contract.runtimes.RuntimeArtifact` ``files`` records)."""
    return {
        path.relative_to(version_dir).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def compile_runtimes(
    model: Any,
    version_dir: Path,
    test: HeldOut,
    calibration: np.ndarray,
) -> RuntimeReport | None:
    """Convert ``model`` into ``version_dir/runtimes/``, check and time every artifact against
    the SavedModel already in ``version_dir``; None (with a warning) without OpenVINO.

    Args:
        model: The trained Keras model the SavedModel was exported from.
        version_dir: The version being published (or an existing one being compiled).
        test: The held-out test split (at most :data:`MAX_TEST_IMAGES` are used).
        calibration: Training-split images for int8, any count (up to
            :data:`CALIBRATION_IMAGES` are used).
    """
    try:
        import openvino as ov
    except ImportError:
        logger.warning("OpenVINO is not installed: the version is served by its SavedModel only")
        return None
    import tensorflow as tf

    started = time.monotonic()
    height, width = _input_size(model)
    images = to_input_size(model, test.images[:MAX_TEST_IMAGES])
    labels = np.asarray(test.labels[:MAX_TEST_IMAGES])
    if len(images) == 0:
        logger.warning("no test images: no compiled runtime (nothing to check it on)")
        return None
    saved = tf.saved_model.load(str(version_dir))
    serve = getattr(saved, SERVE_ENDPOINT)
    reference = _Runner("savedmodel", lambda x: np.asarray(serve(tf.constant(x))))
    expected = reference.probabilities(images)
    saved_accuracy = float(np.mean(expected.argmax(1) == labels))

    with _quiet():
        ov_model = ov.convert_model(_concrete(model, (None, height, width, 3)))
    # The service reads output 0 as the probabilities. (The converter also keeps a second,
    # scalar output: the batch size digit_jitter's RandomTranslation reads even when it passes
    # images through. With the jitter returning its input directly instead, OpenVINO ran the
    # normalisation in bfloat16 under bf16: top-1 agreement 0.986.)
    first = ov_model.outputs[0].get_partial_shape()
    if str(first) != f"[?,{expected.shape[1]}]":
        logger.warning("the converted model's first output is %s: no compiled runtime", first)
        return None
    root = version_dir / RUNTIMES_DIR
    root.mkdir(exist_ok=True)
    float_only = [layer.name for layer in model.layers if layer.name in FLOAT_ONLY_LAYERS]
    calibration_inputs = to_input_size(model, calibration[:CALIBRATION_IMAGES])

    plans: list[tuple[str, dict[str, str], list[str]]] = [
        ("fp32", {"INFERENCE_PRECISION_HINT": "f32"}, [])
    ]
    flags = cpu_flags()
    bf16_flag = next((flag for flag in BF16_FLAGS if flag in flags), None)
    if bf16_flag is not None:
        plans.append(("bf16", {"INFERENCE_PRECISION_HINT": "bf16"}, [bf16_flag]))
    else:
        logger.info("no bf16 instructions on this CPU: no openvino-bf16 artifact")
    plans.append(("int8", {"INFERENCE_PRECISION_HINT": "f32"}, []))

    artifacts: list[RuntimeArtifact] = []
    runners: list[_Runner] = [reference]
    measured: list[tuple[str, str, dict[str, str], list[str], np.ndarray]] = []
    for precision, settings, needs in plans:
        name = f"openvino-{precision}"
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        try:
            if precision == "int8":
                with _quiet():
                    to_save = _quantize(ov_model, calibration_inputs, float_only)
            else:
                to_save = ov_model
            # bf16 computes in 16 bits anyway: its weights are stored in fp16 (half the file).
            ov.save_model(to_save, str(folder / IR_FILE), compress_to_fp16=precision == "bf16")
            runner = _openvino_runner(name, folder / IR_FILE, settings)
            probabilities = runner.probabilities(images)
        except Exception as exc:  # a converter or runtime failure costs this artifact only
            logger.warning("%s: could not be built (%s); left out", name, exc)
            shutil.rmtree(folder, ignore_errors=True)
            continue
        runners.append(runner)
        measured.append((name, precision, settings, needs, probabilities))
    speeds = _images_per_s(runners, images)
    for name, precision, settings, needs, probabilities in measured:
        agreement = float(np.mean(probabilities.argmax(1) == expected.argmax(1)))
        accuracy = float(np.mean(probabilities.argmax(1) == labels))
        reason = EQUIVALENCE_RULE.judge(agreement, accuracy, saved_accuracy)
        artifacts.append(
            RuntimeArtifact(
                name=name,
                runtime="openvino",
                precision=precision,  # type: ignore[arg-type]
                network_input="pixels",
                entry=IR_FILE,
                files=artifact_checksums(version_dir, root / name),
                converter=_versions(),
                settings=settings,
                cpu_flags=needs,
                max_abs_difference=float(np.max(np.abs(probabilities - expected))),
                top1_agreement=agreement,
                test_accuracy=accuracy,
                test_images=len(images),
                images_per_s=speeds[name],
                passed=not reason,
                reason=reason,
            )
        )
        logger.info(
            "%s: top-1 agreement %.4f, accuracy %.4f (SavedModel %.4f), max |diff| %.2g, "
            "images/s %s (SavedModel %s): %s",
            name,
            agreement,
            accuracy,
            saved_accuracy,
            artifacts[-1].max_abs_difference,
            speeds[name],
            speeds["savedmodel"],
            "passed" if not reason else f"not passed: {reason}",
        )
    if not any(root.iterdir()):
        root.rmdir()
    logger.info("compiled runtimes in %.1f s", time.monotonic() - started)
    return RuntimeReport(
        savedmodel_test_accuracy=saved_accuracy,
        savedmodel_images_per_s=speeds["savedmodel"],
        machine=cpu_model(),
        artifacts=artifacts,
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the converters' own console output (OpenVINO's conversion summary, printed when
    ``--verbose`` is anywhere in ``sys.argv``; NNCF's progress bars) out of the CLI's output."""
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        yield
    if captured.getvalue().strip():
        logger.debug("converter output: %s", captured.getvalue().strip())


def _quantize(ov_model: Any, calibration: np.ndarray, float_only: list[str]) -> Any:
    """int8 post-training quantization of ``ov_model`` on ``calibration`` (NNCF), leaving the
    operations of the Keras layers named in ``float_only`` in float."""
    import nncf

    samples = [calibration[i : i + 1] for i in range(len(calibration))]
    # The converter names each operation after its Keras layer ("<model>/<layer>_1/<op>");
    # validate: NNCF fails if a pattern matches nothing (a renaming must not quietly put the
    # preprocessing back into int8).
    ignored = nncf.IgnoredScope(
        patterns=[f".*/{layer}(_[0-9]+)?/.*" for layer in float_only], validate=True
    )
    return nncf.quantize(
        ov_model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        ignored_scope=ignored if float_only else None,
    )


def take_images(dataset: Iterable[Any], limit: int) -> HeldOut:
    """Up to ``limit`` (images, labels) from a tf.data pipeline of (x, y[, weights]) batches."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for batch in dataset:
        x, y = batch[0], batch[1]
        images.append(np.asarray(x, dtype=np.float32))
        labels.append(np.asarray(y))
        count += len(images[-1])
        if count >= limit:
            break
    if not images:
        return HeldOut(np.zeros((0, 1, 1, 3), np.float32), np.zeros(0, np.int64))
    return HeldOut(np.concatenate(images)[:limit], np.concatenate(labels)[:limit])
