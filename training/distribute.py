"""Scale-out with TensorFlow's own distributed engine (``tf.distribute``).

- ``auto``: every local GPU through MirroredStrategy when there are several, else the default
  (single-device) strategy;
- ``mirrored``: MirroredStrategy over the GPUs of this host (the CPU when there is none);
- ``multi-worker``: MultiWorkerMirroredStrategy across the hosts listed in ``TF_CONFIG``.

Keras 3's ``Model.fit`` and ``Model.evaluate`` fail under MultiWorkerMirroredStrategy
("Attempt to convert a value (PerReplica...)", keras-team/keras#20585), so multi-worker runs
train with :func:`fit_multi_worker` and measure with :func:`evaluate_multi_worker`: a custom
step run by ``strategy.run`` that drives the same Keras callbacks ``fit`` drives.
:func:`training_loop` makes that choice once per run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.errors import UserError

logger = logging.getLogger(__name__)


def make_strategy(kind: str) -> Any:
    """Return the ``tf.distribute.Strategy`` for ``kind`` (auto, mirrored, multi-worker)."""
    import tensorflow as tf

    if kind == "multi-worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def check_tf_config(text: str | None) -> None:
    """Raise :class:`UserError` unless ``text`` is a TF_CONFIG that places this task in its
    cluster (TensorFlow's own parser ends such mistakes with a traceback)."""
    hint = (
        'e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise UserError(
            "--distribute multi-worker needs TF_CONFIG (cluster and task) in the environment, "
            + hint
        )
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc}); {hint}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError(f"TF_CONFIG needs a 'cluster' and a 'task' object; {hint}")
    task_type = task.get("type")
    addresses = cluster.get(task_type) if isinstance(task_type, str) else None
    try:
        index = int(task.get("index", 0))  # TensorFlow reads a missing index as 0
    except (TypeError, ValueError):
        index = -1
    if not isinstance(addresses, list) or index < 0:
        raise UserError(
            f"TF_CONFIG's task {json.dumps(task)} must name a job of its cluster "
            f"({', '.join(map(str, cluster))}) and an index"
        )
    if index >= len(addresses):
        raise UserError(
            f"TF_CONFIG's task index {index} is outside its {task_type!r} job "
            f"of {len(addresses)} address(es)"
        )


def is_multi_worker(strategy: Any) -> bool:
    """True for MultiWorkerMirroredStrategy, the one strategy Keras's ``fit`` cannot drive."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def strategy_name(strategy: Any) -> str:
    """The public class name of ``strategy`` for logs and metadata.

    ``tf.distribute.MultiWorkerMirroredStrategy`` is an alias of the internal
    ``CollectiveAllReduceStrategy`` class, whose name users would not recognise.
    """
    return "MultiWorkerMirroredStrategy" if is_multi_worker(strategy) else type(strategy).__name__


def is_chief(strategy: Any) -> bool:
    """True on the one process that publishes: always, except on non-chief multi-worker tasks.

    The chief is the ``chief`` task when the cluster has one, else worker 0 (TensorFlow's
    convention); a multi-worker strategy without a cluster is a single worker, its own chief.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    return bool(
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs
    )


