"""Images built in memory: a real handwritten digit as PNG, noise, solid colours, and the odd,
broken and hostile files the decoder and the live server must refuse.

:func:`digit_png` is the one way the tests turn a bundled digit into an upload.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """``image`` saved as ``fmt``, as bytes (Pillow's defaults unless ``params`` say otherwise)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """Save ``image`` as ``fmt`` into bytes (lossless WebP unless asked otherwise)."""
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    return save(image, fmt, **params)


def encode_hq(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """As :func:`encode`, with JPEG at quality 90 unless asked otherwise."""
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    return encode(image, fmt, **params)


def png_bytes(image: Image.Image) -> bytes:
    return save(image, "PNG")


def gray_png(gray: np.ndarray) -> bytes:
    """A grey image (height, width) of 0..255 values as PNG bytes."""
    return png_bytes(Image.fromarray(np.asarray(gray, dtype=np.uint8)))


def flat_png(value: int = 128, size: int = 8) -> bytes:
    """A ``size x size`` grey PNG of one ``value``."""
    return gray_png(np.full((size, size), value, dtype=np.uint8))


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from training.data import digit_images

    return digit_images()


def digit_png(index: int = 0) -> bytes:
    """A real handwritten digit (light ink on black, 28x28) as PNG bytes."""
    return png_bytes(Image.fromarray(_digits()[0][index]))


def digit_pngs(count: int) -> list[bytes]:
    """The first ``count`` bundled digits as PNG bytes (see :func:`digit_png`)."""
    return [digit_png(index) for index in range(count)]


def digit_label(index: int = 0) -> str:
    return str(_digits()[1][index])


def noise_png(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """Seeded RGB noise, ``size`` = (width, height), as PNG bytes."""
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)))


def random_png(width: int, height: int, mode: str = "L") -> bytes:
    """Noise seeded by the size, grey (``L``) or ``RGB``, as PNG bytes."""
    rng = np.random.default_rng(width * 1000 + height)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return save(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)), "PNG")


def solid_jpeg(width: int, height: int) -> bytes:
    """A red RGB JPEG of ``width x height``."""
    return save(Image.new("RGB", (width, height), (200, 10, 10)), "JPEG")


# --- hostile files -----------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed grey PNG header declaring ``width x height``, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_with_text_bomb() -> bytes:
    """A 2 KB PNG whose zTXt chunk inflates to 64 MB."""
    png = digit_png()
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return png[:33] + bomb + png[33:]  # right after IHDR


def gif_with_frames(count: int) -> bytes:
    frames = [Image.new("P", (8, 8), i % 256) for i in range(count)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)


#: Files outside the five supported formats, and the word the refusal must name.
REFUSED_BY_CONTENT: dict[str, tuple[bytes, str]] = {
    "text-as-png": (b"hello, not an image at all", "unrecognised bytes"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "pdf": (save(Image.new("RGB", (8, 8)), "PDF"), "PDF"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript"),
    "tiff": (save(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
    "psd": (b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 4, 4, 8, 3) + b"\0" * 62, "PSD"),
    "fits": (b"SIMPLE  =                    T" + b" " * 2850, "FITS"),
    "ico": (save(Image.new("RGB", (16, 16)), "ICO"), "ICO"),
    "jpeg2000": (save(Image.new("RGB", (8, 8)), "JPEG2000"), "JPEG 2000"),
    "ppm": (save(Image.new("RGB", (8, 8)), "PPM"), "Netpbm"),
    "zip": (b"PK\x03\x04" + b"\0" * 100, "ZIP"),
    "html": (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "HTML"),
}
