"""Decoding one image: bytes -> the model's RGB float32 pixels, the same for training and serving.

The first frame, EXIF orientation, transparency onto black, 16-bit scaling, reduced-scale JPEG
decode and antialiased bilinear resize; Pillow only ever tries the five supported decoders, and
its warnings never escape (see :class:`_PillowWarningsGuard`).

:func:`decode_image` is CPU-bound and blocking (Pillow releases the GIL while it decodes and
resizes); call it from a worker thread, not an event loop.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from contract.decoding.errors import CorruptImageError, ImageError, ImageTooLargeError
from contract.decoding.probe import SUPPORTED_FORMATS, check_pixels, probe_header

logger = logging.getLogger(__name__)

# Importing the five plugins registers them with Image.OPEN, so Image.open() never falls back to
# Image.init(), which would import every plugin Pillow ships. The formats= argument below is what
# actually confines decoding to these five.
_PLUGINS: Final = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)
_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(sorted(SUPPORTED_FORMATS))

_MAX_REASON_CHARS: Final = 200

# Exceptions Pillow's decoders raise for bad input. Anything else is unexpected (and logged), but
# still the client's bytes' fault, so it is reported as a corrupt image rather than a 500.
_DECODE_ERRORS: Final[tuple[type[Exception], ...]] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


@dataclass(frozen=True, eq=False, slots=True)
class DecodedImage:
    """One decoded upload, ready to be stacked into a batch.

    ``eq=False``: a generated ``__eq__``/``__hash__`` would compare/hash the array and raise.

    Attributes:
        array: Pixels, shape ``(H, W, 3)`` = the requested ``target_size``, float32 in 0..255,
            C-contiguous, RGB, EXIF orientation applied, transparency composited onto black.
        original_size: ``(width, height)`` in pixels of the upright image as uploaded (after EXIF
            orientation, before resizing).
        format: Pillow format name, one of :data:`SUPPORTED_FORMATS` (multi-picture JPEG = "JPEG").
    """

    array: np.ndarray
    original_size: tuple[int, int]
    format: str


class _PillowWarningsGuard:
    """Silence Pillow's warnings and turn ``DecompressionBombWarning`` into an exception.

    Pillow warns about recoverable oddities in untrusted files (bad EXIF, malformed MPO, invalid
    APNG, palette transparency...); they must not reach the service's logs on every request, nor
    fail a test run that treats warnings as errors.

    ``warnings.catch_warnings()`` swaps the process-global filter list on enter and restores it
    on exit, so two threads using it at once can restore each other's state and leave filters
    changed for good (Python < 3.14 or without ``-X context_aware_warnings``). This guard enters
    one shared ``catch_warnings()`` when the first decode starts and leaves it when the last one
    ends, so concurrent decodes never interleave enters and exits. While any decode runs, the two
    filters below apply to every thread; both only match Pillow, so nothing else is affected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._context: warnings.catch_warnings[None] | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                context: warnings.catch_warnings[None] = warnings.catch_warnings()
                context.__enter__()
                _install_pillow_filters()
                self._context = context
            self._users += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._context is not None:
                context, self._context = self._context, None
                context.__exit__(None, None, None)


def _install_pillow_filters() -> None:
    """Add this module's two warning filters (inside a ``catch_warnings`` block)."""
    # Later filterwarnings() calls go in front, so the bomb rule wins over the PIL-wide ignore.
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    warnings.simplefilter("error", Image.DecompressionBombWarning)


_SHARED_GUARD: Final = _PillowWarningsGuard()
# Python 3.14+ (-X context_aware_warnings, the default on free-threaded builds): catch_warnings()
# is context-local there, hence thread-safe on its own, and a shared one would not reach the
# other threads' contexts.
_CONTEXT_AWARE_WARNINGS: Final = bool(getattr(sys.flags, "context_aware_warnings", False))


@contextlib.contextmanager
def _local_pillow_warnings() -> Iterator[None]:
    """Per-call ``catch_warnings()`` with this module's filters (context-aware Pythons only)."""
    with warnings.catch_warnings():
        _install_pillow_filters()
        yield


def _pillow_warnings() -> contextlib.AbstractContextManager[None]:
    """Context manager applying :func:`_install_pillow_filters` for one decode, thread-safely."""
    return _local_pillow_warnings() if _CONTEXT_AWARE_WARNINGS else _SHARED_GUARD


