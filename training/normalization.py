"""MNIST-style digit normalisation as a Keras layer inside the exported model.

What LeCun, Cortes and Burges did to every MNIST digit before anyone trained on it, done here on
every image the model sees (training batches and uploads alike), in pure, batched TensorFlow:

1. **Polarity.** The background is the median of the border pixels (robust to a digit that
   touches the edge); when it is brighter than the middle of the image's range, the image is
   inverted, so ink is always light on a dark background (dark ink on paper works like chalk).
2. **Contrast.** The background level is subtracted and the ink stretched to 0..255 by its
   peak, so a faint pencil stroke on grey paper looks like a full-contrast one. Values below
   :data:`NOISE_FLOOR` of the peak are set to 0: JPEG ringing and sensor noise vanish.
3. **Crop.** The ink's bounding box is the set of rows and columns holding a pixel above
   :data:`INK_THRESHOLD` of the peak (relative to the image, never an absolute grey level).
4. **Scale.** The box's longer side is scaled to :data:`DIGIT_BOX` pixels, keeping the aspect
   ratio (a "1" stays thin), inside a :data:`DIGIT_FRAME`-pixel square frame.
5. **Centre.** The digit's centre of mass goes to the frame's centre, as in MNIST, unless that
   would push the box out of the frame (then it moves only as far as the margin allows).

A blank image (ink contrast below :data:`MIN_CONTRAST` grey levels: all white, all black, an
empty sheet with JPEG noise) comes out all zeros: the classifier answers as usual with its prior.

The crop-and-scale is one affine map per image (output pixel -> input pixel), applied as a
bilinear resample in two matrix products (:func:`_warp`: what ``ImageProjectiveTransformV3``
gives, in operations OpenVINO converts and XLA compiles, so a compiled runtime takes the whole
model, pixels in). :func:`digit_transforms` returns those maps so the
explanation endpoints can carry a Grad-CAM heatmap back through the crop onto the image the
user sent (:func:`heatmap_to_input`).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = [
    "DIGIT_BOX",
    "DIGIT_FRAME",
    "INK_THRESHOLD",
    "MIN_CONTRAST",
    "NOISE_FLOOR",
    "DigitJitter",
    "NormalizeDigits",
    "box_side",
    "crop_boxes",
    "digit_transforms",
    "heatmap_to_input",
    "normalize_digits",
]

#: Side of the square the digit is centred in, pixels (MNIST: 28).
DIGIT_FRAME = 28
#: The digit's longer side after scaling, pixels (MNIST: 20).
DIGIT_BOX = 20
#: A pixel belongs to the ink's bounding box above this fraction of the ink's peak.
INK_THRESHOLD = 0.3
#: Ink below this fraction of its peak is zeroed (JPEG ringing, sensor noise, paper texture).
NOISE_FLOOR = 0.15
#: Below this peak ink contrast (grey levels 0..255) the image counts as blank.
MIN_CONTRAST = 24.0


def box_side(frame: tuple[int, int]) -> float:
    """The digit's longer side in a ``frame`` (height, width) output, pixels: 20/28 of the
    shorter side, as in MNIST."""
    return min(frame) * DIGIT_BOX / DIGIT_FRAME


def _polarity_and_ink(gray: Any) -> tuple[Any, Any]:
    """(N, H, W) grey 0..255 -> (ink 0..1 with noise floored, blank flags (N,) bool)."""
    import tensorflow as tf

    border = tf.concat([gray[:, 0, :], gray[:, -1, :], gray[:, :, 0], gray[:, :, -1]], axis=1)
    count = tf.shape(border)[1]
    # The median, (N,): the (count // 2)-th smallest, from a top-k of half the values (a
    # full sort costs OpenVINO twice as much, ~24 us per image at batch 32).
    background = -tf.math.top_k(-border, k=count // 2 + 1, sorted=True).values[:, -1]
    low = tf.reduce_min(gray, axis=(1, 2))
    high = tf.reduce_max(gray, axis=(1, 2))
    invert = background > (low + high) / 2.0
    flip = tf.where(invert, -1.0, 1.0)[:, None, None]
    offset = tf.where(invert, 255.0, 0.0)[:, None, None]
    light = gray * flip + offset  # ink light on dark
    background = background * flip[:, 0, 0] + offset[:, 0, 0]
    ink = tf.nn.relu(light - background[:, None, None])
    peak = tf.reduce_max(ink, axis=(1, 2))
    blank = peak < MIN_CONTRAST
    scaled = ink / tf.maximum(peak, MIN_CONTRAST)[:, None, None]
    scaled = tf.where(blank[:, None, None], tf.zeros_like(scaled), scaled)
    floored = tf.clip_by_value((scaled - NOISE_FLOOR) / (1.0 - NOISE_FLOOR), 0.0, 1.0)
    return floored, blank


def _first_true(flags: Any) -> Any:
    """Index of the first True along axis 1 of (N, L) bools (0 when none)."""
    import tensorflow as tf

    return tf.argmax(tf.cast(flags, tf.int32), axis=1, output_type=tf.int32)


def _ink_geometry(ink: Any, blank: Any, frame: tuple[int, int]) -> tuple[Any, Any]:
    """Affine maps (N, 8) from output pixels to input pixels, and ink boxes (N, 4) as
    (top, left, bottom, right) in input pixels, inclusive (the whole image when blank)."""
    import tensorflow as tf

    shape = tf.shape(ink)
    height, width = shape[1], shape[2]
    threshold = (INK_THRESHOLD - NOISE_FLOOR) / (1.0 - NOISE_FLOOR)
    mask = ink > threshold
    rows, cols = tf.reduce_any(mask, axis=2), tf.reduce_any(mask, axis=1)
    top = _first_true(rows)
    bottom = height - 1 - _first_true(tf.reverse(rows, axis=[1]))
    left = _first_true(cols)
    right = width - 1 - _first_true(tf.reverse(cols, axis=[1]))
    top = tf.where(blank, 0, top)
    left = tf.where(blank, 0, left)
    bottom = tf.where(blank, height - 1, bottom)
    right = tf.where(blank, width - 1, right)
    box = tf.cast(tf.stack([top, left, bottom, right], axis=1), tf.float32)
    side = tf.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) + 1.0
    box_px = box_side(frame)
    scale = side / box_px  # input pixels per output pixel

    # Centre of mass of the ink inside the box; the box centre for a blank image.
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    inside = tf.logical_and(
        tf.logical_and(ys >= box[:, 0, None, None], ys <= box[:, 2, None, None]),
        tf.logical_and(xs >= box[:, 1, None, None], xs <= box[:, 3, None, None]),
    )
    weights = tf.where(inside, ink, 0.0)
    mass = tf.reduce_sum(weights, axis=(1, 2))
    centre_y = (box[:, 0] + box[:, 2]) / 2.0
    centre_x = (box[:, 1] + box[:, 3]) / 2.0
    safe_mass = tf.maximum(mass, 1e-6)
    com_y = tf.where(mass > 0, tf.reduce_sum(weights * ys, axis=(1, 2)) / safe_mass, centre_y)
    com_x = tf.where(mass > 0, tf.reduce_sum(weights * xs, axis=(1, 2)) / safe_mass, centre_x)
    # Shift (output pixels) of the box centre from the frame centre, kept inside the margin
    # (the box's extent along each axis, so a tall "1" may still slide sideways).
    room_y = tf.maximum((frame[0] - (box[:, 2] - box[:, 0] + 1.0) / scale) / 2.0, 0.0)
    room_x = tf.maximum((frame[1] - (box[:, 3] - box[:, 1] + 1.0) / scale) / 2.0, 0.0)
    shift_y = tf.clip_by_value((centre_y - com_y) / scale, -room_y, room_y)
    shift_x = tf.clip_by_value((centre_x - com_x) / scale, -room_x, room_x)
    anchor_y = centre_y - shift_y * scale  # the input point that lands on the frame centre
    anchor_x = centre_x - shift_x * scale
    middle_y, middle_x = (frame[0] - 1) / 2.0, (frame[1] - 1) / 2.0
    zeros = tf.zeros_like(scale)
    transforms = tf.stack(
        [
            *(scale, zeros, anchor_x - middle_x * scale),
            *(zeros, scale, anchor_y - middle_y * scale),
            *(zeros, zeros),
        ],
        axis=1,
    )
    return transforms, box


def _axis_weights(scale: Any, offset: Any, size_out: Any, size_in: Any) -> Any:
    """Bilinear weights along one axis, (N, size_out, size_in) float32: output pixel ``j``
    samples the input at ``scale * j + offset`` (per image), and input pixel ``i`` weighs
    ``max(0, 1 - |position - i|)``, so a position between two pixels mixes them linearly and
    a pixel past the image's edge adds nothing (a constant fill of 0)."""
    import tensorflow as tf

    out = tf.cast(tf.range(size_out), tf.float32)
    position = scale[:, None] * out[None, :] + offset[:, None]  # (N, size_out), input pixels
    pixels = tf.cast(tf.range(size_in), tf.float32)
    return tf.nn.relu(1.0 - tf.abs(position[:, :, None] - pixels[None, None, :]))


