"""Convolution arithmetic, written out so it can be read and checked against Keras.

Sizes are counted in pixels (rows or columns of a feature map), parameters in scalars
(weights plus biases). The notation follows the usual lecture one:

* ``n`` input size along one axis, ``f`` filter (window) size, ``p`` zero padding on each
  side, ``s`` stride;
* output size ``floor((n + 2p - f) / s) + 1``;
* a ``f x f`` convolution over ``n_c`` input channels with ``n_f`` filters has
  ``(f*f*n_c + 1) * n_f`` parameters (one bias per filter).

Keras ``padding="same"`` does not pick ``p`` first: it fixes the output at ``ceil(n / s)``
and pads as much as that needs, ``max((out - 1)*s + f - n, 0)`` in total, putting the odd
pixel (if any) at the bottom/right. Writing that total as ``p = total / 2`` (possibly a
half) makes the lecture formula give the same output size; :func:`same_output_size`
checks it every time it is called, and the layer table (:func:`format_table`) prints it that
way.

This module is arithmetic only: it imports neither TensorFlow nor Keras, nor any other module
of this package, so it is cheap to use anywhere and sits below everything that uses it. The
``*_formula`` functions take plain numbers; reading them off a built Keras model is
:func:`training.architectures.describe_model`'s job (it knows this package's own layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ConvAdvantage",
    "Formula",
    "LayerRow",
    "OutputTooSmallError",
    "Padding",
    "Shape",
    "conv2d_formula",
    "conv2d_reference",
    "conv_advantage",
    "conv_formula",
    "conv_output_size",
    "conv_params",
    "dense_formula",
    "dense_params",
    "flatten_formula",
    "fmt_shape",
    "format_table",
    "known_dims",
    "pool2d_formula",
    "pool_output_size",
    "same_output_size",
    "same_padding_total",
]

Padding = Literal["valid", "same"]
Shape = tuple[int | None, ...]


class OutputTooSmallError(ValueError):
    """A window does not fit: the output size along one axis would be below 1.

    Attributes:
        size: the output size the formula gives (0 or negative), in pixels.
        formula: the formula with the numbers filled in, e.g. ``"floor((2+2*0-3)/2)+1 = 0"``.
    """

    def __init__(self, size: int, formula: str, detail: str) -> None:
        super().__init__(f"{formula} < 1: {detail}")
        self.size = size
        self.formula = formula


# ---------------------------------------------------------------------------------------
# Sizes and parameter counts
# ---------------------------------------------------------------------------------------


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def _twice_padding(p: float) -> int:
    """Return ``2p`` as an exact integer; ``p`` must be a whole or half pixel count >= 0."""
    twice = round(2 * p)
    if p < 0 or not math.isclose(2 * p, twice):
        raise ValueError(f"padding p must be >= 0 and a multiple of 0.5 pixel, got {p!r}")
    return twice


def _fmt_pad(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else f"{p:g}"


def conv_formula(n: int, f: int, p: float, s: int) -> tuple[int, str]:
    """Compute ``floor((n + 2p - f) / s) + 1`` without checking it, and the filled-in text.

    Returns:
        ``(size, text)``, e.g. ``(28, "floor((32+2*0-5)/1)+1 = 28")``. ``size`` may be 0 or
        negative when the window does not fit; :func:`conv_output_size` rejects that.
    """
    _check_positive(n=n, f=f, s=s)
    # Integer arithmetic on 2p keeps half-pixel paddings exact (no float floor surprises).
    size = (n + _twice_padding(p) - f) // s + 1
    return size, f"floor(({n}+2*{_fmt_pad(p)}-{f})/{s})+1 = {size}"


def conv_output_size(n: int, f: int, p: int | float, s: int) -> int:
    """Output size of a convolution (or pooling) along one axis: ``floor((n + 2p - f)/s) + 1``.

    Args:
        n: input size in pixels.
        f: filter (window) size in pixels.
        p: zero padding in pixels on EACH side; may be a half pixel (``total / 2``) to
            express the asymmetric padding of Keras ``"same"``.
        s: stride in pixels.

    Raises:
        OutputTooSmallError: (a ValueError) when the result is below 1, i.e. the window
            does not fit in the padded input.
        ValueError: on non-positive ``n``, ``f``, ``s`` or negative/fractional ``p``.
    """
    size, text = conv_formula(n, f, p, s)
    if size < 1:
        raise OutputTooSmallError(
            size,
            text,
            f"a {f}-pixel window with stride {s} does not fit in {n} pixels "
            f"padded by {_fmt_pad(p)} on each side",
        )
    return size


def same_padding_total(n: int, f: int, s: int) -> int:
    """Total zero padding (pixels, both sides together) that Keras ``"same"`` adds on one axis.

    Keras/TensorFlow choose the output size first, ``ceil(n / s)``, then pad just enough for
    the last window to fit. The total may be odd; the extra pixel goes at the bottom/right.
    """
    _check_positive(n=n, f=f, s=s)
    out = -(-n // s)  # ceil(n / s) in integer arithmetic
    return max((out - 1) * s + f - n, 0)


def same_output_size(n: int, f: int, s: int) -> int:
    """Output size of a ``"same"`` convolution along one axis: ``ceil(n / s)``.

    Also evaluates the lecture formula with ``p = same_padding_total(n, f, s) / 2`` and
    checks that both agree, so the two descriptions of "same" padding cannot drift apart.
    """
    _check_positive(n=n, f=f, s=s)
    out = -(-n // s)
    via_formula = conv_output_size(n, f, same_padding_total(n, f, s) / 2, s)
    if via_formula != out:  # pragma: no cover - a proof, not a runtime condition
        raise AssertionError(f"same padding: ceil({n}/{s}) = {out} but formula = {via_formula}")
    return out


def pool_output_size(n: int, f: int, s: int, padding: Padding = "valid") -> int:
    """Output size of a pooling window along one axis, in pixels.

    ``"valid"``: the convolution formula with ``p = 0``. ``"same"``: ``ceil(n / s)``, like a
    ``"same"`` convolution (Keras pads max pooling with -inf and leaves padding out of
    average pooling, so the values differ from zero padding but the size does not).
    """
    if padding == "valid":
        return conv_output_size(n, f, 0, s)
    if padding == "same":
        return same_output_size(n, f, s)
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def conv_params(f: int | tuple[int, int], n_c: int, n_f: int, use_bias: bool = True) -> int:
    """Parameters of a 2-D convolution: ``(f*f*n_c + 1) * n_f`` (``+1``: one bias per filter).

    Args:
        f: filter size in pixels, or ``(height, width)`` for a rectangular filter.
        n_c: input channels.
        n_f: number of filters (= output channels).
        use_bias: whether each filter has a bias.
    """
    fh, fw = (f, f) if isinstance(f, int) else f
    _check_positive(fh=fh, fw=fw, n_c=n_c, n_f=n_f)
    return (fh * fw * n_c + int(use_bias)) * n_f


def dense_params(n_in: int, n_out: int, use_bias: bool = True) -> int:
    """Parameters of a fully connected layer: ``(n_in + 1) * n_out``."""
    _check_positive(n_in=n_in, n_out=n_out)
    return (n_in + int(use_bias)) * n_out


# ---------------------------------------------------------------------------------------
# The sliding filter itself
# ---------------------------------------------------------------------------------------


def conv2d_reference(
    x: npt.ArrayLike,
    kernels: npt.ArrayLike,
    stride: int = 1,
    padding: Padding | int = "valid",
    bias: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Plain NumPy 2-D convolution (cross-correlation, as in every deep-learning library).

    Each filter slides over the (padded) input; at every position the output is the sum of
    the element-wise product of the filter and the window under it, over all channels.

    Args:
        x: input volume, shape ``(H, W, C)``.
        kernels: filters in the Keras layout, shape ``(f_h, f_w, C, n_f)``.
        stride: step of the window in pixels, both axes.
        padding: ``"valid"`` (none), ``"same"`` (exactly like Keras/TensorFlow: output
            ``ceil(n/s)``, the odd padding pixel at the bottom/right), or an ``int`` number
            of zero pixels on every side.
        bias: optional, shape ``(n_f,)``, added to every output position.

    Returns:
        Array of shape ``(H', W', n_f)``.
    """
    x = np.asarray(x)
    k = np.asarray(kernels)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (H, W, C), got {x.shape}")
    if k.ndim != 4 or k.shape[2] != x.shape[2]:
        raise ValueError(f"kernels must have shape (f_h, f_w, {x.shape[2]}, n_f), got {k.shape}")
    _check_positive(stride=stride)
    fh, fw, _, n_f = k.shape
    h, w, _ = x.shape

    if padding == "valid":
        pads = ((0, 0), (0, 0))
    elif padding == "same":
        th, tw = same_padding_total(h, fh, stride), same_padding_total(w, fw, stride)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        pads = ((padding, padding), (padding, padding))
    else:
        raise ValueError(f"padding must be 'valid', 'same' or an int >= 0, got {padding!r}")
    xp = np.pad(x, (*pads, (0, 0)))

    out_h = conv_output_size(xp.shape[0], fh, 0, stride)
    out_w = conv_output_size(xp.shape[1], fw, 0, stride)
    dtype = np.result_type(x, k) if bias is None else np.result_type(x, k, np.asarray(bias))
    out = np.zeros((out_h, out_w, n_f), dtype=dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = xp[i * stride : i * stride + fh, j * stride : j * stride + fw, :]
            # Sum over the window's rows, columns and channels, once per filter.
            out[i, j, :] = np.tensordot(window, k, axes=3)
    if bias is not None:
        out += np.asarray(bias).reshape(n_f)
    return out


# ---------------------------------------------------------------------------------------
# Layer table: the formulas beside Keras's own shapes and counts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRow:
    """One layer of a model: output shape and parameters from the formulas and from Keras.

    Shapes exclude the batch axis; ``None`` is an axis of any size.
    ``shape_formula``/``params_formula`` are the formulas with the numbers filled in
    (``params_formula`` is empty for layers without weights).
    ``shape_from_formula``/``params_from_formula`` are ``None`` when no formula is known for
    that layer kind (both formula texts then read ``"n/a"``). ``input_shape`` is the shape the
    formulas fed into the layer; ``kernel_size`` is set for convolution and pooling windows.
    """

    name: str
    kind: str
    shape_formula: str
    params_formula: str
    shape_from_formula: Shape | None
    shape_from_keras: Shape
    params_from_formula: int | None
    params_from_keras: int
    input_shape: Shape | None = None
    kernel_size: tuple[int, int] | None = None

    @property
    def formula(self) -> str:
        """Both formulas in one line, e.g. ``"floor((32+2*0-5)/1)+1 = 28; (5*5*1+1)*6 = 156"``."""
        return "; ".join(t for t in (self.shape_formula, self.params_formula) if t)

    @property
    def agrees(self) -> bool | None:
        """True when formula and Keras give the same shape and count; None when no formula."""
        if self.shape_from_formula is None or self.params_from_formula is None:
            return None
        return (
            self.shape_from_formula == self.shape_from_keras
            and self.params_from_formula == self.params_from_keras
        )


@dataclass(frozen=True)
class Formula:
    """One layer's output by the formulas: the shape (batch axis dropped, in pixels or units),
    the parameter count (scalars), and both formulas with the numbers filled in.

    ``params_text`` is empty for layers without weights; ``kernel_size`` is set for
    convolution and pooling windows, ``(height, width)`` in pixels.
    """

    shape: Shape
    shape_text: str
    params: int = 0
    params_text: str = ""
    kernel_size: tuple[int, int] | None = None


def _axis_text(texts: Sequence[str]) -> str:
    # Square maps (the usual case) get one formula instead of two identical ones.
    return texts[0] if texts[0] == texts[1] else f"H: {texts[0]}; W: {texts[1]}"


def _spatial(
    in_shape: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: str,
    *,
    pool: bool,
) -> tuple[tuple[int, int], str]:
    """Output H, W of a conv/pool window and the filled-in formula; raises if it does not fit."""
    sizes: list[int] = []
    texts: list[str] = []
    for n, f, s in zip(in_shape[:2], kernel, strides, strict=True):
        if padding == "same":
            # Keras pads (possibly asymmetrically) to reach ceil(n/s); total/2 per side.
            p: float = same_padding_total(n, f, s) / 2
        elif padding == "valid":
            p = 0
        else:
            raise ValueError(f"unsupported padding {padding!r}")
        size, text = conv_formula(n, f, p, s)
        if pool and padding == "same":
            text = f"ceil({n}/{s}) = {size}"
        if size < 1:
            raise OutputTooSmallError(size, text, "window does not fit")
        sizes.append(size)
        texts.append(text)
    return (sizes[0], sizes[1]), _axis_text(texts)


def known_dims(shape: Shape) -> tuple[int, ...] | None:
    """The shape as ints when every axis is known, else None (no formula applies)."""
    return tuple(d for d in shape if d is not None) if None not in shape else None


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def conv2d_formula(
    dims: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: str,
    filters: int,
    use_bias: bool,
) -> Formula:
    """A channels-last 2-D convolution on an ``(H, W, C)`` input (pixels, channels): output
    ``(H', W', filters)`` and ``(f*f*C + 1) * filters`` parameters.

    Raises:
        OutputTooSmallError: the window does not fit.
    """
    (h, w), shape_text = _spatial(dims, kernel, strides, padding, pool=False)
    n_c = dims[-1]
    params = conv_params(kernel, n_c, filters, use_bias)
    inner = f"{kernel[0]}*{kernel[1]}*{n_c}" + ("+1" if use_bias else "")
    params_text = f"({inner})*{filters} = {_fmt_int(params)}"
    return Formula((h, w, filters), shape_text, params, params_text, kernel_size=kernel)


def pool2d_formula(
    dims: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int], padding: str
) -> Formula:
    """A channels-last 2-D pooling window on an ``(H, W, C)`` input: ``(H', W', C)``, no
    parameters.

    Raises:
        OutputTooSmallError: the window does not fit.
    """
    (h, w), shape_text = _spatial(dims, kernel, strides, padding, pool=True)
    return Formula((h, w, dims[-1]), shape_text, kernel_size=kernel)