# ------------------------------------------------------------------------------------ decoding

# EXIF orientation -> the transpose that makes the image upright; same table as
# PIL.ImageOps.exif_transpose, which is not called because it also rewrites the EXIF/XMP
# metadata of the result (wasted work here, and the step that fails on malformed EXIF).
_ORIENTATION_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES: Final = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    }
)
# info keys Image.getexif() reads an orientation from; without them there is nothing to parse.
_ORIENTATION_SOURCES: Final = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
_HIGH_DEPTH_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def decode_image(
    data: bytes,
    *,
    target_size: tuple[int, int],
    max_pixels: int,
    header: tuple[str, tuple[int, int] | None] | None = None,
) -> DecodedImage:
    """Decode one uploaded image into the model's input layout.

    Args:
        data: The uploaded bytes; the format is detected from them, never from a filename.
        target_size: ``(height, width)`` of the model input, in pixels.
        max_pixels: Largest accepted ``width * height`` of the upload, in pixels; checked from
            the header before any pixel data is decoded.
        header: What :func:`probe_header` returned for ``data``, when the caller already has it.

    Returns:
        The first frame, EXIF-oriented, transparency composited onto black, resized with
        (antialiased) bilinear filtering to ``target_size``: see :class:`DecodedImage`.

    Raises:
        EmptyImageError: ``data`` is empty (400).
        UnsupportedImageError: not PNG, JPEG, WebP, BMP or GIF by content (415).
        ImageTooLargeError: more than ``max_pixels`` pixels (413).
        CorruptImageError: a supported format that cannot be decoded (400).
        ValueError: ``target_size`` or ``max_pixels`` is not positive (a server bug, not a 4xx).
    """
    height, width = _check_target_size(target_size)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    fmt, declared = header if header is not None else probe_header(data)
    if declared is not None:
        check_pixels(declared, max_pixels)

    with _pillow_warnings():
        try:
            return _decode(data, fmt, (height, width), max_pixels)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own, global limit (Image.MAX_IMAGE_PIXELS) was hit before ours could run.
            raise _bomb_error(exc, declared, max_pixels) from exc
        except ValueError as exc:
            if "Decompressed data too large" in str(exc) or "Too much memory" in str(exc):
                reason = (
                    f"a PNG text or ICC chunk decompresses to more than "
                    f"{PngImagePlugin.MAX_TEXT_CHUNK} bytes; strip the metadata"
                )
                raise CorruptImageError(reason) from exc
            raise CorruptImageError(_reason(fmt, exc)) from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImageError(_reason(fmt, exc)) from exc
        except MemoryError:
            raise  # the server is out of memory, not the client at fault
        except Exception as exc:
            # Not a documented Pillow failure mode; keep the traceback for us, answer 400.
            logger.warning(
                "unexpected %s decoding a %s upload", type(exc).__name__, fmt, exc_info=exc
            )
            raise CorruptImageError(_reason(fmt, exc)) from exc


def _decode(data: bytes, fmt: str, target_size: tuple[int, int], max_pixels: int) -> DecodedImage:
    """The Pillow part of :func:`decode_image`; raises Pillow's exceptions unchanged."""
    try:
        image = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        # The magic bytes said fmt, yet the plugin rejected the header: damaged, not unsupported.
        raise CorruptImageError(f"the {fmt} header is invalid or truncated") from exc
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise CorruptImageError(f"the {fmt} header declares {width} x {height} pixels")
        check_pixels((width, height), max_pixels)
        if image.format in ("JPEG", "MPO"):
            # Let libjpeg scale by 1/2, 1/4 or 1/8 in the DCT while decoding: much cheaper than
            # decoding a photo at full size. A square of the longer side keeps the draft at least
            # as large as the target whichever way EXIF orientation turns the image.
            side = max(target_size)
            image.draft("RGB", (side, side))
        image.load()  # the first frame only: animations are never seeked
        transpose = _ORIENTATION_TRANSPOSE.get(_exif_orientation(image))
        if transpose in _SWAPS_AXES:
            width, height = height, width
        array = image_to_array(image, target_size=target_size, transpose=transpose)
        found = "JPEG" if image.format == "MPO" else (image.format or fmt)
    return DecodedImage(array=array, original_size=(width, height), format=found)


