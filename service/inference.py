"""The model call the batcher runs (in its dedicated thread) and the top-k post-processing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.model_store import LoadedModel, ModelStore
from service.state import Prediction


class NoModelError(RuntimeError):
    """No version is loaded yet."""


def make_batch_fn(store: ModelStore) -> Callable[[list[np.ndarray]], Sequence[Prediction]]:
    """Return the batcher's ``batch_fn``: stack the images and make one model call.

    The serving version is read once per batch, so a hot swap never splits a batch. Images
    decoded for a different input size (uploads decoded just before a swap to a version with
    another size) are run as their own group; the model resizes them itself.
    """

    def run_batch(images: list[np.ndarray]) -> list[Prediction]:
        model = store.current
        if model is None:
            raise NoModelError("no model is loaded")
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        results: list[Prediction | None] = [None] * len(images)
        for indices in groups.values():
            batch = (
                images[indices[0]][None]
                if len(indices) == 1
                else np.stack([images[i] for i in indices])
            )
            probabilities = model.predict(batch)
            for row, index in enumerate(indices):
                results[index] = Prediction(probabilities[row], model)
        return results  # type: ignore[return-value]

    return run_batch


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes as [{"label", "score"}], highest first."""
    k = min(k, probabilities.shape[0])
    if k < probabilities.shape[0]:
        candidates = np.argpartition(-probabilities, k - 1)[:k]
    else:
        candidates = np.arange(probabilities.shape[0])
    order = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [{"label": class_names[i], "score": round(float(probabilities[i]), 6)} for i in order]


def model_ref(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version}