def flatten_formula(dims: tuple[int, ...]) -> Formula:
    """Flatten: one axis of ``prod(dims)`` values, no parameters."""
    size = math.prod(dims)
    return Formula((size,), f"{'*'.join(str(d) for d in dims)} = {_fmt_int(size)}")


def dense_formula(dims: tuple[int, ...], units: int, use_bias: bool) -> Formula:
    """A fully connected layer on the last axis: ``(..., units)`` and ``(n_in + 1) * units``
    parameters (``n_in * units`` without bias)."""
    n_in = dims[-1]
    params = dense_params(n_in, units, use_bias)
    params_text = (
        f"({_fmt_int(n_in)}+1)*{_fmt_int(units)} = {_fmt_int(params)}"
        if use_bias
        else f"{_fmt_int(n_in)}*{_fmt_int(units)} = {_fmt_int(params)}"
    )
    return Formula((*dims[:-1], units), f"{units} units", params, params_text)


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvAdvantage:
    """Why a convolution beats a Dense layer on images, for one conv layer.

    Attributes:
        layer: the conv layer's name.
        input_shape: ``(H, W, C)`` of its input volume.
        output_shape: ``(H', W', n_f)`` of its output volume.
        conv_params: the conv layer's parameter count.
        dense_params: parameters of a Dense layer mapping the flattened input volume to the
            flattened output volume (``(H*W*C + 1) * H'*W'*n_f``).
        inputs_per_output: inputs one output value depends on, ``f*f*n_c`` (sparse
            connections), versus ``inputs_total = H*W*C`` for a Dense layer.
    """

    layer: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel_size: tuple[int, int]
    conv_params: int
    dense_params: int
    inputs_per_output: int
    inputs_total: int

    @property
    def ratio(self) -> float:
        """How many times more parameters the Dense layer needs."""
        return self.dense_params / self.conv_params


