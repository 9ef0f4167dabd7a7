"""The convolution arithmetic against hand-computed numbers and against Keras itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from training import conv_math
from training.architectures import build, describe_model
from training.conv_math import (
    LayerRow,
    OutputTooSmallError,
    conv2d_reference,
    conv_advantage,
    conv_output_size,
    conv_params,
    dense_params,
    format_table,
    pool_output_size,
    same_output_size,
    same_padding_total,
)

# The worked example from the lecture: a 5x5 image and a 3x3 filter.
LECTURE_IMAGE = np.array(
    [
        [3, 5, 2, 8, 1],
        [9, 7, 5, 4, 3],
        [2, 0, 6, 1, 6],
        [6, 3, 7, 9, 2],
        [1, 4, 9, 5, 1],
    ]
)
LECTURE_FILTER = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
LECTURE_STRIDE_1 = np.array([[25, 18, 17], [18, 22, 14], [20, 15, 23]])
LECTURE_STRIDE_2 = np.array([[25, 17], [20, 23]])


def keras_conv(
    x: np.ndarray,
    kernels: np.ndarray,
    stride: int,
    padding: str,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Run one keras.layers.Conv2D with the given weights on one (H, W, C) image."""
    layer = keras.layers.Conv2D(
        kernels.shape[-1],
        kernels.shape[:2],
        strides=stride,
        padding=padding,
        use_bias=bias is not None,
    )
    batch = x[None].astype("float32")
    layer.build(batch.shape)
    layer.set_weights([kernels.astype("float32")] + ([] if bias is None else [bias]))
    return np.asarray(layer(batch))[0]


# ---------------------------------------------------------------------------------------
# The sliding filter
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride", "expected"), [(1, LECTURE_STRIDE_1), (2, LECTURE_STRIDE_2)], ids=["s1", "s2"]
)
def test_reference_conv_on_lecture_example(stride: int, expected: np.ndarray) -> None:
    out = conv2d_reference(LECTURE_IMAGE[:, :, None], LECTURE_FILTER[:, :, None, None], stride)
    np.testing.assert_array_equal(out[:, :, 0], expected)


@pytest.mark.parametrize(
    ("stride", "expected"), [(1, LECTURE_STRIDE_1), (2, LECTURE_STRIDE_2)], ids=["s1", "s2"]
)
def test_keras_conv_on_lecture_example(stride: int, expected: np.ndarray) -> None:
    out = keras_conv(LECTURE_IMAGE[:, :, None], LECTURE_FILTER[:, :, None, None], stride, "valid")
    np.testing.assert_allclose(out[:, :, 0], expected)


