"""Scale-out with TensorFlow's own distributed engine (``tf.distribute``).

- ``auto``: every local GPU through MirroredStrategy when there are several, else the default
  (single-device) strategy;
- ``mirrored``: MirroredStrategy over the GPUs of this host (the CPU when there is none);
- ``multi-worker``: MultiWorkerMirroredStrategy across the hosts listed in ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from training.errors import UserError

logger = logging.getLogger(__name__)


def make_strategy(kind: str) -> Any:
    """Return the ``tf.distribute.Strategy`` for ``kind`` (auto, mirrored, multi-worker)."""
    import tensorflow as tf

    if kind == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "--distribute multi-worker needs TF_CONFIG (cluster and task) in the environment"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: Any) -> bool:
    """True on the one process that publishes: always, except on non-chief multi-worker tasks."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        return bool(task_type == "chief")
    return bool(task_type == "worker" and task_id == 0)


def fit_multi_worker(
    model: Any,
    strategy: Any,
    train_ds: Any,
    val_ds: Any,
    *,
    epochs: int,
    callbacks: list[Any],
    verbose: int,
) -> dict[str, list[float]]:
    """Keras ``fit`` replacement for MultiWorkerMirroredStrategy (Keras 3's ``fit`` fails there:
    keras-team/keras#20585). Not implemented yet."""
    raise UserError("--distribute multi-worker is not available yet")
