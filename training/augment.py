"""Training augmentation: the two augmenters, each written once.

* :func:`geometric` (``--augment``): random rotation, shift and zoom, any data.
* :func:`handwriting` (``--handwriting-augment``): variants that look like the digits people
  actually send.

Both work on float32 batches; :mod:`training.data`, which owns every tf.data pipeline, applies
them to the training split only. Neither imports TensorFlow or Keras until it is called.

The bundled digits are light ink on black, centred and filling the frame. Users photograph or
scan dark ink on paper, write small or large anywhere on the sheet, with thin or thick pens,
slightly rotated or slanted, blurred by the camera and compressed as JPEG. :func:`handwriting`
turns a batch of training digits into such pictures (at the training resolution, which is what
the service also resizes every upload to); the model's own :mod:`training.normalization` then
undoes what it can, exactly as it does for uploads, so training and serving see the same pixels.

Every draw is per image and stateless (``tf.random.stateless_*`` from a per-batch seed), so a
run is reproducible from ``--seed`` and each epoch sees new variants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["HandwritingAugment", "geometric", "handwriting"]


#: ``--augment`` ranges: rotation up to this fraction of a full turn either way (0.05: 18
#: degrees), shift up to this fraction of the height and width, zoom in or out by up to this
#: fraction of the size. Pixels moved in from outside the frame are black (0).
GEOMETRIC_ROTATION = 0.05
GEOMETRIC_SHIFT = 0.1
GEOMETRIC_ZOOM = 0.1


def geometric(seed: int) -> Any:
    """The ``--augment`` augmenter: a ``keras.Sequential`` of random rotation, shift and zoom.

    Call it as ``augmenter(images, training=True)`` on float32 ``(N, H, W, C)`` batches (any
    value range, any ``C``); each image gets its own draw, reproducible from ``seed``.
    """
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(GEOMETRIC_ROTATION, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(
                GEOMETRIC_SHIFT, GEOMETRIC_SHIFT, fill_mode="constant", seed=seed
            ),
            keras.layers.RandomZoom(GEOMETRIC_ZOOM, fill_mode="constant", seed=seed),
        ],
        name="augment",
    )


@dataclass(frozen=True)
class HandwritingAugment:
    """Ranges of the random variations (all per image).

    Attributes:
        keep: fraction of images left exactly as they are (the clean data stays in the mix).
        rotation_deg: rotation up to this many degrees either way.
        shear: horizontal slant up to this factor either way.
        scale: digit size as a fraction of the frame side (small on a sheet .. as trained).
        aspect: horizontal stretch factor range around 1 (narrow or wide writing).
        thickness: stroke thickness change: -1 erodes by one pixel, +1 dilates by one.
        blur: probability of a Gaussian blur of sigma up to :attr:`blur_sigma` pixels.
        dark_on_light: probability of dark ink on a light background (paper).
        jpeg: probability of a JPEG round trip at quality :attr:`jpeg_quality`.
        noise_std: Gaussian pixel noise up to this standard deviation, grey levels.
    """

    keep: float = 0.25
    rotation_deg: float = 12.0
    shear: float = 0.25
    scale: tuple[float, float] = (0.3, 1.05)
    aspect: tuple[float, float] = (0.8, 1.2)
    thickness: tuple[float, float] = (-0.7, 1.0)
    blur: float = 0.4
    blur_sigma: float = 1.2
    dark_on_light: float = 0.5
    jpeg: float = 0.4
    jpeg_quality: tuple[int, int] = (35, 95)
    noise_std: float = 6.0


def _offset(seed: Any, first: int, second: int) -> Any:
    """A distinct stateless seed per draw: ``seed + (first, second)`` element-wise."""
    import tensorflow as tf

    return seed + tf.constant([first, second], dtype=seed.dtype)


def _gaussian_kernel(sigma: float, radius: int) -> Any:
    import tensorflow as tf

    xs = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-(xs**2) / (2.0 * sigma**2))
    weights /= tf.reduce_sum(weights)
    return weights


def _blur(images: Any, sigma: float) -> Any:
    """Separable Gaussian blur of (N, H, W, 1) float32."""
    import tensorflow as tf

    radius = max(1, math.ceil(2 * sigma))
    kernel = _gaussian_kernel(sigma, radius)
    horizontal = tf.reshape(kernel, (1, -1, 1, 1))
    vertical = tf.reshape(kernel, (-1, 1, 1, 1))
    out = tf.nn.conv2d(images, horizontal, strides=1, padding="SAME")
    return tf.nn.conv2d(out, vertical, strides=1, padding="SAME")


def _affine(images: Any, seed: Any, cfg: HandwritingAugment) -> Any:
    """Rotate, slant, stretch, shrink and move each digit (light on black, fill black)."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)

    def uniform(i: int, low: float, high: float) -> Any:
        return tf.random.stateless_uniform((n,), seed=_offset(seed, 0, i), minval=low, maxval=high)

    angle = uniform(1, -1.0, 1.0) * math.radians(cfg.rotation_deg)
    shear = uniform(2, -cfg.shear, cfg.shear)
    zoom = uniform(3, *cfg.scale)
    stretch = uniform(4, *cfg.aspect)
    zx, zy = zoom * tf.sqrt(stretch), zoom / tf.sqrt(stretch)
    # Forward map (input centred -> output centred): A = R(angle) @ Shear @ diag(zx, zy).
    cos, sin = tf.cos(angle), tf.sin(angle)
    a11, a12 = cos * zx, (cos * shear - sin) * zy
    a21, a22 = sin * zx, (sin * shear + cos) * zy
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    # Move anywhere the shrunken digit still fits (a few pixels of jitter at full size).
    room_x = tf.maximum((1.0 - zx) * width / 2.0, 2.0)
    room_y = tf.maximum((1.0 - zy) * height / 2.0, 2.0)
    tx = uniform(5, -1.0, 1.0) * room_x
    ty = uniform(6, -1.0, 1.0) * room_y
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Output -> input: p_in = A^-1 (p_out - c - t) + c.
    ox, oy = -cx - tx, -cy - ty
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [
            i11,
            i12,
            i11 * ox + i12 * oy + cx,
            i21,
            i22,
            i21 * ox + i22 * oy + cy,
            zeros,
            zeros,
        ],
        axis=1,
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def handwriting(images: Any, seed: Any, cfg: HandwritingAugment | None = None) -> Any:
    """Random handwriting-like variants of a batch of digits.

    Args:
        images: (N, H, W, C) float32 grey levels 0..255, light ink on black (C = 1 or 3 equal
            channels; the result has the same channels, all equal).
        seed: int32/int64 tensor of shape (2,), the stateless seed for this batch.
        cfg: the ranges; :class:`HandwritingAugment`'s defaults when None.

    Returns:
        (N, H, W, C) float32 0..255: a fraction ``cfg.keep`` unchanged, the rest varied.
    """
    import tensorflow as tf

    cfg = cfg or HandwritingAugment()
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    channels = images.shape[-1]
    x = tf.cast(images[..., :1], tf.float32)
    n = tf.shape(x)[0]

    def uniform(i: int, low: float = 0.0, high: float = 1.0) -> Any:
        return tf.random.stateless_uniform(
            (n, 1, 1, 1), seed=_offset(seed, i, 0), minval=low, maxval=high
        )

    # Stroke thickness: blend towards a 3x3 dilation (thicker) or erosion (thinner).
    amount = uniform(1, *cfg.thickness)
    dilated = tf.nn.max_pool2d(x, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-x, 3, 1, "SAME")
    x = tf.where(amount > 0, x + amount * (dilated - x), x - amount * (eroded - x))

    x = _affine(x, _offset(seed, 0, 7), cfg)

    blurred = _blur(x, cfg.blur_sigma)
    x = tf.where(uniform(2) < cfg.blur, x + uniform(3) * (blurred - x), x)

    # Ink and background levels: light on dark (chalk, screens) or dark on light (paper).
    paper = uniform(4) < cfg.dark_on_light
    dark_level, light_level = uniform(5, 0.0, 70.0), uniform(6, 170.0, 255.0)
    background = tf.where(paper, light_level, dark_level)
    ink = tf.where(paper, uniform(7, 0.0, 90.0), uniform(8, 160.0, 255.0))
    x = background + (ink - background) * (x / 255.0)
    x += tf.random.stateless_normal(tf.shape(x), seed=_offset(seed, 9, 0)) * uniform(
        10, 0, cfg.noise_std
    )
    x = tf.clip_by_value(x, 0.0, 255.0)

    quality = tf.random.stateless_uniform(
        (n,),
        seed=_offset(seed, 11, 0),
        minval=cfg.jpeg_quality[0],
        maxval=cfg.jpeg_quality[1] + 1,
        dtype=tf.int32,
    )

    def jpeg(args: tuple[Any, Any]) -> Any:
        image, q = args
        encoded = tf.raw_ops.EncodeJpegVariableQuality(
            images=tf.cast(tf.round(image), tf.uint8), quality=q
        )
        return tf.cast(tf.image.decode_jpeg(encoded, channels=1), tf.float32)

    compressed = tf.map_fn(jpeg, (x, quality), fn_output_signature=tf.float32)
    compressed = tf.ensure_shape(compressed, x.shape)
    x = tf.where(uniform(12) < cfg.jpeg, compressed, x)

    original = tf.cast(images[..., :1], tf.float32)
    x = tf.where(uniform(13) < cfg.keep, original, x)
    return tf.repeat(x, channels, axis=-1) if channels != 1 else x
