"""Reading what an upload is from its first bytes, without decoding: the format by content, the
size its header declares, and the cheap checks that refuse empty files, non-images and declared
bombs before any decoder runs. No Pillow here."""

from __future__ import annotations

import re
import struct
from typing import Final

from contract.decoding.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)

SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
"""Pillow format names that :func:`decode_image` accepts."""

HEADER_BYTES: Final = 64
"""How many leading bytes of a file :func:`check_header` needs."""

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
        check_pixels(declared, max_pixels)
    return fmt


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` if ``width * height`` exceeds ``max_pixels``."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            width=width, height=height, pixels=width * height, max_pixels=max_pixels
        )
