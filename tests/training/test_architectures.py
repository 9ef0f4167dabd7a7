"""Model builders: published parameter counts, the serving contract, size checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.architectures import (
    ARCHITECTURES,
    InputTooSmallError,
    RGBToGrayscale,
    UnknownArchitectureError,
    build,
    describe_model,
    min_input_size,
)
from training.conv_math import format_table

# What Grad-CAM looks up: the last convolution of each architecture.
LAST_CONV = {"simple": "conv2", "lenet5": "conv2", "alexnet": "conv5", "vgg16": "conv5_3"}


@pytest.fixture(scope="module")
def vgg16() -> Iterator[keras.Model]:
    model = build("vgg16", (224, 224, 3), 1000)  # ~550 MB of float32 weights: build once
    yield model
    del model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def alexnet() -> Iterator[keras.Model]:
    model = build("alexnet", (227, 227, 3), 1000)
    yield model
    del model
    keras.backend.clear_session()


def formula_total(model: keras.Model) -> int:
    rows = describe_model(model)
    assert all(r.params_from_formula is not None for r in rows)
    return sum(r.params_from_formula or 0 for r in rows)


def images(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Raw RGB pixel values, the serving contract: float32 in [0, 255]."""
    return rng.uniform(0, 255, size=shape).astype("float32")


# ---------------------------------------------------------------------------------------
# Published parameter counts
# ---------------------------------------------------------------------------------------


def test_lenet5_has_61706_parameters() -> None:
    model = build("lenet5", (32, 32, 1), 10)
    assert model.count_params() == 61_706
    assert formula_total(model) == 61_706


def test_alexnet_has_62378344_parameters(alexnet: keras.Model) -> None:
    assert alexnet.count_params() == 62_378_344
    assert formula_total(alexnet) == 62_378_344


def test_vgg16_has_138357544_parameters(vgg16: keras.Model) -> None:
    assert vgg16.count_params() == 138_357_544
    assert formula_total(vgg16) == 138_357_544
    convs = [layer for layer in vgg16.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in vgg16.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(convs) == 13
    assert len(pools) == 5
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)


# ---------------------------------------------------------------------------------------
# Formula and Keras agree layer by layer
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes"),
    [
        ("simple", (28, 28, 1), 10),
        ("simple", (64, 64, 3), 5),
        ("lenet5", (28, 28, 1), 10),
        ("lenet5", (40, 33, 3), 7),
    ],
)
def test_formulas_agree_with_keras_small(
    name: str, input_shape: tuple[int, int, int], num_classes: int
) -> None:
    rows = describe_model(build(name, input_shape, num_classes))
    disagreeing = [(r.name, r.formula) for r in rows if not r.agrees]
    assert disagreeing == []
    assert rows[-1].shape_from_formula == (num_classes,)


def test_formulas_agree_with_keras_alexnet(alexnet: keras.Model) -> None:
    rows = describe_model(alexnet)
    assert all(r.agrees for r in rows), format_table(rows)
    by_name = {r.name: r for r in rows}
    assert by_name["conv1"].shape_from_formula == (55, 55, 96)
    assert by_name["pool5"].shape_from_formula == (6, 6, 256)
    assert by_name["flatten"].shape_from_formula == (9_216,)


def test_formulas_agree_with_keras_vgg16(vgg16: keras.Model) -> None:
    rows = describe_model(vgg16)
    assert all(r.agrees for r in rows), format_table(rows)
    assert {r.name: r for r in rows}["pool5"].shape_from_formula == (7, 7, 512)


# ---------------------------------------------------------------------------------------
# The serving contract
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_input_and_output_contract(name: str, alexnet: keras.Model, vgg16: keras.Model) -> None:
    model = {"alexnet": alexnet, "vgg16": vgg16}.get(name) or build(name, (32, 32, 3), 10)
    (inputs,) = model.inputs
    assert inputs.shape == (None, None, None, 3)
    assert inputs.dtype == "float32"
    assert model.layers[0].name == "images"
    names = [layer.name for layer in model.layers]
    assert names[1:3] == ["resize", "rescale"]
    resize = model.get_layer("resize")
    assert resize.antialias is True
    assert resize.interpolation == "bilinear"
    assert float(model.get_layer("rescale").scale) == pytest.approx(1 / 255)
    predictions = model.layers[-1]
    assert predictions.name == "predictions"
    assert predictions.dtype_policy.compute_dtype == "float32"
    assert predictions.activation is keras.activations.softmax
    # One flat model, so Grad-CAM can reach the last convolution directly.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[-1] == LAST_CONV[name]


@pytest.mark.parametrize("size", [(17, 40), (100, 100), (28, 28)])
def test_any_input_size_gives_probabilities(size: tuple[int, int]) -> None:
    model = build("simple", (28, 28, 1), 10)
    probs = np.asarray(model(images(np.random.default_rng(0), 2, *size, 3)))
    assert probs.shape == (2, 10)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_grayscale_model_sees_an_equal_channel_rgb_image_as_the_gray_image() -> None:
    model = build("simple", (28, 28, 1), 10)
    gray = images(np.random.default_rng(1), 1, 28, 28, 1)
    rgb = np.repeat(gray, 3, axis=-1)
    # Feed the gray image straight into the layers after "grayscale".
    x = tf.constant(gray)
    for layer in model.layers[2:]:
        x = layer(x)
    np.testing.assert_allclose(np.asarray(model(rgb)), np.asarray(x), rtol=1e-3, atol=1e-5)


