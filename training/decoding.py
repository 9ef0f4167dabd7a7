"""The one image decoder that training and serving share: bytes -> model-ready RGB float32 pixels.

Serving calls :func:`decode_image` on each upload (``service.images`` re-exports this module);
training calls the very same function from its tf.data pipeline (``training.data``), so the two
can never disagree about a pixel: the same first frame, EXIF orientation, transparency onto black,
16-bit scaling, reduced-scale JPEG decode and antialiased bilinear resize.

The exported model takes raw RGB pixels in 0..255 (float32, shape ``(N, H, W, 3)``) and does its own
grayscale conversion and rescaling; this module only decodes, orients, flattens transparency onto
black and resizes every image to the model's ``(H, W)`` so images can be stacked into one batch.

Safety rules (each one is a way real services have been hurt):

* Formats are recognised by content, never by filename or declared content type, and Pillow is only
  allowed to try the five supported decoders: PDF, EPS/PostScript (which Pillow would hand to
  Ghostscript), SVG, TIFF, PSD, ICO... are refused before any plugin looks at them.
* The pixel count is checked from the header before anything is decoded (decompression bombs), and
  Pillow's own bomb and PNG text-chunk limits are turned into client errors.
* Pillow's warnings never escape (see :class:`_PillowWarningsGuard` for why this is not a plain
  ``warnings.catch_warnings()``), ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched, and
  animations are never iterated: only the first frame is decoded.
* JPEGs much larger than the target are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (libjpeg-turbo through ``Image.draft``), never below the target size, then resized as usual.

:func:`decode_image` is CPU-bound and blocking (Pillow releases the GIL while it decodes and
resizes); call it from a worker thread, not an event loop.

This module imports neither TensorFlow nor the service: both sides import it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final

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

__all__ = [
    "HEADER_BYTES",
    "IMAGE_SUFFIXES",
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "DecodedImage",
    "EmptyImageError",
    "ImageError",
    "ImageHeader",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "check_header",
    "declared_pixels",
    "decode_file",
    "decode_image",
    "image_to_array",
    "probe_header",
    "read_header",
    "sniff_format",
]

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
"""Pillow format names that :func:`decode_image` accepts."""

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
"""File name endings training reads from a data folder (the content still decides the format)."""

HEADER_BYTES: Final = 64
"""How many leading bytes of a file :func:`check_header` needs."""

# Importing the five plugins registers them with Image.OPEN, so Image.open() never falls back to
# Image.init(), which would import every plugin Pillow ships. The formats= argument below is what
# actually confines decoding to these five.
_PLUGINS: Final = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)
_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(sorted(SUPPORTED_FORMATS))

_SEND_INSTEAD: Final = "send PNG, JPEG, WebP, BMP or GIF"
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


# --------------------------------------------------------------------------------------- errors


def _restore_error(cls: type[ImageError], detail: str) -> ImageError:
    """Rebuild an :class:`ImageError` without calling the subclass constructor (for pickle)."""
    error = cls.__new__(cls)
    ImageError.__init__(error, detail)
    return error


class ImageError(Exception):
    """An upload that cannot be turned into a model input; the client's fault, never a 5xx.

    Attributes:
        status_code: HTTP status the route should answer with.
        detail: Human-readable message that says what to fix (goes into ``{"detail": ...}``).
    """

    status_code: ClassVar[int] = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclass constructors take structured arguments, not the detail string, so the default
        # Exception pickling (cls(*args)) would garble them; a process pool needs this to work.
        return (_restore_error, (type(self), self.detail), self.__dict__)


class EmptyImageError(ImageError):
    """The upload has zero bytes (400)."""

    status_code: ClassVar[int] = 400

    def __init__(self) -> None:
        super().__init__("the file is empty")


class UnsupportedImageError(ImageError):
    """The bytes are not one of :data:`SUPPORTED_FORMATS` (415).

    Attributes:
        kind: What the bytes look like ("PDF", "SVG", "TIFF", ...), or None if unrecognised.
    """

    status_code: ClassVar[int] = 415

    def __init__(self, kind: str | None = None) -> None:
        super().__init__(f"not a supported image: {kind or 'unrecognised bytes'}; {_SEND_INSTEAD}")
        self.kind = kind


class CorruptImageError(ImageError):
    """A supported format whose data cannot be decoded: truncated, corrupt, malformed (400).

    Attributes:
        reason: What the decoder complained about.
    """

    status_code: ClassVar[int] = 400

    def __init__(self, reason: str) -> None:
        super().__init__(f"the image could not be decoded (truncated or corrupt): {reason}")
        self.reason = reason


class ImageTooLargeError(ImageError):
    """The image declares more pixels than allowed; refused before decoding (413).

    Attributes:
        width, height: Declared size in pixels, or None where only the pixel count is known.
        pixels: Declared width * height.
        max_pixels: The limit that was exceeded.
    """

    status_code: ClassVar[int] = 413

    def __init__(
        self,
        *,
        pixels: int,
        max_pixels: int,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        size = f"{width} x {height} = " if width is not None and height is not None else ""
        super().__init__(f"the image is {size}{pixels} pixels; the limit is {max_pixels} pixels")
        self.width = width
        self.height = height
        self.pixels = pixels
        self.max_pixels = max_pixels


# --------------------------------------------------------------------------------------- result


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


# ------------------------------------------------------------------------------- format sniffing

_WEBP_CHUNKS: Final = (b"VP8 ", b"VP8X", b"VP8L")
_SIMPLE_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """Name the supported format of ``data`` from its first bytes, without decoding anything.

    Mirrors the ``_accept`` checks of Pillow's PNG, JPEG, GIF, BMP and WebP plugins, so a route
    can refuse obvious non-images before paying for a decode. A ``RIFF....WEBP`` container is
    reported as "WEBP" even with an unknown first chunk: :func:`decode_image` then calls it
    corrupt rather than unsupported.

    Args:
        data: The uploaded bytes (only the first 16 are read).

    Returns:
        A name from :data:`SUPPORTED_FORMATS`, or None when the bytes are not one of them.
    """
    head = bytes(data[:16])
    for magic, name in _SIMPLE_MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    return None


_ISO_BMFF_BRANDS: Final[dict[bytes, str]] = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"isom": "MP4 video",
    b"mp41": "MP4 video",
    b"mp42": "MP4 video",
    b"qt  ": "QuickTime video",
}
_OTHER_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF", "PDF"),
    (b"%!PS-Adobe", "PostScript"),  # refined to "PostScript (EPS)" below
    (b"%!", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"),  # DOS EPS binary header
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"8BPS", "PSD"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"gimp xcf", "XCF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"RIFF", "RIFF (not WebP)"),
)


def _describe_unsupported(data: bytes) -> str | None:
    """Say what non-supported bytes look like, cheaply, for the 415 message (None: no idea)."""
    head = bytes(data[:1024])
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            if name == "PostScript" and b"EPSF" in head.split(b"\n", 1)[0]:
                return "PostScript (EPS)"
            return name
    # ICO/CUR: reserved 0, type 1/2, then a non-zero image count (TGA headers share the start).
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and head[4:6] != b"\x00\x00":
        return "ICO" if head[2] == 1 else "CUR"
    if re.match(rb"P[1-7]\s", head):
        return "Netpbm (PPM/PGM/PBM)"
    if head[4:8] == b"ftyp" and (brand := _ISO_BMFF_BRANDS.get(head[8:12])):
        return brand
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    return None


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a PNG, GIF, BMP or WebP, or None (JPEG, too short).

    Used to refuse bombs before Pillow sees them: for WebP this matters, because libwebp allocates
    the full canvas when the decoder is created, i.e. inside ``Image.open``, before any check of
    ours could run. JPEG dimensions sit behind a marker scan; ``Image.open`` reads only headers for
    JPEG, so the post-open check covers it.
    """
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            width, height = struct.unpack_from(">II", data, 16)
        elif fmt == "GIF":
            width, height = struct.unpack_from("<HH", data, 6)
        elif fmt == "BMP":
            (header_size,) = struct.unpack_from("<I", data, 14)
            if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit fields
                width, height = struct.unpack_from("<HH", data, 18)
            else:
                width, height = struct.unpack_from("<ii", data, 18)
                width, height = abs(width), abs(height)  # negative height = top-down rows
        elif fmt == "WEBP":
            # Same layout as PIL.WebPImagePlugin._get_size (private, so not imported).
            chunk = data[12:16]
            if chunk == b"VP8X" and len(data) >= 30:
                width = int.from_bytes(data[24:27], "little") + 1
                height = int.from_bytes(data[27:30], "little") + 1
            elif chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
                (bits,) = struct.unpack_from("<I", data, 21)
                width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            elif chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
                width, height = struct.unpack_from("<HH", data, 26)
                width, height = width & 0x3FFF, height & 0x3FFF
            else:
                return None
        else:
            return None
    except struct.error:  # too short to hold the header: Pillow will call it truncated
        return None
    return int(width), int(height)