def conv_advantage(rows: Sequence[LayerRow]) -> ConvAdvantage | None:
    """Parameter sharing and sparse connections, computed for the first Conv2D row (or None)."""
    for r in rows:
        if r.kind != "Conv2D" or r.kernel_size is None or r.params_from_formula is None:
            continue
        if r.input_shape is None or r.shape_from_formula is None:
            continue
        h, w, c = (int(d) for d in r.input_shape if d is not None)
        oh, ow, of = (int(d) for d in r.shape_from_formula if d is not None)
        fh, fw = r.kernel_size
        return ConvAdvantage(
            layer=r.name,
            input_shape=(h, w, c),
            output_shape=(oh, ow, of),
            kernel_size=(fh, fw),
            conv_params=r.params_from_formula,
            dense_params=dense_params(h * w * c, oh * ow * of),
            inputs_per_output=fh * fw * c,
            inputs_total=h * w * c,
        )
    return None


def fmt_shape(shape: Shape | None) -> str:
    """``(28, 28, 1)`` -> ``"28x28x1"``; an axis of any size reads ``?``, no shape ``n/a``."""
    if shape is None:
        return "n/a"
    return "x".join("?" if d is None else str(d) for d in shape)


def _check_text(r: LayerRow) -> str:
    agrees = r.agrees
    return "n/a" if agrees is None else ("ok" if agrees else "MISMATCH")


