"""Uploaded bytes -> a model-ready RGB float32 array, refusing anything unsafe or unsupported.

The decoder itself lives in :mod:`training.decoding`, the one module training and serving share
(STYLE.md: the service imports from training only the contracts both sides must agree on, and the
image decoder is one of them), so a served image and a trained image go through the very same
pixels: first frame, EXIF orientation, transparency onto black, 16-bit scaling, reduced-scale JPEG
decode and antialiased bilinear resize. This module is the service's name for it: routes and tests
import ``ImageError``, ``decode_image``, ``declared_pixels``, ``sniff_format``... from here.

The error classes carry the HTTP status a route answers with (``ImageError.status_code``: 400,
413 or 415) and a ``detail`` that says what to fix.

:func:`decode_image` is CPU-bound and blocking; call it from a worker thread, not the event loop.
"""

from __future__ import annotations

from training.decoding import (
    SUPPORTED_FORMATS,
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    _PillowWarningsGuard,
    declared_pixels,
    decode_image,
    image_to_array,
    probe_header,
    sniff_format,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "DecodedImage",
    "EmptyImageError",
    "ImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "_PillowWarningsGuard",
    "declared_pixels",
    "decode_image",
    "image_to_array",
    "probe_header",
    "sniff_format",
]