def weights_sha256(model: Any) -> str:
    """SHA-256 over every weight's dtype, shape and bytes, in ``model.weights`` order.

    Replicas of one synchronous run end with bit-identical weights, so equal digests across
    workers show that they trained together rather than side by side.
    """
    digest = hashlib.sha256()
    for value in model.get_weights():
        array = np.ascontiguousarray(value)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def shard_by_data(dataset: Any) -> Any:
    """Shard ``dataset`` across workers element by element (``AutoShardPolicy.DATA``).

    The pipelines start from in-memory arrays, not files, so the default FILE policy would
    fall back (with a warning) anyway. Every worker runs the same seeded pipeline and keeps
    its own slice of each global batch, so the workers see disjoint, complete shards.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _chief_only_callback_types() -> tuple[type, ...]:
    """Callbacks that only write files, which non-chief workers skip.

    Keras 3's versions know nothing of workers: on a shared file system every worker would
    write the same paths at once (and h5 files are locked while written). They take no part
    in collective work, so skipping them on non-chief workers is safe, and simpler than TF's
    other multi-worker pattern of writing to throw-away temp dirs: the chief's files are the
    run's files. BackupAndRestore's restore is broadcast from the chief, see
    :func:`_broadcast_state_from_chief`.
    """
    import keras

    return (
        keras.callbacks.BackupAndRestore,
        keras.callbacks.ModelCheckpoint,
        keras.callbacks.CSVLogger,
        keras.callbacks.TensorBoard,
    )


class _Steps:
    """The distributed train and test steps for one compiled model, traced once.

    Each step returns ``[sum of per-example losses, correct predictions, examples]`` summed
    over every replica of every worker (``strategy.reduce(SUM)``), so each worker derives the
    same epoch logs and its callbacks take the same decisions. ``element_spec`` is the
    distributed datasets' ``element_spec``: as the steps' input signature (batch dimension
    unknown) it keeps the short last batch from tracing the steps again.
    """

    def __init__(self, model: Any, strategy: Any, element_spec: Any) -> None:
        import keras
        import tensorflow as tf

        loss = keras.losses.get(model.loss)
        # A Loss object reduces over the batch; its ``call`` gives the per-example values.
        per_example_loss = loss.call if isinstance(loss, keras.losses.Loss) else loss
        optimizer = model.optimizer
        sum_op = tf.distribute.ReduceOp.SUM

        def stats(y: Any, y_pred: Any, losses: Any) -> Any:
            correct = keras.metrics.sparse_categorical_accuracy(y, y_pred)
            return tf.stack(
                [
                    tf.reduce_sum(tf.cast(losses, tf.float32)),
                    tf.reduce_sum(tf.cast(correct, tf.float32)),
                    tf.cast(tf.shape(y)[0], tf.float32),
                ]
            )

        def gradients(x: Any, y: Any, global_batch: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                losses = per_example_loss(y, y_pred)
                # The optimizer SUMs gradients over replicas, so each replica divides by the
                # GLOBAL batch: the update equals one step on the whole batch.
                loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)  # loss scaling under mixed precision
            grads = tape.gradient(scaled, model.trainable_weights)
            return grads, stats(y, y_pred, losses)

        if model.jit_compile:
            # XLA compiles the replica-local forward and backward pass; the gradient
            # all-reduce inside ``apply_gradients`` stays outside, as collectives must.
            gradients = tf.function(gradients, jit_compile=True, reduce_retracing=True)

        def replica_train(x: Any, y: Any) -> Any:
            context = tf.distribute.get_replica_context()
            # The last global batch is short and may split unevenly (even to empty replicas),
            # so the global batch size is counted, not assumed.
            global_batch = context.all_reduce(sum_op, tf.cast(tf.shape(y)[0], tf.float32))
            grads, batch_stats = gradients(x, y, tf.cast(global_batch, tf.int32))
            optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
            return batch_stats

        def replica_test(x: Any, y: Any) -> Any:
            y_pred = model(x, training=False)
            return stats(y, y_pred, per_example_loss(y, y_pred))

        @tf.function(input_signature=[element_spec])
        def train_step(batch: Any) -> Any:
            return strategy.reduce(sum_op, strategy.run(replica_train, args=batch), axis=None)

        @tf.function(input_signature=[element_spec])
        def test_step(batch: Any) -> Any:
            return strategy.reduce(sum_op, strategy.run(replica_test, args=batch), axis=None)

        self.train_step = train_step
        self.test_step = test_step

    def evaluate(self, dist_dataset: Any, callbacks: Any = None) -> dict[str, float]:
        """One pass over a distributed dataset -> ``{"loss", "accuracy"}`` over all workers."""
        if callbacks is not None:
            callbacks.on_test_begin()
        totals = np.zeros(3)
        for step, batch in enumerate(dist_dataset):
            if callbacks is not None:
                callbacks.on_test_batch_begin(step)
            totals += self.test_step(batch).numpy()
            if callbacks is not None:
                callbacks.on_test_batch_end(step, _logs(totals))
        logs = _logs(totals)
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs


def _logs(totals: np.ndarray) -> dict[str, float]:
    """[loss sum, correct, examples] -> Keras-style logs (means over examples)."""
    count = max(float(totals[2]), 1.0)
    return {"loss": float(totals[0]) / count, "accuracy": float(totals[1]) / count}


def _broadcast_state_from_chief(model: Any, strategy: Any, initial_epoch: int) -> int:
    """Give every worker the chief's weights, optimizer state and starting epoch.

    Only the chief restores a backup (BackupAndRestore is chief-only, see above), and restored
    values are loaded locally, never synchronised by MultiWorkerMirroredStrategy. A SUM over
    replicas where only one replica on the chief contributes its values is a broadcast.
    Returns the chief's initial epoch.
    """
    import tensorflow as tf

    state = [*model.weights, *model.optimizer.variables]
    values = [np.asarray(v.numpy()) for v in state]
    values.append(np.asarray(initial_epoch, dtype=np.int64))
    local_replicas = len(strategy.extended.worker_devices)
    chief = is_chief(strategy)

    def contribution(context: Any) -> list[Any]:
        mine = chief and context.replica_id_in_sync_group % local_replicas == 0
        return [tf.constant(v if mine else np.zeros_like(v)) for v in values]

    per_replica = strategy.experimental_distribute_values_from_function(contribution)
    summed = [
        strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
        for value in per_replica
    ]
    for variable, value in zip(state, summed[:-1], strict=True):
        variable.assign(value)
    return int(summed[-1])


def _train_epoch(
    model: Any, steps: _Steps, train_dist: Any, callback_list: Any
) -> dict[str, float]:
    """One pass over the distributed training batches, driving the batch callbacks; returns
    the epoch's ``{"loss", "accuracy"}`` over every worker."""
    totals = np.zeros(3)
    for step, batch in enumerate(train_dist):
        callback_list.on_train_batch_begin(step)
        totals += steps.train_step(batch).numpy()
        callback_list.on_train_batch_end(step, _logs(totals))
        # Callbacks see the same global logs on every worker, so all stop together.
        if model.stop_training:
            break
    return _logs(totals)


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
    """Keras ``fit`` for MultiWorkerMirroredStrategy (where Keras 3's own ``fit`` fails:
    keras-team/keras#20585). Returns ``History.history`` like ``fit(...).history``.

    ``model`` must have been built and compiled inside ``strategy.scope()``; ``train_ds`` and
    ``val_ds`` yield ``(images, labels)`` batches of the GLOBAL batch size (per-replica batch
    times ``strategy.num_replicas_in_sync``). Every worker calls this with the same arguments.

    The loop is ``fit``'s: ``on_train_begin``, then per epoch ``on_epoch_begin``, the train
    batches between ``on_train_batch_begin``/``_end``, a validation pass between
    ``on_test_begin``/``_end``, ``on_epoch_end`` with ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``; it stops when a callback sets ``model.stop_training``, resumes from the
    epoch ``BackupAndRestore`` restored, and ends with ``on_train_end`` (where EarlyStopping
    restores the best weights). ``verbose`` > 0 logs one line per epoch.
    """
    import keras

    chief = is_chief(strategy)
    if not chief:
        callbacks = [cb for cb in callbacks if not isinstance(cb, _chief_only_callback_types())]
    train_dist = strategy.experimental_distribute_dataset(shard_by_data(train_ds))
    val_dist = strategy.experimental_distribute_dataset(shard_by_data(val_ds))
    with strategy.scope():
        # Create the optimizer's slots on every worker before any callback loads a backup
        # (fit does the same in its symbolic build), so all workers hold the same variables.
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_weights)
    steps = _Steps(model, strategy, train_dist.element_spec)
    batches = int(train_ds.cardinality())
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=False,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=batches if batches > 0 else None,
    )

    model.stop_training = False
    callback_list.on_train_begin()
    # BackupAndRestore reports the epoch to resume from through fit's private attribute.
    initial_epoch = _broadcast_state_from_chief(model, strategy, model._initial_epoch or 0)
    training_logs: dict[str, float] | None = None
    for epoch in range(initial_epoch, epochs):
        started = time.monotonic()
        callback_list.on_epoch_begin(epoch)
        epoch_logs = _train_epoch(model, steps, train_dist, callback_list)
        val_logs = steps.evaluate(val_dist, callback_list)
        epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if verbose:
            logger.info(
                "epoch %d/%d - %.1f s - %s",
                epoch + 1,
                epochs,
                time.monotonic() - started,
                " - ".join(f"{name}: {value:.4f}" for name, value in epoch_logs.items()),
            )
        training_logs = epoch_logs
        if model.stop_training:
            break

    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=training_logs)
    model._initial_epoch = None
    history: dict[str, list[float]] = model.history.history
    return history