def image_to_array(
    image: Image.Image,
    *,
    target_size: tuple[int, int],
    transpose: Image.Transpose | None = None,
) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to the model's RGB float32 layout.

    Args:
        image: A loaded image in any Pillow mode (1, L, LA, P, PA, RGB, RGBA, CMYK, I;16, I, F...).
        target_size: ``(height, width)`` of the result, in pixels, after ``transpose``.
        transpose: Orientation fix to apply; done after resizing, on the small image, which is
            cheaper and (the filter being separable) the same result to within rounding.

    Returns:
        ``(height, width, 3)`` float32 C-contiguous array in 0..255.

    Transparency is composited onto black (the training digits are light ink on black) by
    resizing premultiplied RGBa, which is also what keeps transparent pixels' colours from
    bleeding into their neighbours. 16-bit data is scaled by 255/65535 (``convert("L")`` would
    clip it); "I" is read as 16-bit data and "F" as already 0..255, both clipped to range.
    """
    height, width = _check_target_size(target_size)
    size = (height, width) if transpose in _SWAPS_AXES else (width, height)  # Pillow's (w, h)
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        small = _resize(Image.fromarray(_high_depth_plane(image)), size)
    else:
        if mode in ("RGBa", "La"):
            pass  # already premultiplied, i.e. composited onto black
        elif mode == "LA":
            image = image.convert("La")
        elif image.has_transparency_data:
            if mode != "RGBA":
                image = image.convert("RGBA")
            image = image.convert("RGBa")
        elif mode == "1":
            image = image.convert("L")  # 0/255; resizing "1" directly would force NEAREST
        elif mode not in ("L", "RGB"):
            image = image.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX...
        small = _resize(image, size)
    if transpose is not None:
        small = small.transpose(transpose)
    pixels = np.asarray(small)
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # La: premultiplied gray + alpha
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:  # gray: one resize instead of three, widened here
        out = np.empty((height, width, 3), dtype=np.float32)
        out[...] = pixels[:, :, np.newaxis]
        return out
    return np.ascontiguousarray(pixels[:, :, :3], dtype=np.float32)


def _high_depth_plane(image: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float single-band image as a float32 plane in 0..255."""
    plane = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(plane.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scaled = np.clip(values, 0.0, 255.0)
    else:
        scaled = np.clip(plane, 0, 65535).astype(np.float32) * np.float32(255.0 / 65535.0)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and image.mode != "F":
        scaled[plane == transparent] = 0.0  # PNG tRNS colour key: composite onto black
    return np.ascontiguousarray(scaled, dtype=np.float32)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bilinear resize to Pillow ``(width, height)``; Pillow antialiases it when shrinking."""
    if image.size == size:
        return image  # Pillow would copy; the caller never mutates it
    return image.resize(size, Image.Resampling.BILINEAR)


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation 1..8 of ``image``; 1 when absent or unreadable."""
    if not any(key in image.info for key in _ORIENTATION_SOURCES):
        return 1  # the common case: skip parsing altogether
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # malformed EXIF must not fail an otherwise good image
        logger.debug("ignoring unreadable EXIF orientation: %r", exc)
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _check_target_size(target_size: tuple[int, int]) -> tuple[int, int]:
    """Validate ``(height, width)`` and return it as a plain tuple of ints."""
    if len(target_size) != 2 or not all(
        isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in target_size
    ):
        raise ValueError(f"target_size must be (height, width) positive ints, got {target_size!r}")
    return target_size[0], target_size[1]


def _bomb_error(
    exc: Exception, declared: tuple[int, int] | None, max_pixels: int
) -> ImageTooLargeError:
    """Turn Pillow's decompression-bomb warning/error into our 413."""
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if declared is not None:
        width, height = declared
        return ImageTooLargeError(
            width=width, height=height, pixels=width * height, max_pixels=limit
        )
    match = _BOMB_PIXELS.search(str(exc))
    pixels = int(match[1]) if match else limit + 1
    return ImageTooLargeError(pixels=pixels, max_pixels=limit)


def _reason(fmt: str, exc: BaseException) -> str:
    """Short, single-line description of a decoder failure for the 400 detail."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if len(message) > _MAX_REASON_CHARS:
        message = message[: _MAX_REASON_CHARS - 3] + "..."
    return f"{fmt}: {message}"
