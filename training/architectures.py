"""Pure model builders: ``build(name, input_shape, num_classes) -> keras.Model``.

Every model is ONE flat Functional model with the serving contract built in:

* input ``images``: float32 raw RGB pixel values in ``[0, 255]``, shape ``(batch, H, W, 3)``
  with any ``H`` and ``W``;
* preprocessing layers (``grayscale`` when the model wants one channel, ``resize`` to the
  model's ``H x W``, optionally ``normalize_digits`` (MNIST-style polarity, crop, scale and
  centring, :mod:`training.normalization`), ``rescale`` to ``[0, 1]``), so serving cannot
  disagree with training;
* the architecture's layers, named ``conv1``, ``pool1``, ... ``fc6`` like the papers;
* ``predictions``: a float32 softmax over ``num_classes`` (float32 even under mixed
  precision, where float16 softmax loses too much).

Each architecture is declared once as a tuple of layer specs; the same specs build the Keras
layers and feed :mod:`training.conv_math`, which checks that the input is large enough before
anything is built and computes :func:`min_input_size`. :func:`describe_model` reads a built
model back through the same arithmetic (``train.py --describe``). Imports go one way only:
this module uses conv_math, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras

from training import conv_math
from training.arch_names import ARCHITECTURES
from training.normalization import DigitJitter, NormalizeDigits

__all__ = [
    "ARCHITECTURES",
    "InputTooSmallError",
    "NormalizeDigits",
    "RGBToGrayscale",
    "UnknownArchitectureError",
    "build",
    "describe_model",
    "min_input_size",
]


# ITU-R BT.601 luma weights, the same numbers tf.image.rgb_to_grayscale uses.
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)

#: Training-time shift of a normalised digit, fraction of the frame (2 pixels of 28).
_DIGIT_JITTER = 0.07

# Beyond this a "does not fit" search means a bug, not a big input requirement.
_MAX_SEARCHED_SIZE = 4096


class InputTooSmallError(ValueError):
    """The input height/width shrinks to nothing somewhere in the architecture."""


class UnknownArchitectureError(ValueError):
    """The architecture name is not one of :data:`ARCHITECTURES`."""


@keras.saving.register_keras_serializable(package="imgcls")
class RGBToGrayscale(keras.layers.Layer):
    """RGB to one-channel luma: ``y = 0.2989 R + 0.5870 G + 0.1140 B``.

    The same weights as ``tf.image.rgb_to_grayscale``; no trainable parameters. Shape
    ``(..., 3) -> (..., 1)``; the output keeps the input dtype (integer inputs are rounded
    back to their integer type, like TensorFlow's function does).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def call(self, inputs: Any) -> Any:
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        is_float = keras.backend.is_float_dtype(dtype)
        x = inputs if is_float else keras.ops.cast(inputs, "float32")
        weights = keras.ops.convert_to_tensor(_GRAY_WEIGHTS, dtype=x.dtype)
        gray = keras.ops.sum(x * weights, axis=-1, keepdims=True)
        return gray if is_float else keras.ops.cast(keras.ops.round(gray), dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if input_shape[-1] not in (None, 3):
            raise ValueError(f"RGBToGrayscale expects 3 channels, got shape {input_shape}")
        return (*input_shape[:-1], 1)

    def get_config(self) -> dict[str, Any]:
        # No arguments of its own: name, dtype and trainable come from the base class.
        config: dict[str, Any] = super().get_config()
        return config


@keras.saving.register_keras_serializable(package="imgcls")
class ResizeIfNeeded(keras.layers.Resizing):
    """``Resizing`` that passes images already at the target size through untouched.

    Training batches (and the service's pre-sized uploads) skip an identity-size resample,
    which also keeps ``--jit`` working: XLA cannot compile the antialiased resize kernel
    (ScaleAndTranslate), but when the size is known at trace time it is never traced.
    Clients of the SavedModel may still send any size; those are resized here.
    """

    def call(self, inputs: Any) -> Any:
        height, width = inputs.shape[1], inputs.shape[2]
        if height == self.height and width == self.width:
            return inputs
        if height is not None and width is not None:
            return super().call(inputs)
        shape = keras.ops.shape(inputs)
        same = keras.ops.logical_and(
            keras.ops.equal(shape[1], self.height), keras.ops.equal(shape[2], self.width)
        )
        resized = keras.ops.cond(
            same, lambda: inputs, lambda: super(ResizeIfNeeded, self).call(inputs)
        )
        # cond forgets the static size; the layers after this need it.
        return keras.ops.reshape(resized, (-1, self.height, self.width, inputs.shape[3]))


# ---------------------------------------------------------------------------------------
# Layer specs: one declaration per architecture, read by the builder and by the size check
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Conv:
    name: str
    filters: int
    size: int  # square kernel, pixels
    strides: int = 1
    padding: conv_math.Padding = "valid"
    activation: str = "relu"


@dataclass(frozen=True)
class _Pool:
    name: str
    size: int  # square window, pixels
    strides: int
    kind: Literal["max", "avg"] = "max"
    padding: conv_math.Padding = "valid"


@dataclass(frozen=True)
class _Flatten:
    name: str = "flatten"


@dataclass(frozen=True)
class _Dense:
    name: str
    units: int
    activation: str = "relu"


@dataclass(frozen=True)
class _Dropout:
    name: str
    rate: float


_Spec = _Conv | _Pool | _Flatten | _Dense | _Dropout


def _simple() -> tuple[_Spec, ...]:
    """A small two-block CNN, the default: fast on a CPU, >97% on the scikit-learn digits."""
    return (
        _Conv("conv1", 32, 3, padding="same"),
        _Pool("pool1", 2, 2),
        _Conv("conv2", 64, 3, padding="same"),
        _Pool("pool2", 2, 2),
        _Flatten(),
        _Dropout("dropout1", 0.3),
        _Dense("fc1", 128),
        _Dropout("dropout2", 0.3),
    )


def _lenet5() -> tuple[_Spec, ...]:
    """LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998), in its common modern form: tanh, average pooling.

    Paper names: C1 = conv1, S2 = pool1, C3 = conv2 (fully connected to S2's maps here, not
    the paper's partial table), S4 = pool2, C5 = fc1 (a 5x5 conv on a 5x5 map is a Dense
    layer), F6 = fc2. On 32x32x1 with 10 classes: 61,706 parameters.
    """
    return (
        _Conv("conv1", 6, 5, activation="tanh"),
        _Pool("pool1", 2, 2, kind="avg"),
        _Conv("conv2", 16, 5, activation="tanh"),
        _Pool("pool2", 2, 2, kind="avg"),
        _Flatten(),
        _Dense("fc1", 120, "tanh"),
        _Dense("fc2", 84, "tanh"),
    )


def _alexnet() -> tuple[_Spec, ...]:
    """AlexNet (Krizhevsky, Sutskever, Hinton, "ImageNet classification with deep
    convolutional neural networks", NeurIPS 2012), single-tower, without local response
    normalisation, at the 227x227 input whose arithmetic works out (the paper's 224 does
    not). Layer names follow the Caffe reference model. 227x227x3 with 1000 classes:
    62,378,344 parameters.
    """
    return (
        _Conv("conv1", 96, 11, strides=4),
        _Pool("pool1", 3, 2),
        _Conv("conv2", 256, 5, padding="same"),
        _Pool("pool2", 3, 2),
        _Conv("conv3", 384, 3, padding="same"),
        _Conv("conv4", 384, 3, padding="same"),
        _Conv("conv5", 256, 3, padding="same"),
        _Pool("pool5", 3, 2),
        _Flatten(),
        _Dense("fc6", 4096),
        _Dropout("drop6", 0.5),
        _Dense("fc7", 4096),
        _Dropout("drop7", 0.5),
    )


def _vgg16() -> tuple[_Spec, ...]:
    """VGG-16, configuration D (Simonyan, Zisserman, "Very deep convolutional networks for
    large-scale image recognition", ICLR 2015): 13 3x3 "same" convolutions in 5 blocks, each
    block ending in a 2x2 max pool, then two 4096-unit layers with dropout 0.5 as in the
    paper. 224x224x3 with 1000 classes: 138,357,544 parameters.
    """
    specs: list[_Spec] = []
    blocks = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (filters, convolutions)
    for block, (filters, convs) in enumerate(blocks, 1):
        for i in range(1, convs + 1):
            specs.append(_Conv(f"conv{block}_{i}", filters, 3, padding="same"))
        specs.append(_Pool(f"pool{block}", 2, 2))
    specs += [
        _Flatten(),
        _Dense("fc6", 4096),
        _Dropout("drop6", 0.5),
        _Dense("fc7", 4096),
        _Dropout("drop7", 0.5),
    ]
    return tuple(specs)


_SPECS: dict[str, Callable[[], tuple[_Spec, ...]]] = {
    "simple": _simple,
    "lenet5": _lenet5,
    "alexnet": _alexnet,
    "vgg16": _vgg16,
}


def _specs(name: str) -> tuple[_Spec, ...]:
    if name not in _SPECS:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    return _SPECS[name]()


def _make_layer(spec: _Spec) -> keras.layers.Layer:
    if isinstance(spec, _Conv):
        return keras.layers.Conv2D(
            spec.filters,
            spec.size,
            strides=spec.strides,
            padding=spec.padding,
            activation=spec.activation,
            name=spec.name,
        )
    if isinstance(spec, _Pool):
        pool = keras.layers.MaxPooling2D if spec.kind == "max" else keras.layers.AveragePooling2D
        return pool(spec.size, strides=spec.strides, padding=spec.padding, name=spec.name)
    if isinstance(spec, _Flatten):
        return keras.layers.Flatten(name=spec.name)
    if isinstance(spec, _Dense):
        return keras.layers.Dense(spec.units, activation=spec.activation, name=spec.name)
    return keras.layers.Dropout(spec.rate, name=spec.name)


# ---------------------------------------------------------------------------------------
# Size checks (conv_math only: nothing is built)
# ---------------------------------------------------------------------------------------


def _first_misfit(
    specs: tuple[_Spec, ...], height: int, width: int
) -> tuple[str, conv_math.OutputTooSmallError] | None:
    """Walk the specs with the conv arithmetic; return (layer name, error) where a window
    no longer fits, or None when the whole network fits ``height x width`` pixels."""
    size = [height, width]
    for spec in specs:
        if not isinstance(spec, (_Conv, _Pool)):
            continue
        try:
            for axis in range(2):
                if spec.padding == "same":
                    size[axis] = conv_math.same_output_size(size[axis], spec.size, spec.strides)
                else:
                    size[axis] = conv_math.conv_output_size(size[axis], spec.size, 0, spec.strides)
        except conv_math.OutputTooSmallError as err:
            return spec.name, err
    return None


def _min_size(specs: tuple[_Spec, ...]) -> int:
    # Output sizes grow monotonically with the input, so the first size that fits is the minimum.
    for n in range(1, _MAX_SEARCHED_SIZE + 1):
        if _first_misfit(specs, n, n) is None:
            return n
    raise RuntimeError(f"no input up to {_MAX_SEARCHED_SIZE} pixels fits")  # pragma: no cover


def min_input_size(name: str) -> int:
    """Smallest square input side (pixels) the architecture accepts, from the conv arithmetic.

    Raises:
        UnknownArchitectureError: for a name not in :data:`ARCHITECTURES`.
    """
    return _min_size(_specs(name))


def _validate(input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int, int]:
    try:
        height, width, channels = (int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape!r}"
        ) from None
    if (height, width, channels) != tuple(input_shape) or min(height, width) < 1:
        raise ValueError(f"input_shape must be three positive integers, got {input_shape!r}")
    if channels not in (1, 3):
        raise ValueError(
            f"input_shape channels must be 1 (grayscale) or 3 (RGB), got {channels} "
            f"in {input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2 (a softmax over one class is always 1), "
            f"got {num_classes!r}"
        )
    return height, width, channels


def build(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    normalize_digits: bool = False,
) -> keras.Model:
    """Build an untrained, uncompiled classifier.

    Args:
        name: one of :data:`ARCHITECTURES`.
        input_shape: ``(height, width, channels)`` the network itself sees, in pixels;
            channels 1 (grayscale) or 3 (RGB). Callers may send images of any size: the
            model resizes them to this.
        num_classes: number of output probabilities (>= 2).
        normalize_digits: add the :class:`~training.normalization.NormalizeDigits` layer
            (named ``normalize_digits``) after ``resize``: any polarity, size and position of
            a digit is brought to MNIST's framing; then ``digit_jitter``, a random shift of
            up to 2 pixels while training (identity when serving). Grayscale models only.

    Returns:
        A Functional model: float32 RGB images in ``[0, 255]``, shape ``(batch, H, W, 3)``,
        to float32 probabilities, shape ``(batch, num_classes)``, summing to 1.

    Raises:
        UnknownArchitectureError: unknown ``name``.
        InputTooSmallError: ``input_shape`` shrinks to nothing inside the network.
        ValueError: malformed ``input_shape`` or ``num_classes``, or ``normalize_digits`` on
            an RGB model.
    """
    specs = _specs(name)
    height, width, channels = _validate(input_shape, num_classes)
    if normalize_digits and channels != 1:
        raise ValueError(
            f"digit normalisation works on grayscale models (channels 1), got {input_shape!r}"
        )
    misfit = _first_misfit(specs, height, width)
    if misfit is not None:
        layer, err = misfit
        smallest = _min_size(specs)
        raise InputTooSmallError(
            f"{name} needs at least {smallest}x{smallest} input; {height}x{width} shrinks to "
            f"{max(err.size, 0)} at layer {layer} ({err.formula})"
        )

    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = inputs
    if channels == 1:
        x = RGBToGrayscale(name="grayscale")(x)
    # Antialiasing matters when shrinking large photos: without it bilinear resize aliases.
    x = ResizeIfNeeded(height, width, interpolation="bilinear", antialias=True, name="resize")(x)
    if normalize_digits:
        x = NormalizeDigits(height, width, name="normalize_digits")(x)
        # Training only (identity when serving): a digit up to 2 pixels off the exact centre,
        # so the network does not learn where the frame's empty edges are (which otherwise
        # also draws Grad-CAM heat onto the edges).
        x = DigitJitter(_DIGIT_JITTER, _DIGIT_JITTER, fill_mode="constant", name="digit_jitter")(x)
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    for spec in specs:
        x = _make_layer(spec)(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------------------
# Layer table (--describe): a built model read back through the conv arithmetic
# ---------------------------------------------------------------------------------------
# This lives here, not in conv_math, because it must know this module's own layers
# (RGBToGrayscale); conv_math stays pure arithmetic and imports nothing from the package.


def _keras_shape(shape: Sequence[int | None]) -> conv_math.Shape:
    return tuple(None if d is None else int(d) for d in shape[1:])


def _output_shape(layer: Any) -> conv_math.Shape:
    output = layer.output
    # Multi-output layers have no single shape; an empty tuple never matches a formula.
    return _keras_shape(output.shape) if hasattr(output, "shape") else ()


def _unknown_row(layer: Any, in_shape: conv_math.Shape | None) -> conv_math.LayerRow:
    keras_shape = _output_shape(layer)
    params = int(layer.count_params())
    if params == 0:
        # Dropout, activations, casts...: no weights, and they keep the shape they are given.
        return conv_math.LayerRow(
            layer.name,
            type(layer).__name__,
            "shape kept",
            "",
            in_shape,
            keras_shape,
            0,
            params,
            in_shape,
        )
    return conv_math.LayerRow(
        layer.name, type(layer).__name__, "n/a", "n/a", None, keras_shape, None, params, in_shape
    )


def _weighted_formula(layer: Any, dims: tuple[int, ...]) -> conv_math.Formula | None:
    """The formula of a conv, pooling, flatten or dense layer on a fully known input shape;
    None for any other kind (or a variant the formulas do not cover)."""
    if (
        type(layer) is keras.layers.Conv2D  # exactly: a subclass may carry other weights
        and len(dims) == 3
        and layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    ):
        kernel = (int(layer.kernel_size[0]), int(layer.kernel_size[1]))
        strides = (int(layer.strides[0]), int(layer.strides[1]))
        return conv_math.conv2d_formula(
            dims, kernel, strides, layer.padding, int(layer.filters), bool(layer.use_bias)
        )
    if (
        isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D))
        and len(dims) == 3
        and layer.data_format == "channels_last"
    ):
        kernel = (int(layer.pool_size[0]), int(layer.pool_size[1]))
        strides = (int(layer.strides[0]), int(layer.strides[1]))
        return conv_math.pool2d_formula(dims, kernel, strides, layer.padding)
    if isinstance(layer, keras.layers.Flatten):
        return conv_math.flatten_formula(dims)
    if (
        type(layer) is keras.layers.Dense
        # LoRA and quantization add weights the formula does not count.
        and getattr(layer, "lora_rank", None) is None
        and getattr(layer, "quantization_mode", None) is None
    ):
        return conv_math.dense_formula(dims, int(layer.units), bool(layer.use_bias))
    return None


