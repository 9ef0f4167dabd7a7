"""Held-out digits for the protocol tests, and what ``/predict`` says of them: every protocol
(REST or gRPC) must give the same probabilities for the same images."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.helpers.images import gray_png
from tests.helpers.models import republish
from training.data import load_digits_data

COUNT = 8  # held-out digits sent through every protocol
#: ``/predict`` rounds scores to 6 decimals.
TOLERANCE = 1e-6


#: Both versions served; ``stable`` names 1 (what an unpinned request gets), ``canary`` 2.
SERVING_YAML = """\
models:
  digits:
    version_policy: all
    labels:
      stable: 1
      canary: 2
"""


def two_version_repo(trained_repo: Path, target: Path) -> Path:
    """``target``: digits 1 (trained) and 2 (the same SavedModel republished), labelled."""
    shutil.copytree(trained_repo, target)
    assert republish(target, 1) == 2
    (target / "serving.yaml").write_text(SERVING_YAML)
    return target


def held_out(count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test-split digits (gray (N, 28, 28) uint8) and their labels."""
    test = load_digits_data(0.1).test
    return test.images[:count, ..., 0], test.labels[:count]


def rgb_pixels(gray: np.ndarray) -> np.ndarray:
    """Gray (N, H, W) uint8 -> the model's input, (N, H, W, 3) float32 pixels 0..255."""
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


class Digits:
    """Held-out digits: grey pixels, RGB float pixels, PNG files, and what /predict says."""

    def __init__(self, gray: np.ndarray, labels: np.ndarray) -> None:
        self.gray = gray  # (N, 28, 28) uint8
        self.labels = labels
        self.rgb = rgb_pixels(gray)  # (N, 28, 28, 3)
        self.pngs = [gray_png(image) for image in gray]
        self.b64 = [base64.b64encode(data).decode() for data in self.pngs]
        self.class_names: list[str] = []
        self.reference = np.zeros((len(gray), 0))


def held_out_digits(http: httpx.Client, count: int = COUNT) -> Digits:
    """One held-out digit of each of the first ``count`` classes, with ``/predict``'s answer."""
    test = load_digits_data(0.1).test
    picks = [int(np.flatnonzero(test.labels == d)[0]) for d in range(count)]
    found = Digits(test.images[picks, ..., 0], test.labels[picks])
    found.class_names = http.get("/v2/models/digits").json()["parameters"]["class_names"]
    files = [("file", (f"digit-{i}.png", data, "image/png")) for i, data in enumerate(found.pngs)]
    response = http.post("/predict", files=files, params={"top_k": len(found.class_names)})
    assert response.status_code == 200, response.text
    rows = []
    for result in response.json()["results"]:
        scores = {p["label"]: p["score"] for p in result["predictions"]}
        rows.append([scores[name] for name in found.class_names])
    found.reference = np.array(rows)
    # The model is good: the reference itself is right for these digits.
    assert (found.reference.argmax(axis=1) == found.labels).mean() >= 0.75
    return found


def assert_same_probabilities(probabilities: Any, digits: Digits) -> None:
    array = np.asarray(probabilities, dtype=np.float64)
    assert array.shape == digits.reference.shape
    np.testing.assert_allclose(array, digits.reference, rtol=0, atol=TOLERANCE)
