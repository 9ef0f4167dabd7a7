"""Running images through a model's batcher: the batch function, its errors, and top-k.

Every protocol (``/predict``, TF Serving, Open Inference Protocol) ends here: decoded images of
one request are queued together on the chosen model's batcher with the version they must run on,
ONE model call per batch computes them, and the probabilities come back in request order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.serving.batching import (
    Batcher,
    BatchFunctionError,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
)
from service.serving.errors import DeadlineExceeded, ModelFailed, QueueFull, ShuttingDown

logger = logging.getLogger(__name__)
#: What a failed image's ``probabilities`` holds.
_NO_PROBABILITIES = np.zeros(0, dtype=np.float32)

if TYPE_CHECKING:
    from service.serving.model_store import LoadedModel


@dataclass(frozen=True, slots=True)
class InferenceItem:
    """One decoded image, (H, W, 3) float32 0..255, and the version it must run on."""

    image: np.ndarray
    model: LoadedModel


@dataclass(frozen=True, slots=True)
class Prediction:
    """One image's class probabilities and the version that computed them."""

    probabilities: np.ndarray  # (num_classes,) float32; empty when ``error`` is set
    model: LoadedModel
    #: The model call of this image's version failed while another version of the same batch
    #: succeeded: only this version's requests fail (see ``make_batch_fn``).
    error: str | None = None


def make_batch_fn() -> Callable[[list[InferenceItem]], Sequence[Prediction]]:
    """Return a batcher's ``batch_fn``: stack the images and make one model call per version.

    A batch usually holds one version; a canary beside its stable version, or uploads decoded
    just before a hot swap to a version with another input size, are run as their own groups.
    A group whose call raises fails only its own images when another group succeeded (a
    faulty canary must not fail the stable version's requests it was batched with); when
    every group fails, the batch fails as a whole, as a single-version batch does.
    """

    def run_batch(items: list[InferenceItem]) -> list[Prediction]:
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault((id(item.model), item.image.shape), []).append(index)
        results: list[Prediction | None] = [None] * len(items)
        first_error: Exception | None = None
        for indices in groups.values():
            model = items[indices[0]].model
            batch = (
                items[indices[0]].image[None]
                if len(indices) == 1
                else np.stack([items[i].image for i in indices])
            )
            if len(groups) == 1:
                probabilities = model.predict(batch)  # raises: the batch fails, as ever
            else:
                try:
                    probabilities = model.predict(batch)
                except Exception as exc:
                    logger.error(
                        "model %s version %s failed on %d images of a mixed batch: %s",
                        model.name,
                        model.version,
                        len(indices),
                        exc,
                        exc_info=exc,
                    )
                    failure = type(exc).__name__
                    for index in indices:
                        results[index] = Prediction(_NO_PROBABILITIES, model, failure)
                    first_error = first_error or exc
                    continue
            for row, index in enumerate(indices):
                results[index] = Prediction(probabilities[row], model)
        if first_error is not None and all(
            result is not None and result.error for result in results
        ):
            raise first_error  # every version failed: the batch fails as a whole
        return results  # type: ignore[return-value]

    return run_batch


async def classify(
    batcher: Batcher[InferenceItem, Prediction],
    model: LoadedModel,
    images: Sequence[np.ndarray],
    *,
    timeout_s: float,
) -> list[Prediction]:
    """Queue every image of one request on ``batcher`` to run on ``model``; await all.

    Raises (each already counted as a rejection by the batcher, except a failed model call):
        QueueFull, ShuttingDown: retry after a delay (elsewhere, when shutting down).
        DeadlineExceeded: no result within ``timeout_s``; the images were not computed.
        ModelFailed: the model call raised on this batch.
    """
    try:
        predictions = await batcher.submit_many(
            [InferenceItem(image, model) for image in images], timeout_s=timeout_s
        )
    except QueueFullError:
        raise QueueFull(
            f"model {model.name!r} is at capacity (queue full); retry after the Retry-After delay",
            counted=True,
        ) from None
    except ShuttingDownError:
        raise ShuttingDown(
            "the service is shutting down; retry on another replica", counted=True
        ) from None
    except DeadlineExceededError:
        raise DeadlineExceeded(
            f"no result within the {timeout_s:g} s deadline; retry later", counted=True
        ) from None
    except BatchFunctionError as exc:
        cause = exc.__cause__ or exc
        raise ModelFailed(
            f"the model failed on this batch ({type(cause).__name__}); retry"
        ) from None
    for prediction in predictions:
        if prediction.error is not None:
            raise ModelFailed(f"the model failed on this batch ({prediction.error}); retry")
    return predictions


#: Up to this many classes, top-k sorts a Python list: numpy's per-call overhead on a tiny
#: array (argpartition, argsort, fancy indexing) costs more than the sort itself.
_SMALL_CLASS_COUNT = 64


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes as [{"label", "score"}], highest first, ties in class
    order (at most every class: a ``k`` above the number of classes returns them all)."""
    count = probabilities.shape[0]
    k = min(k, count)
    if count <= _SMALL_CLASS_COUNT:
        values = probabilities.tolist()
        ranked = sorted(range(count), key=values.__getitem__, reverse=True)[:k]
        return [{"label": class_names[i], "score": round(values[i], 6)} for i in ranked]
    if k < count:
        candidates = np.sort(np.argpartition(-probabilities, k - 1)[:k])
    else:
        candidates = np.arange(count)
    order = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [{"label": class_names[i], "score": round(float(probabilities[i]), 6)} for i in order]


def model_ref(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version}
