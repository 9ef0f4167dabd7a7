"""Image files on disk, for training's data folders: which names to read, what a file's header
says (size, mode, grey or colour) without decoding it, and a file decoded as an upload is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from contract.decoding.decode import (
    _OPEN_FORMATS,
    _ORIENTATION_TRANSPOSE,
    _SWAPS_AXES,
    DecodedImage,
    _bomb_error,
    _exif_orientation,
    _pillow_warnings,
    _reason,
    decode_image,
)
from contract.decoding.errors import CorruptImageError, ImageError
from contract.decoding.probe import HEADER_BYTES, check_header, check_pixels

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
"""File name endings training reads from a data folder (the content still decides the format)."""

# Modes whose pixels are one grey value (transparency composites onto black, which stays grey).
_GRAY_MODES: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What a file's header says, read without decoding any pixel data.

    Attributes:
        format: Pillow format name, one of :data:`SUPPORTED_FORMATS` (multi-picture JPEG = "JPEG").
        size: ``(width, height)`` in pixels of the upright image (EXIF orientation applied).
        mode: Pillow mode of the stored first frame ("L", "RGB", "P", "I;16", ...).
        grayscale: True when every pixel decodes to three equal channels (grey modes, and
            palettes whose every entry is grey).
    """

    format: str
    size: tuple[int, int]
    mode: str
    grayscale: bool


def read_header(path: str | os.PathLike[str], *, max_pixels: int) -> ImageHeader:
    """Open ``path`` with Pillow and read its header only (no pixel data is decoded).

    Args:
        path: An image file.
        max_pixels: Largest accepted ``width * height``, in pixels.

    Raises:
        ImageError: the file is not a readable supported image (see :func:`check_header`).
        OSError: the file itself cannot be read.
    """
    with open(path, "rb") as handle:
        fmt = check_header(handle.read(HEADER_BYTES), max_pixels=max_pixels)
        handle.seek(0)
        with _pillow_warnings():
            try:
                with Image.open(handle, formats=_OPEN_FORMATS) as image:
                    width, height = image.size
                    if width < 1 or height < 1:
                        raise CorruptImageError(
                            f"the {fmt} header declares {width} x {height} pixels"
                        )
                    check_pixels((width, height), max_pixels)
                    if _ORIENTATION_TRANSPOSE.get(_exif_orientation(image)) in _SWAPS_AXES:
                        width, height = height, width
                    found = "JPEG" if image.format == "MPO" else (image.format or fmt)
                    return ImageHeader(found, (width, height), image.mode, _is_gray(image))
            except ImageError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb_error(exc, None, max_pixels) from exc
            except UnidentifiedImageError as exc:
                raise CorruptImageError(f"the {fmt} header is invalid or truncated") from exc
            except MemoryError:
                raise
            except OSError as exc:
                if exc.errno is not None:  # a real I/O error, not a decoder's complaint
                    raise
                raise CorruptImageError(_reason(fmt, exc)) from exc
            except Exception as exc:  # any other decoder complaint: the file's fault
                raise CorruptImageError(_reason(fmt, exc)) from exc


def decode_file(
    path: str | os.PathLike[str], *, target_size: tuple[int, int], max_pixels: int
) -> DecodedImage:
    """:func:`decode_image` on the bytes of ``path`` (read whole: images are small next to RAM).

    Raises:
        ImageError: as :func:`decode_image`.
        OSError: the file itself cannot be read.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    return decode_image(data, target_size=target_size, max_pixels=max_pixels)


def _is_gray(image: Image.Image) -> bool:
    """True when ``image`` (opened, not necessarily loaded) decodes to grey pixels only."""
    if image.mode in _GRAY_MODES:
        return True
    if image.mode not in ("P", "PA"):
        return False
    # image.getpalette() would load (decode) the image; the header's palette is enough.
    palette = image.palette
    if palette is None or palette.mode != "RGB":
        return False
    try:
        raw = bytes(palette.tobytes() if palette.rawmode is None else palette.palette)
    except Exception:  # an odd palette: call it colour, which is never wrong, only wider
        return False
    if palette.rawmode not in (None, "RGB"):
        return False
    triples = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
    return bool(triples.size) and bool(np.all(triples == triples[:, :1]))