def test_rgb_model_has_no_grayscale_layer() -> None:
    model = build("simple", (28, 28, 3), 3)
    assert "grayscale" not in [layer.name for layer in model.layers]
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 32)


def test_mixed_precision_keeps_float32_probabilities() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build("simple", (28, 28, 1), 10)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_saved_and_loaded_model_gives_the_same_predictions(tmp_path: Path) -> None:
    model = build("lenet5", (32, 32, 1), 10)
    path = tmp_path / "lenet5.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: RGBToGrayscale is registered
    assert isinstance(loaded.get_layer("grayscale"), RGBToGrayscale)
    x = images(np.random.default_rng(2), 1, 45, 30, 3)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


# ---------------------------------------------------------------------------------------
# RGBToGrayscale
# ---------------------------------------------------------------------------------------


def test_rgb_to_grayscale_matches_tensorflow() -> None:
    x = images(np.random.default_rng(3), 2, 5, 7, 3)
    layer = RGBToGrayscale()
    out = np.asarray(layer(x))
    assert out.shape == (2, 5, 7, 1)
    np.testing.assert_allclose(out, np.asarray(tf.image.rgb_to_grayscale(x)), rtol=1e-5)
    # A pure-colour pixel gives that colour's weight.
    red = np.zeros((1, 1, 1, 3), "float32")
    red[..., 0] = 1.0
    assert float(np.asarray(layer(red)).item()) == pytest.approx(0.2989)
    assert layer.count_params() == 0


def test_rgb_to_grayscale_keeps_dtype() -> None:
    pixels = np.array([[[[255, 0, 0], [10, 20, 30]]]], dtype="uint8")
    out = RGBToGrayscale()(pixels)
    assert keras.backend.standardize_dtype(out.dtype) == "uint8"
    np.testing.assert_array_equal(np.asarray(out)[0, 0, :, 0], [76, 18])  # round(0.2989*255) = 76
    half = RGBToGrayscale(dtype="float16")(pixels.astype("float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"


def test_rgb_to_grayscale_shape_and_config() -> None:
    layer = RGBToGrayscale(name="gray")
    assert layer.compute_output_shape((None, None, None, 3)) == (None, None, None, 1)
    with pytest.raises(ValueError, match="3 channels"):
        layer.compute_output_shape((None, 8, 8, 4))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, RGBToGrayscale)
    assert clone.name == "gray"
    assert keras.saving.get_registered_name(RGBToGrayscale) == "imgcls>RGBToGrayscale"


# ---------------------------------------------------------------------------------------
# Size checks and errors
# ---------------------------------------------------------------------------------------


def test_alexnet_on_28x28_says_what_is_needed() -> None:
    with pytest.raises(InputTooSmallError) as info:
        build("alexnet", (28, 28, 3), 10)
    message = str(info.value)
    # conv1: floor((28-11)/4)+1 = 5; pool1: floor((5-3)/2)+1 = 2; conv2 keeps 2; pool2: 0.
    assert message.startswith(
        "alexnet needs at least 67x67 input; 28x28 shrinks to 0 at layer pool2"
    )
    assert "floor((2+2*0-3)/2)+1 = 0" in message
    assert isinstance(info.value, ValueError)


def test_unknown_architecture_lists_the_valid_names() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        build("resnet50", (224, 224, 3), 10)
    assert str(info.value) == (
        "unknown architecture 'resnet50'; choose one of: simple, lenet5, alexnet, vgg16"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownArchitectureError):
        min_input_size("resnet50")


@pytest.mark.parametrize(
    ("input_shape", "num_classes", "match"),
    [
        ((28, 28, 2), 10, "channels must be 1 .grayscale. or 3 .RGB., got 2"),
        ((28, 28, 4), 10, "channels must be 1"),
        ((28, 0, 1), 10, "three positive integers"),
        ((28, 28), 10, r"\(height, width, channels\)"),
        ((28, 28, 1), 1, "num_classes must be an integer >= 2"),
    ],
)
def test_bad_arguments_are_value_errors(
    input_shape: tuple[int, int, int], num_classes: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build("simple", input_shape, num_classes)


def test_min_input_sizes_follow_from_the_arithmetic() -> None:
    # simple: two 2x2 pools -> 4; LeNet-5: two valid 5x5 convs and two pools -> 16;
    # AlexNet: 11/4 conv and three 3/2 pools -> 67; VGG-16: five 2x2 pools -> 2**5 = 32.
    assert {name: min_input_size(name) for name in ARCHITECTURES} == {
        "simple": 4,
        "lenet5": 16,
        "alexnet": 67,
        "vgg16": 32,
    }


@pytest.mark.parametrize(
    ("name", "channels"), [("simple", 1), ("lenet5", 1), ("alexnet", 3), ("vgg16", 3)]
)
def test_builds_at_min_and_fails_one_below(name: str, channels: int) -> None:
    side = min_input_size(name)
    model = build(name, (side, side, channels), 2)
    rows = describe_model(model)
    assert all(r.agrees for r in rows)
    # The last pooling layer is down to 1x1: exactly at the limit.
    spatial = [r.shape_from_keras for r in rows if len(r.shape_from_keras) == 3]
    assert spatial[-1][:2] == (1, 1)
    for height, width in [(side - 1, side - 1), (side, side - 1), (side - 1, side)]:
        with pytest.raises(InputTooSmallError, match=f"needs at least {side}x{side} input"):
            build(name, (height, width, channels), 2)
    with pytest.raises(InputTooSmallError, match=f"{side - 1}x{side - 1} shrinks to 0 at layer"):
        build(name, (side - 1, side - 1, channels), 2)