def evaluate_multi_worker(model: Any, strategy: Any, dataset: Any) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``dataset`` (global batches), like
    ``model.evaluate``; all workers compute it together with the training loop's test step
    and get the same numbers."""
    dist = strategy.experimental_distribute_dataset(shard_by_data(dataset))
    logs = _Steps(model, strategy, dist.element_spec).evaluate(dist)
    return logs["loss"], logs["accuracy"]


def predict_locally(model: Any, dataset: Any) -> np.ndarray:
    """Class probabilities for every batch of ``dataset``, in order, on this worker alone.

    Weights are identical on every worker, so no collective work is needed; calling the model
    directly avoids ``Model.predict``'s distributed path (which shards and regathers).
    """
    import tensorflow as tf

    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return np.concatenate([predict(x).numpy() for x, _ in dataset], axis=0)


# ---------------------------------------------------------------------------------------
# One choice of loop per run
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """How a compiled model is trained, scored and run under its strategy, chosen once.

    Attributes:
        fit: ``fit(train_ds, val_ds, *, epochs, callbacks, verbose)`` -> ``History.history``
            (``{"loss": [...], "val_loss": [...], ...}``, one value per epoch run).
        evaluate: ``evaluate(dataset)`` -> ``(loss, accuracy)`` over the whole dataset.
        predict: ``predict(dataset)`` -> class probabilities ``(N, classes)`` in dataset order.
    """

    fit: Callable[..., dict[str, list[float]]]
    evaluate: Callable[[Any], tuple[float, float]]
    predict: Callable[[Any], np.ndarray]


def _keras_fit(
    model: Any, train_ds: Any, val_ds: Any, *, epochs: int, callbacks: list[Any], verbose: int
) -> dict[str, list[float]]:
    history: dict[str, list[float]] = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # tf.data shuffles
        verbose=verbose,
    ).history
    return history


def _keras_evaluate(model: Any, dataset: Any) -> tuple[float, float]:
    loss, accuracy = model.evaluate(dataset, verbose=0)
    return float(loss), float(accuracy)


def _keras_predict(model: Any, dataset: Any) -> np.ndarray:
    return np.asarray(model.predict(dataset, verbose=0))


def training_loop(model: Any, strategy: Any) -> Loop:
    """Keras's own ``fit``/``evaluate``/``predict``, or, under MultiWorkerMirroredStrategy
    (where Keras 3's fail), :func:`fit_multi_worker`, :func:`evaluate_multi_worker` and
    :func:`predict_locally`. ``model`` must have been compiled inside ``strategy.scope()``."""
    if is_multi_worker(strategy):
        return Loop(
            fit=functools.partial(fit_multi_worker, model, strategy),
            evaluate=functools.partial(evaluate_multi_worker, model, strategy),
            predict=functools.partial(predict_locally, model),
        )
    return Loop(
        fit=functools.partial(_keras_fit, model),
        evaluate=functools.partial(_keras_evaluate, model),
        predict=functools.partial(_keras_predict, model),
    )