def probe_header(data: bytes) -> tuple[str, tuple[int, int] | None]:
    """The format by content and the ``(width, height)`` its header declares (None: JPEG or
    too short), without decoding; raises :class:`EmptyImageError` or
    :class:`UnsupportedImageError`. Pass the result to :func:`decode_image` (``header=``) to
    not read the header twice."""
    if not data:
        raise EmptyImageError()
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageError(_describe_unsupported(data))
    return fmt, _declared_size(data, fmt)


def declared_pixels(data: bytes) -> int | None:
    """``width * height`` as a PNG, GIF, BMP or WebP header declares it, read without decoding.

    Lets a caller judge the cost of :func:`decode_image` beforehand (it grows with the pixel
    count). None for JPEG (its size sits behind a marker scan), unsupported or too-short data.
    """
    fmt = sniff_format(data)
    size = _declared_size(data, fmt) if fmt is not None else None
    return None if size is None else size[0] * size[1]


# ------------------------------------------------------------------------------------- warnings


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
        _check_pixels(declared, max_pixels)

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
        _check_pixels((width, height), max_pixels)
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


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` if ``width * height`` exceeds ``max_pixels``."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            width=width, height=height, pixels=width * height, max_pixels=max_pixels
        )


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


# ------------------------------------------------------------------------------ files and headers

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


def check_header(head: bytes, *, max_pixels: int) -> str:
    """Cheap validity check of a file's first :data:`HEADER_BYTES` bytes; no Pillow, no decode.

    Catches empty files, non-images, damaged PNG/GIF/BMP/WebP headers and declared bombs; a JPEG
    is only checked for its magic bytes (its size sits behind a marker scan), so a file that
    passes can still fail :func:`decode_image` (e.g. a truncated JPEG).

    Args:
        head: The first bytes of the file (:data:`HEADER_BYTES` of them, or the whole file).
        max_pixels: Largest accepted declared ``width * height``, in pixels.

    Returns:
        The format name, one of :data:`SUPPORTED_FORMATS`.

    Raises:
        EmptyImageError, UnsupportedImageError, CorruptImageError, ImageTooLargeError.
    """
    fmt, declared = probe_header(head)
    if fmt != "JPEG":
        if declared is None:
            raise CorruptImageError(f"the {fmt} header is invalid or truncated")
        if declared[0] < 1 or declared[1] < 1:
            raise CorruptImageError(
                f"the {fmt} header declares {declared[0]} x {declared[1]} pixels"
            )
        _check_pixels(declared, max_pixels)
    return fmt


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
                    _check_pixels((width, height), max_pixels)
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
