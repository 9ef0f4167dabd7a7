"""Images carried as tensors: pixel arrays (N, H, W, 3) 0..255, or encoded image bytes.

Both protocols turn their inputs into an :class:`ImagesInput`; the pipeline then decodes the
encoded ones exactly as ``/predict`` does, and runs pixel arrays as they are (the model resizes
them itself), so every protocol gets the same probabilities for the same image.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.serving.decode_step import Upload
from service.serving.errors import InvalidInput, PayloadTooLarge

#: Pixel values a model takes: 0..255 (what decoding an 8-bit image gives).
PIXEL_MIN, PIXEL_MAX = 0.0, 255.0


@dataclass(frozen=True)
class ImagesInput:
    """One request's images: either ``pixels`` (a list of (H, W, 3) float32 arrays) or
    ``encoded`` (image files to decode). Exactly one of them is set."""

    pixels: list[np.ndarray] | None = None
    encoded: list[Upload] | None = None

    def __len__(self) -> int:
        return len(self.pixels if self.pixels is not None else self.encoded or [])


def bad_input(message: str) -> InvalidInput:
    return InvalidInput(message)


#: The setting that bounds the images of one tensor-protocol request (V2, TF Serving).
TENSOR_LIMIT_SETTING = "IMGCLS_MAX_TENSOR_IMAGES"


def check_count(count: int, max_images: int) -> None:
    """At least one image, at most ``max_images`` (:data:`TENSOR_LIMIT_SETTING`)."""
    if count == 0:
        raise bad_input("no images in the request: send at least one")
    if count > max_images:
        raise bad_input(
            f"{count} images in one request; this model takes at most {max_images} per request "
            f"(its queue size; {TENSOR_LIMIT_SETTING} sets another limit): send fewer per request"
        )


def pixel_batch(
    values: object,
    *,
    what: str,
    max_images: int,
    max_pixels: int,
    shape: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """``values`` (nested lists or an array) -> N float32 (H, W, 3) images, checked: shape,
    finite values within 0..255, at most ``max_images`` images of ``max_pixels`` pixels."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise bad_input(
            f"{what}: pixel values must be numbers in nested lists of one shape "
            "(N, height, width, 3)"
        ) from None
    if shape is not None:
        if math.prod(shape) != array.size:
            raise bad_input(
                f"{what}: shape {list(shape)} needs {math.prod(shape)} values, got {array.size}"
            )
        array = array.reshape(tuple(shape))
    received = list(array.shape)  # as the client sent it, for the message
    if array.ndim == 3 and array.shape[-1] == 3:  # one image, no batch dimension
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        hint = (
            "; each pixel is [R, G, B]: a grey image repeats its value three times"
            if received and received[-1] != 3
            else ""
        )
        raise bad_input(
            f"{what}: expected pixels of shape (N, height, width, 3) (RGB, 0..255), got "
            f"{received}{hint}"
        )
    count, height, width, _ = array.shape
    check_count(count, max_images)
    if height < 1 or width < 1:
        raise bad_input(f"{what}: an image needs at least one pixel, got {height}x{width}")
    if height * width > max_pixels:
        raise PayloadTooLarge(
            f"{what}: {height}x{width} = {height * width} pixels per image; the limit is "
            f"{max_pixels} (IMGCLS_MAX_PIXELS)"
        )
    if not np.isfinite(array).all() or array.min() < PIXEL_MIN or array.max() > PIXEL_MAX:
        raise bad_input(f"{what}: pixel values must be finite numbers from 0 to 255")
    return list(array)


def b64_image(value: object, *, what: str) -> bytes:
    """Standard base64 (padding optional, no line breaks needed) -> bytes; 400 otherwise."""
    if not isinstance(value, str):
        raise bad_input(f"{what}: 'b64' must be a string of base64, got {type(value).__name__}")
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    for altchars in (None, b"-_"):  # the standard alphabet, or the URL-safe one some send
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise bad_input(f"{what}: 'b64' is not valid base64")