def format_table(rows: Sequence[LayerRow]) -> str:
    """Render the rows as an aligned text table with totals and a "why convolutions win" footer.

    Columns: layer, kind, output shape by formula and by Keras, parameters by formula and
    by Keras, whether they agree, and the formulas with the numbers filled in.
    """
    header: tuple[str, ...] = ("layer", "kind", "shape (formula)", "shape (keras)")
    header += ("params (formula)", "params (keras)", "check", "formula")
    body = [
        (
            r.name,
            r.kind,
            fmt_shape(r.shape_from_formula),
            fmt_shape(r.shape_from_keras),
            "n/a" if r.params_from_formula is None else _fmt_int(r.params_from_formula),
            _fmt_int(r.params_from_keras),
            _check_text(r),
            r.formula,
        )
        for r in rows
    ]
    known = [r.params_from_formula for r in rows if r.params_from_formula is not None]
    formula_total = _fmt_int(sum(known)) + ("" if len(known) == len(rows) else " + n/a")
    keras_total = _fmt_int(sum(r.params_from_keras for r in rows))
    all_ok = all(r.agrees for r in rows)
    total = ("total", "", "", "", formula_total, keras_total, "ok" if all_ok else "CHECK", "")

    widths = [max(len(line[i]) for line in (header, *body, total)) for i in range(len(header))]
    numeric = {4, 5}  # right-align the counts so the digits line up

    def render(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [render(header), rule, *(render(line) for line in body), rule, render(total)]
    lines.append(
        f"total parameters: formula {formula_total}, keras {keras_total}"
        + ("" if all_ok else "  (some rows disagree or have no formula)")
    )

    adv = conv_advantage(rows)
    if adv is not None:
        (h, w, c), (oh, ow, of), (fh, fw) = adv.input_shape, adv.output_shape, adv.kernel_size
        n_in, n_out = _fmt_int(adv.inputs_total), _fmt_int(oh * ow * of)
        lines += [
            "",
            f"Why convolutions win ({adv.layer}: {h}x{w}x{c} -> {oh}x{ow}x{of}):",
            f"  parameter sharing: {adv.layer} has {_fmt_int(adv.conv_params)} parameters, because"
            f" each {fh}x{fw}x{c} filter is reused at all {_fmt_int(oh * ow)} positions;",
            f"    a Dense layer from the same {n_in} inputs to the same {n_out} outputs needs"
            f" ({n_in}+1)*{n_out} = {_fmt_int(adv.dense_params)} ({adv.ratio:,.0f}x more).",
            f"  sparse connections: each output value sees {fh}*{fw}*{c} ="
            f" {_fmt_int(adv.inputs_per_output)} inputs; a Dense unit sees all {h}*{w}*{c} ="
            f" {n_in}.",
        ]
    return "\n".join(lines)
