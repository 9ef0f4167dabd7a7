"""Publishing a trained model into the model repository, atomically.

``models/<name>/<version>/`` appears in one ``rename``: the SavedModel, the report and, last,
metadata.json are built in ``models/<name>/.tmp-<random>/``, flushed to disk, and only then
renamed to the next free integer. Two trainers publishing at once cannot take the same number:
renaming a folder onto an existing, non-empty one fails, and the loser moves on to the next.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from contract.drift import DriftBaseline
from contract.evaluation import Evaluation
from contract.metadata import InputSpec, ModelMetadata, checksum_tree, list_versions, write_metadata
from contract.names import SERVE_ENDPOINT
from contract.runtimes import RuntimeReport

logger = logging.getLogger(__name__)

MAX_PUBLISH_ATTEMPTS = 100

#: An extra SavedModel endpoint: (name, function of the Keras model returning the endpoint's
#: callable and its input signature). Explanation endpoints plug in here.
EndpointFactory = Callable[[Any], tuple[str, Callable[..., Any], list[Any]]]


def export_saved_model(
    model: Any, path: Path, extra_endpoints: list[EndpointFactory] | None = None
) -> list[str]:
    """Write ``model`` as a TensorFlow SavedModel at ``path``; return its endpoint names.

    ``serve`` (also ``serving_default``) maps float32 RGB images (batch, any H, any W, 3) with
    values 0..255 to class probabilities (batch, num_classes); the model itself resizes,
    converts colour and rescales, so every client gets the training-time preprocessing.
    """
    import keras
    import tensorflow as tf

    # No ``archive.track(model)``: add_endpoint tracks every variable an endpoint uses, and
    # tracking the model as well stores each weight a second time (the Keras variables under
    # ``variables/``, the TensorFlow ones the endpoints use under ``_all_variables/``): twice the
    # folder, for nothing the service reads (vgg16-48: 269 MB -> 135 MB, same answers).
    archive = keras.export.ExportArchive()
    image_spec = tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.float32, name="images")

    def serve(images: Any) -> Any:
        return model(images, training=False)

    archive.add_endpoint(name=SERVE_ENDPOINT, fn=serve, input_signature=[image_spec])
    names = [SERVE_ENDPOINT]
    for factory in extra_endpoints or []:
        name, fn, signature = factory(model)
        archive.add_endpoint(name=name, fn=fn, input_signature=signature)
        names.append(name)
    archive.write_out(str(path), verbose=False)
    return names


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` so a crash cannot leave a torn version."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(
    *,
    models_dir: Path,
    name: str,
    write_artifacts: Callable[[Path], list[str]],
    input_spec: InputSpec,
    class_names: list[str],
    arch: str,
    parameter_count: int,
    training: dict[str, Any],
    data_fingerprint: str,
    metrics: dict[str, float],
    drift_baseline: DriftBaseline | None = None,
    evaluation: Evaluation | None = None,
    compile_runtimes: Callable[[Path], RuntimeReport | None] | None = None,
) -> tuple[int, Path]:
    """Build a version in a temp folder with ``write_artifacts(tmp_dir) -> endpoint names``,
    write metadata.json last, and rename it to the next free version. Returns (version, path).

    ``drift_baseline``: the version's predictions on its test split, for the service's drift
    gauges (:func:`contract.drift.baseline_from`); None leaves it out of the metadata.
    ``evaluation``: the evaluation gate's verdict (:mod:`training.gate`).
    ``compile_runtimes(tmp_dir)``: after the artifacts, writes the compiled runtimes under
    ``tmp_dir/runtimes/`` and returns their report (:mod:`training.compile`).
    """
    model_root = models_dir / name
    model_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_root))
    # mkdtemp makes the folder owner-only; a published version must be readable by the server,
    # which may run as another user (containers).
    tmp.chmod(0o755)
    try:
        endpoints = write_artifacts(tmp)
        runtimes = compile_runtimes(tmp) if compile_runtimes is not None else None
        files = checksum_tree(tmp)
        _fsync_tree(tmp)
        version = max(list_versions(model_root), default=0) + 1
        for _attempt in range(MAX_PUBLISH_ATTEMPTS):
            metadata = ModelMetadata(
                name=name,
                version=version,
                created_at=datetime.now(timezone.utc),
                class_names=class_names,
                input=input_spec,
                arch=arch,
                parameter_count=parameter_count,
                endpoints=endpoints,
                training=training,
                data_fingerprint=data_fingerprint,
                metrics=metrics,
                drift_baseline=drift_baseline,
                evaluation=evaluation,
                runtimes=runtimes,
                files=files,
            )
            write_metadata(tmp, metadata)
            _fsync_dir(tmp)
            target = model_root / str(version)
            try:
                # rename(2) onto a non-empty folder fails: that is the lock between trainers.
                os.rename(tmp, target)
            except OSError:
                if not target.exists():
                    raise
                logger.info("version %d was taken by another publisher; trying the next", version)
                version = max([*list_versions(model_root), version]) + 1
                continue
            _fsync_dir(model_root)
            return version, target
        raise RuntimeError(f"could not find a free version under {model_root}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