def _warp(images: Any, transforms: Any, size: tuple[int, int] | Any) -> Any:
    """Bilinear resample of grey images (N, H, W) float32 to (N, *size) with output->input
    maps (N, 8); outside is 0.

    The maps are axis-aligned scales and shifts (``ImageProjectiveTransformV3``'s layout with
    ``a1 = b0 = c0 = c1 = 0``, all this module makes), so the resample is separable: one
    weight matrix per axis, applied as two matrix products. That gives what
    ``ImageProjectiveTransformV3`` (bilinear, constant fill 0) gives, to float rounding, in
    operations every compiler takes: OpenVINO converts the whole model, normalisation
    included, and XLA compiles it.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    rows = _axis_weights(transforms[:, 4], transforms[:, 5], size[0], shape[1])  # (N, h, H)
    cols = _axis_weights(transforms[:, 0], transforms[:, 2], size[1], shape[2])  # (N, w, W)
    # As einsums over (N, H, W, C), not batched matrix products: OpenVINO then keeps them in
    # float32 under bf16 (as matrix products they ran in bfloat16, and bf16's top-1 agreement
    # fell to 0.986: the resample must place the ink exactly).
    resampled_rows = tf.einsum("nyh,nhwc->nywc", rows, images[..., None])
    return tf.einsum("nywc,nxw->nyxc", resampled_rows, cols)[..., 0]


def normalize_digits(images: Any, frame: tuple[int, int] = (DIGIT_FRAME, DIGIT_FRAME)) -> Any:
    """(N, H, W, 1) grey 0..255 (any H, W) -> (N, *frame, 1) float32 0..255, MNIST-style:
    light ink on black, cropped to the ink, longer side 20/28 of the frame, centred by mass."""
    import tensorflow as tf

    gray = tf.cast(images, tf.float32)[..., 0]
    ink, blank = _polarity_and_ink(gray)
    transforms, _box = _ink_geometry(ink, blank, frame)
    out = _warp(ink * 255.0, transforms, frame)[..., None]
    return tf.clip_by_value(out, 0.0, 255.0)


def digit_transforms(images: Any, frame: tuple[int, int] = (DIGIT_FRAME, DIGIT_FRAME)) -> Any:
    """The affine maps :func:`normalize_digits` applies, (N, 8) float32, output -> input pixels
    (``ImageProjectiveTransformV3`` layout: ``x_in = a0 x + a2``, ``y_in = b1 y + b2``)."""
    import tensorflow as tf

    ink, blank = _polarity_and_ink(tf.cast(images, tf.float32)[..., 0])
    return _ink_geometry(ink, blank, frame)[0]


def crop_boxes(transforms: Any, frame: tuple[int, int] = (DIGIT_FRAME, DIGIT_FRAME)) -> Any:
    """The input region that fills the normalised frame, from :func:`digit_transforms`'s maps:
    (N, 4) float32 (top, left, bottom, right) in input pixels, inclusive pixel centres (it
    may reach past the image: that part is padding)."""
    import tensorflow as tf

    scale, x0, y0 = transforms[:, 0], transforms[:, 2], transforms[:, 5]
    return tf.stack([y0, x0, y0 + (frame[0] - 1) * scale, x0 + (frame[1] - 1) * scale], axis=1)


def heatmap_to_input(
    heatmap: Any,
    transforms: Any,
    input_size: Any,
    frame: tuple[int, int] = (DIGIT_FRAME, DIGIT_FRAME),
) -> Any:
    """Carry maps over the normalised frame back onto the input image.

    Args:
        heatmap: (N, h, w) float32 over the normalised ``frame`` (e.g. Grad-CAM at a conv
            layer's resolution).
        transforms: (N, 8) from :func:`digit_transforms` of the same images.
        input_size: (H, W) of the images the transforms were computed on, pixels.

    Returns:
        (N, h, w) float32: the same grid resolution, laid over the input image instead; cells
        outside the crop are 0.
    """
    import tensorflow as tf

    maps = tf.cast(heatmap, tf.float32)
    grid = tf.shape(maps)[1:3]
    grid_f = tf.cast(grid, tf.float32)
    size_f = tf.cast(tf.convert_to_tensor(input_size), tf.float32)
    scale, x0, y0 = transforms[:, 0], transforms[:, 2], transforms[:, 5]

    def axis_map(
        cells_out: Any, pixels_in: Any, cells_map: Any, origin: Any, frame_px: int
    ) -> tuple[Any, Any]:
        # output cell j -> input pixel p -> normalised pixel q -> heatmap cell g, all affine.
        step_in = pixels_in / cells_out  # input pixels per output cell
        step_map = cells_map / frame_px  # heatmap cells per normalised pixel
        slope = step_in / scale * step_map
        intercept = ((0.5 * step_in - 0.5 - origin) / scale + 0.5) * step_map - 0.5
        return slope, intercept

    slope_x, icpt_x = axis_map(grid_f[1], size_f[1], grid_f[1], x0, frame[1])
    slope_y, icpt_y = axis_map(grid_f[0], size_f[0], grid_f[0], y0, frame[0])
    zeros = tf.zeros_like(scale)
    inverse = tf.stack([slope_x, zeros, icpt_x, zeros, slope_y, icpt_y, zeros, zeros], axis=1)
    return _warp(maps, inverse, grid)


@keras.saving.register_keras_serializable(package="imgcls")
class NormalizeDigits(keras.layers.Layer):
    """MNIST-style normalisation of grey digit images (see the module docstring).

    Shape ``(N, H, W, 1) -> (N, height, width, 1)``, float32 grey levels 0..255 in and out
    (light ink on black out); no trainable parameters. Put it after the grayscale conversion
    and before the rescaling.

    Args:
        height, width: the output frame, pixels (default 28x28, MNIST's); the digit's longer
            side becomes 20/28 of the shorter one.
    """

    def __init__(self, height: int = DIGIT_FRAME, width: int = DIGIT_FRAME, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if height < 1 or width < 1:
            raise ValueError(f"NormalizeDigits needs a positive frame, got {height}x{width}")
        self.height = int(height)
        self.width = int(width)

    @property
    def frame(self) -> tuple[int, int]:
        return self.height, self.width

    def call(self, inputs: Any) -> Any:
        return normalize_digits(inputs, self.frame)

    def transforms(self, inputs: Any) -> Any:
        """Output -> input affine maps for ``inputs``, (N, 8): see :func:`digit_transforms`."""
        return digit_transforms(inputs, self.frame)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if input_shape[-1] not in (None, 1):
            raise ValueError(f"NormalizeDigits expects 1 channel, got shape {input_shape}")
        return (input_shape[0], self.height, self.width, 1)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(height=self.height, width=self.width)
        return config


@keras.saving.register_keras_serializable(package="imgcls")
class DigitJitter(keras.layers.RandomTranslation):
    """``RandomTranslation`` that only moves anything while training.

    Keras's image augmentation layers default to ``training=True`` when a model is called
    without the argument, so ``model(x)`` would shift serving inputs at random; this one
    defaults to ``False`` (``fit`` still passes ``training=True``).
    """

    def call(self, data: Any, training: bool = False) -> Any:
        return super().call(data, training=training)