def _formula(layer: Any, in_shape: conv_math.Shape) -> conv_math.Formula | None:
    """The formula of ``layer`` on ``in_shape`` (batch axis dropped), or None without one."""
    if isinstance(layer, RGBToGrayscale):
        return conv_math.Formula((*in_shape[:-1], 1), "channels 3 -> 1")
    if isinstance(layer, keras.layers.Resizing) and layer.data_format == "channels_last":
        shape = (int(layer.height), int(layer.width), in_shape[-1])
        return conv_math.Formula(shape, f"resize to {layer.height}x{layer.width}")
    if isinstance(layer, keras.layers.Rescaling):
        text = f"x*{float(layer.scale):.6g}+{float(layer.offset):g}, shape kept"
        return conv_math.Formula(in_shape, text)
    dims = conv_math.known_dims(in_shape)
    if not dims:  # an axis of unknown size, or no axis at all
        return None
    return _weighted_formula(layer, dims)


def _describe_layer(layer: Any, in_shape: conv_math.Shape | None) -> conv_math.LayerRow:
    """One row of the table: the formulas beside Keras's own output shape and count."""
    formula: conv_math.Formula | None
    if isinstance(layer, keras.layers.InputLayer):
        shape = _keras_shape(layer.batch_shape)
        formula = conv_math.Formula(shape, "input " + conv_math.fmt_shape(shape))
    elif in_shape is None:
        formula = None
    else:
        formula = _formula(layer, in_shape)
    if formula is None:
        return _unknown_row(layer, in_shape)
    return conv_math.LayerRow(
        layer.name,
        type(layer).__name__,
        formula.shape_text,
        formula.params_text,
        formula.shape,
        _output_shape(layer),
        formula.params,
        int(layer.count_params()),
        in_shape,
        kernel_size=formula.kernel_size,
    )


