"""The explanation endpoints inside the published SavedModel: signatures, shapes, and sanity.

Sanity (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): the map must be about
the image (a digit moved into a corner moves the heat there) and about the trained weights (the
same architecture with random weights draws a different map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.metadata import read_metadata
from training.data import load_digits_data
from training.explain import (
    EXPLAIN_ENDPOINTS,
    FEATURE_MAPS_ENDPOINT,
    GRADCAM_ENDPOINT,
    _softmax_head,
    feature_maps_endpoint,
    gradcam_endpoint,
)

#: The default "simple" model on 28x28: conv2 (the last conv) sees 14x14 after pool1.
CONV_GRID = 14


@pytest.fixture(scope="module")
def loaded(trained_repo: Path) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(trained_repo / "digits" / "1"))


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """One held-out (test split) digit per class, 28x28 grey uint8, and its label."""
    test = load_digits_data(0.1).test
    images, labels = test.images[..., 0], test.labels
    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    return images[picks], labels[picks]


def rgb(gray: np.ndarray) -> np.ndarray:
    """(..., H, W) grey -> (..., H, W, 3) float32 0..255, the serving input."""
    return np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)


def gradcam(fn: Any, images: np.ndarray, class_index: list[int]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    out = fn(tf.constant(images, tf.float32), tf.constant(class_index, tf.int32))
    return {key: np.asarray(value) for key, value in out.items()}


def corner_canvas(digit: np.ndarray, size: int = 56) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[: digit.shape[0], : digit.shape[1]] = digit
    return canvas


@pytest.mark.e2e  # the shared trained model
def test_published_version_has_serve_first_then_the_explanation_endpoints(
    trained_repo: Path, loaded: Any
) -> None:
    metadata = read_metadata(trained_repo / "digits" / "1")
    assert metadata.endpoints == ["serve", GRADCAM_ENDPOINT, FEATURE_MAPS_ENDPOINT]
    assert len(EXPLAIN_ENDPOINTS) == 2
    for name in metadata.endpoints:
        assert hasattr(loaded, name)
    # serving_default is still the classifier (TF Serving, saved_model_cli).
    default = loaded.signatures["serving_default"]
    (output,) = default.structured_outputs.values()
    assert output.shape.as_list() == [None, 10]


@pytest.mark.e2e  # the shared trained model
def test_gradcam_returns_normalised_maps_the_serve_probabilities_and_the_class(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    import tensorflow as tf

    images, labels = held_out
    batch = rgb(images[:3])
    out = gradcam(loaded.gradcam, batch, [-1, 5, -1])

    assert out["heatmap"].shape == (3, CONV_GRID, CONV_GRID)
    assert out["heatmap"].dtype == np.float32
    assert out["heatmap"].min() >= 0.0
    np.testing.assert_allclose(out["heatmap"].max(axis=(1, 2)), 1.0, rtol=1e-6)
    served = np.asarray(loaded.serve(tf.constant(batch)))
    np.testing.assert_allclose(out["probabilities"], served, atol=1e-5)
    # -1 explains the top class (here the true one), anything else that class.
    assert out["class_index"].tolist() == [int(labels[0]), 5, int(labels[2])]
    assert served.argmax(axis=1)[[0, 2]].tolist() == [int(labels[0]), int(labels[2])]


@pytest.mark.e2e  # the shared trained model
def test_gradcam_accepts_any_image_size_and_explains_different_classes_differently(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    from PIL import Image

    images, _labels = held_out
    big = np.asarray(Image.fromarray(images[7]).resize((100, 60)))
    out = gradcam(loaded.gradcam, rgb(big[None].repeat(2, axis=0)), [7, 1])
    assert out["heatmap"].shape == (2, CONV_GRID, CONV_GRID)
    assert not np.allclose(out["heatmap"][0], out["heatmap"][1], atol=0.05)


@pytest.mark.e2e  # the shared trained model
def test_gradcam_refuses_a_class_index_out_of_range(loaded: Any) -> None:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="class_index"):
        gradcam(loaded.gradcam, np.zeros((1, 28, 28, 3), np.float32), [10])


@pytest.mark.e2e  # the shared trained model
def test_feature_maps_are_the_first_two_conv_layers_activations(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    import tensorflow as tf

    images, _labels = held_out
    maps = loaded.feature_maps(tf.constant(rgb(images[:2])))
    shapes = {name: tuple(value.shape) for name, value in maps.items()}
    assert shapes == {"conv1": (2, 28, 28, 32), "conv2": (2, 14, 14, 64)}
    conv1 = np.asarray(maps["conv1"])
    assert conv1.min() >= 0.0  # after the ReLU
    # The maps follow the image: the ink pixels change the activations, blank corners don't.
    assert np.abs(conv1[0] - conv1[1]).max() > 0.1


@pytest.mark.e2e  # the shared trained model
def test_heatmap_peak_follows_a_digit_pasted_into_the_top_left_corner(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """A 28x28 digit in the top-left quadrant of a blank 56x56 canvas; the model shrinks the
    canvas to 28x28, so the digit covers the top-left 7x7 cells of the 14x14 conv grid. The
    peak must lie there (one cell of slack: a conv2 cell's receptive field is 8 input pixels
    wide, so the cell just past the edge still sees ink), and that quadrant must hold the most
    heat. One held-out digit per class, each explained for the class the model predicts."""
    images, _labels = held_out
    canvases = rgb(np.stack([corner_canvas(image) for image in images]))
    out = gradcam(loaded.gradcam, canvases, [-1] * len(images))
    half = CONV_GRID // 2
    for digit, heatmap in enumerate(out["heatmap"]):
        row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
        assert row <= half and col <= half, f"digit {digit}: peak at {(row, col)}\n{heatmap}"
        quadrants = [
            heatmap[:half, :half].sum(),
            heatmap[:half, half:].sum(),
            heatmap[half:, :half].sum(),
            heatmap[half:, half:].sum(),
        ]
        assert int(np.argmax(quadrants)) == 0, f"digit {digit}: heat by quadrant {quadrants}"


@pytest.mark.e2e  # the shared trained model
def test_a_model_with_random_weights_draws_a_different_map(
    loaded: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """Model-parameter randomisation: the same architecture, untrained, through the same
    endpoint factory, explaining the same class of the same centred digits."""
    import keras
    import tensorflow as tf

    from training.architectures import build

    images, _labels = held_out
    batch = rgb(images)
    trained = gradcam(loaded.gradcam, batch, [-1] * len(images))

    keras.utils.set_random_seed(1234)
    _name, fn, signature = gradcam_endpoint(build("simple", (28, 28, 1), 10))
    random_maps = gradcam(
        tf.function(fn, input_signature=signature), batch, trained["class_index"].tolist()
    )
    correlations = [
        float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if b.std() > 0 else 0.0
        for a, b in zip(trained["heatmap"], random_maps["heatmap"], strict=True)
    ]
    assert float(np.mean(correlations)) < 0.5, correlations
    mean_abs_difference = float(np.abs(trained["heatmap"] - random_maps["heatmap"]).mean())
    assert mean_abs_difference > 0.1


def test_factories_work_on_lenet5_and_refuse_a_model_without_convolutions() -> None:
    import keras
    import tensorflow as tf

    from training.architectures import build

    model = build("lenet5", (32, 32, 1), 4)
    assert _softmax_head(model) is model.get_layer("predictions")  # Grad-CAM on the logits
    _name, fn, signature = gradcam_endpoint(model)
    out = gradcam(tf.function(fn, input_signature=signature), np.ones((2, 40, 40, 3)) * 99, [-1, 2])
    assert out["heatmap"].shape == (2, 10, 10)  # conv2: 32 -> 28 -> 14 -> 10
    assert out["probabilities"].shape == (2, 4)
    _name, fn, signature = feature_maps_endpoint(model)
    maps = tf.function(fn, input_signature=signature)(tf.zeros((1, 32, 32, 3)))
    assert {name: tuple(value.shape) for name, value in maps.items()} == {
        "conv1": (1, 28, 28, 6),
        "conv2": (1, 10, 10, 16),
    }

    inputs = keras.Input((8, 8, 3))
    dense = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    for factory in (gradcam_endpoint, feature_maps_endpoint):
        with pytest.raises(ValueError, match="no Conv2D"):
            factory(dense)
