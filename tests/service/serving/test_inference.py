"""The batch function: one model call per version of a batch, and a version whose call fails
fails only its own images."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.inference import InferenceItem, make_batch_fn
from service.serving.model_store import LoadedModel
from tests.helpers.models import loaded_model


class Stable(LoadedModel):
    def predict(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), self.metadata.num_classes), dtype=np.float32)
        out[:, 0] = 1.0
        return out


class Broken(LoadedModel):
    def predict(self, images: np.ndarray) -> np.ndarray:
        raise RuntimeError("the canary's graph is broken")


def model(kind: type[LoadedModel], version: int) -> LoadedModel:
    template = loaded_model(version)
    return kind(metadata=template.metadata, path=template.path, module=None)


def image() -> np.ndarray:
    return np.zeros((8, 8, 3), dtype=np.float32)


def test_a_failing_canary_fails_only_its_own_images_in_a_mixed_batch() -> None:
    stable, canary = model(Stable, 1), model(Broken, 2)
    items = [InferenceItem(image(), m) for m in (stable, canary, stable, canary)]
    results = make_batch_fn()(items)
    assert [r.model.version for r in results] == [1, 2, 1, 2]
    assert [r.error for r in results] == [None, "RuntimeError", None, "RuntimeError"]
    assert results[0].probabilities.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_batch_of_one_failing_version_fails_as_a_whole() -> None:
    canary = model(Broken, 2)
    with pytest.raises(RuntimeError, match="broken"):
        make_batch_fn()([InferenceItem(image(), canary), InferenceItem(image(), canary)])
    other = model(Broken, 3)
    with pytest.raises(RuntimeError, match="broken"):  # every version failed
        make_batch_fn()([InferenceItem(image(), canary), InferenceItem(image(), other)])