@pytest.mark.parametrize(
    ("height", "width", "f", "stride"),
    [
        (7, 7, 3, 1),  # odd size, symmetric padding 1+1
        (8, 8, 3, 2),  # even size, stride 2: total padding 1, all of it bottom/right
        (7, 7, 3, 2),  # odd size, stride 2: total padding 2
        (6, 9, 4, 1),  # even filter: padding 3 = 1 top + 2 bottom
        (10, 5, 5, 3),
    ],
)
def test_same_padding_matches_keras(height: int, width: int, f: int, stride: int) -> None:
    rng = np.random.default_rng(height * 100 + width * 10 + f + stride)
    x = rng.normal(size=(height, width, 2))
    kernels = rng.normal(size=(f, f, 2, 3))
    ours = conv2d_reference(x, kernels, stride, "same")
    expected_shape = (math.ceil(height / stride), math.ceil(width / stride), 3)
    assert ours.shape == expected_shape
    np.testing.assert_allclose(ours, keras_conv(x, kernels, stride, "same"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_convolution_over_volume_matches_keras(stride: int) -> None:
    rng = np.random.default_rng(stride)
    x = rng.uniform(0, 1, size=(11, 9, 3))  # an RGB patch
    kernels = rng.normal(size=(3, 3, 3, 4))  # four 3x3x3 filters
    bias = rng.normal(size=4).astype("float32")
    ours = conv2d_reference(x, kernels, stride, "valid", bias=bias)
    assert ours.shape == (conv_output_size(11, 3, 0, stride), conv_output_size(9, 3, 0, stride), 4)
    np.testing.assert_allclose(ours, keras_conv(x, kernels, stride, "valid", bias), atol=1e-4)


def test_integer_padding_is_zeros_on_every_side() -> None:
    x = np.arange(16.0).reshape(4, 4, 1)
    ones = np.ones((3, 3, 1, 1))
    out = conv2d_reference(x, ones, padding=1)[:, :, 0]
    assert out.shape == (4, 4)
    # The corner window covers x[0:2, 0:2] plus five zeros.
    assert out[0, 0] == 0 + 1 + 4 + 5
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(out, conv2d_reference(padded, ones)[:, :, 0])


def test_reference_conv_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="kernels must have shape"):
        conv2d_reference(np.zeros((5, 5, 3)), np.zeros((3, 3, 1, 2)))
    with pytest.raises(ValueError, match="padding must be"):
        conv2d_reference(np.zeros((5, 5, 1)), np.zeros((3, 3, 1, 1)), padding="full")  # type: ignore[arg-type]
    with pytest.raises(OutputTooSmallError):
        conv2d_reference(np.zeros((2, 2, 1)), np.zeros((3, 3, 1, 1)))


# ---------------------------------------------------------------------------------------
# Sizes and counts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "f", "p", "s", "expected"),
    [
        (6, 3, 0, 1, 4),  # 6x6 image, 3x3 filter -> 4x4
        (6, 3, 1, 1, 6),  # padding 1 keeps the size ("same" for odd f, stride 1)
        (5, 3, 0, 2, 2),  # the lecture example, stride 2
        (7, 3, 0, 2, 3),
        (32, 5, 0, 1, 28),  # LeNet-5 C1
        (227, 11, 0, 4, 55),  # AlexNet conv1
        (224, 3, 0.5, 2, 112),  # half-pixel padding: Keras "same" with an odd total of 1
    ],
)
def test_conv_output_size_hand_computed(n: int, f: int, p: float, s: int, expected: int) -> None:
    assert conv_output_size(n, f, p, s) == expected


def test_conv_output_size_rejects_a_window_that_does_not_fit() -> None:
    with pytest.raises(OutputTooSmallError) as info:
        conv_output_size(2, 3, 0, 2)
    assert isinstance(info.value, ValueError)
    assert info.value.size == 0
    assert info.value.formula == "floor((2+2*0-3)/2)+1 = 0"
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(3, 5, 0, 1)