def describe_model(model: keras.Model) -> list[conv_math.LayerRow]:
    """Walk a built model's layers and compute every output shape and count from the formulas.

    The formulas start from the model's declared input and the ``Resizing`` size, and each
    layer's formula output feeds the next layer's formula (following the actual graph), so a
    wrong formula shows up as a disagreement, not as a copy of Keras's number. A layer kind
    without a formula is reported with ``"n/a"``, and the walk continues from Keras's shape.
    :func:`training.conv_math.format_table` renders the rows.

    Raises:
        conv_math.OutputTooSmallError: when a window does not fit (the model could not have
            been built either, so this only happens for inconsistent inputs).
    """
    rows: list[conv_math.LayerRow] = []
    # KerasTensor identity -> shape computed by the formulas (batch axis dropped).
    formula_shapes: dict[int, conv_math.Shape] = {}
    for layer in model.layers:
        in_shape: conv_math.Shape | None = None
        if not isinstance(layer, keras.layers.InputLayer):
            # A layer with several inputs (Add, Concatenate...) gets no formula: in_shape None.
            inputs = layer.input
            if hasattr(inputs, "shape"):
                in_shape = formula_shapes.get(id(inputs))
                if in_shape is None:
                    in_shape = _keras_shape(inputs.shape)
        r = _describe_layer(layer, in_shape)
        rows.append(r)
        if hasattr(layer.output, "shape"):
            formula_shapes[id(layer.output)] = (
                r.shape_from_keras if r.shape_from_formula is None else r.shape_from_formula
            )
    return rows