@pytest.mark.parametrize(
    ("n", "f", "p", "s"), [(0, 3, 0, 1), (5, 0, 0, 1), (5, 3, 0, 0), (5, 3, -1, 1), (5, 3, 0.3, 1)]
)
def test_conv_output_size_rejects_nonsense(n: int, f: int, p: float, s: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        conv_output_size(n, f, p, s)


def test_same_padding_total_examples() -> None:
    assert same_padding_total(7, 3, 1) == 2  # 1 + 1
    assert same_padding_total(8, 3, 2) == 1  # odd: 0 top, 1 bottom
    assert same_padding_total(6, 4, 1) == 3
    assert same_padding_total(5, 1, 2) == 0  # a 1x1 window never needs padding


def test_same_padding_half_pixel_formula_equals_ceil() -> None:
    """floor((n + 2*(total/2) - f)/s) + 1 == ceil(n/s) for every small n, f, s."""
    for n in range(1, 40):
        for f in range(1, 8):
            for s in range(1, 5):
                total = same_padding_total(n, f, s)
                assert conv_output_size(n, f, total / 2, s) == math.ceil(n / s), (n, f, s)
                assert same_output_size(n, f, s) == math.ceil(n / s)


def test_pool_output_size() -> None:
    assert pool_output_size(28, 2, 2) == 14
    assert pool_output_size(13, 3, 2, "valid") == 6  # AlexNet pool5
    assert pool_output_size(5, 2, 2, "same") == 3
    with pytest.raises(ValueError, match="padding must be"):
        pool_output_size(5, 2, 2, "full")  # type: ignore[arg-type]


def test_parameter_counts() -> None:
    assert conv_params(5, 1, 6) == 156  # LeNet-5 C1: (5*5*1+1)*6
    assert conv_params(3, 3, 64) == 1_792  # VGG-16 conv1_1
    assert conv_params(5, 1, 6, use_bias=False) == 150
    assert conv_params((3, 5), 2, 4) == (3 * 5 * 2 + 1) * 4
    assert dense_params(400, 120) == 48_120
    assert dense_params(400, 120, use_bias=False) == 48_000


# ---------------------------------------------------------------------------------------
# Layer table
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenet_rows() -> list[LayerRow]:
    return describe_model(build("lenet5", (32, 32, 1), 10))


def test_describe_model_lenet5_rows(lenet_rows: list[LayerRow]) -> None:
    by_name = {r.name: r for r in lenet_rows}
    assert [r.name for r in lenet_rows][:4] == ["images", "grayscale", "resize", "rescale"]
    conv1 = by_name["conv1"]
    assert conv1.shape_formula == "floor((32+2*0-5)/1)+1 = 28"
    assert conv1.params_formula == "(5*5*1+1)*6 = 156"
    assert conv1.shape_from_formula == conv1.shape_from_keras == (28, 28, 6)
    assert conv1.params_from_formula == conv1.params_from_keras == 156
    assert by_name["flatten"].shape_from_formula == (400,)
    assert by_name["fc1"].params_from_formula == 48_120
    assert all(r.agrees for r in lenet_rows)
    assert sum(r.params_from_formula or 0 for r in lenet_rows) == 61_706


def test_format_table_totals_and_why_convolutions_win(lenet_rows: list[LayerRow]) -> None:
    table = format_table(lenet_rows)
    assert "total parameters: formula 61,706, keras 61,706" in table
    assert "MISMATCH" not in table
    # conv1 maps 32x32x1 = 1,024 inputs to 28x28x6 = 4,704 outputs with 156 parameters;
    # a Dense layer would need (1,024+1)*4,704 = 4,821,600.
    assert "Why convolutions win (conv1: 32x32x1 -> 28x28x6)" in table
    assert "(1,024+1)*4,704 = 4,821,600" in table
    assert "5*5*1 = 25 inputs" in table
    assert "32*32*1 = 1,024" in table
    adv = conv_advantage(lenet_rows)
    assert adv is not None
    assert (adv.conv_params, adv.dense_params) == (156, 4_821_600)
    assert (adv.inputs_per_output, adv.inputs_total) == (25, 1_024)
    # Columns line up: every table line before the totals has the same start of "check".
    lines = table.splitlines()
    header_col = lines[0].index("check")
    assert all(line[header_col:].split()[0] == "ok" for line in lines[2 : 2 + len(lenet_rows)])


def test_format_table_flags_a_disagreement() -> None:
    good = LayerRow("fc", "Dense", "", "(3+1)*2 = 8", (2,), (2,), 8, 8)
    bad = LayerRow("fc2", "Dense", "", "(2+1)*2 = 6", (2,), (2,), 6, 7)
    assert good.agrees is True
    assert bad.agrees is False
    table = format_table([good, bad])
    assert "MISMATCH" in table
    assert "formula 14, keras 15" in table


def test_describe_model_handles_layers_without_a_formula() -> None:
    inputs = keras.Input(shape=(10, 10, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)  # has weights, no formula here
    x = keras.layers.Activation("relu", name="act")(x)  # no weights: shape kept
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="conv_b")(x)
    rows = {r.name: r for r in describe_model(keras.Model(inputs, x))}
    assert rows["bn"].agrees is None
    assert rows["bn"].formula == "n/a; n/a"
    assert rows["bn"].params_from_keras == 16
    assert rows["act"].agrees is True
    assert rows["act"].shape_from_formula == (8, 8, 4)
    # The walk goes on past the unknown layer: 'same', stride 2 on 8 -> ceil(8/2) = 4.
    assert rows["conv_b"].shape_formula == "floor((8+2*0.5-3)/2)+1 = 4"
    assert rows["conv_b"].agrees is True
    table = format_table(list(rows.values()))
    assert "+ n/a" in table
    assert "some rows disagree or have no formula" in table


def test_describe_model_non_square_input() -> None:
    rows = {r.name: r for r in describe_model(build("simple", (20, 30, 3), 4))}
    assert rows["pool2"].shape_from_formula == (5, 7, 64)
    assert rows["pool2"].shape_formula.startswith("H: floor((10+2*0-2)/2)+1 = 5; W:")
    assert all(r.agrees for r in rows.values())


@pytest.mark.e2e  # a fresh interpreter
def test_conv_math_imports_without_tensorflow() -> None:
    """The arithmetic (and the training package) stay importable without TensorFlow."""
    code = (
        "import sys, training, training.conv_math; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'"
    )
    root = Path(conv_math.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
