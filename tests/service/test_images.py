"""Tests for service.images: decoding uploads into model-ready arrays, and refusing bad ones.

Every test image is built in memory with Pillow (or by hand, byte for byte, where Pillow cannot
write the hostile variant). The suite runs with ``filterwarnings = error``, so a Pillow warning that
escaped decode_image would fail the test that triggered it.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import (
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from service import images
from service.images import (
    SUPPORTED_FORMATS,
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    image_to_array,
    sniff_format,
)

pytestmark = pytest.mark.timeout(60)

TARGET = (28, 28)  # (height, width) of the digits model
MAX_PIXELS = 4_000_000
FORMATS = sorted(SUPPORTED_FORMATS)
LOSSY = {"JPEG"}  # WebP is saved lossless below


# ----------------------------------------------------------------------------------- helpers


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """Save ``image`` as ``fmt`` into bytes (lossless WebP unless asked otherwise)."""
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes, target_size: tuple[int, int] = TARGET, **kwargs: Any) -> DecodedImage:
    """decode_image with this module's defaults."""
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    return decode_image(data, target_size=target_size, **kwargs)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed 8-bit grayscale PNG header declaring ``width x height``, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + png_chunk(b"IEND", b"")
    )


def exif_with(orientation: int, *, broken_tag: bool = False) -> bytes:
    """Raw EXIF (big-endian TIFF) holding an orientation; optionally a tag pointing past the end.

    The broken tag makes Pillow's EXIF parser warn ("Tag data larger than file") yet still return
    the orientation: decode_image must neither leak the warning nor lose the orientation.
    """
    entries = [struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)]
    if broken_tag:
        entries.append(struct.pack(">HHII", 0x010E, 2, 1000, 0x7FFFFFF0))
    ifd = struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd


def marked_image(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Black RGB image with a red 8x8 square in its top-left corner."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    return image


@pytest.fixture
def forbid_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to decode pixel data fail the test (for refuse-before-decode checks)."""

    def load(self: ImageFile.ImageFile) -> Any:
        raise AssertionError(f"pixel data of a {self.size} image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# ------------------------------------------------------------------------ supported formats


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("colour", "expected"), [((255, 255, 255), 255.0), ((0, 0, 0), 0.0)])
def test_each_format_round_trips_to_model_layout(
    fmt: str, colour: tuple[int, int, int], expected: float
) -> None:
    data = encode(Image.new("RGB", (40, 30), colour), fmt)

    result = decode(data)

    assert result.format == fmt
    assert result.original_size == (40, 30)
    assert result.array.shape == (28, 28, 3)
    assert result.array.dtype == np.float32
    assert result.array.flags.c_contiguous
    np.testing.assert_allclose(result.array, expected, atol=2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_colours_come_out_as_rgb_in_0_255(fmt: str) -> None:
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 32))  # left red, right blue

    array = decode(encode(image, fmt), target_size=(32, 32)).array

    tolerance = 8 if fmt in LOSSY else 0
    np.testing.assert_allclose(
        array[:, :12], np.broadcast_to([255, 0, 0], (32, 12, 3)), atol=tolerance
    )
    np.testing.assert_allclose(
        array[:, 20:], np.broadcast_to([0, 0, 255], (32, 12, 3)), atol=tolerance
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff_format_agrees_with_decode(fmt: str) -> None:
    data = encode(Image.new("RGB", (8, 8), (10, 20, 30)), fmt)

    assert sniff_format(data) == fmt == decode(data).format


def test_sniff_format_reads_only_magic_bytes() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"GIF87a") == "GIF"
    assert sniff_format(b"BM") == "BMP"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8L") == "WEBP"
    for other in (b"", b"%PDF-1.4", b"<svg/>", b"II*\x00", b"RIFF\x00\x00\x00\x00WAVEfmt "):
        assert sniff_format(other) is None


def test_webp_container_without_image_chunk_is_corrupt_not_unsupported() -> None:
    data = b"RIFF\x10\x00\x00\x00WEBPJUNK" + b"\x00" * 8

    assert sniff_format(data) == "WEBP"
    with pytest.raises(CorruptImageError) as caught:
        decode(data)
    assert caught.value.status_code == 400


def test_only_the_five_decoders_are_offered_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real_open = Image.open

    def spy(fp: Any, mode: Literal["r"] = "r", formats: Any = None) -> Any:
        seen.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    decode(encode(Image.new("L", (8, 8)), "PNG"))

    assert [list(formats) for formats in seen] == [sorted(SUPPORTED_FORMATS)]


# ------------------------------------------------------------------------------------- modes


def test_grayscale_is_replicated_into_three_equal_channels() -> None:
    array = decode(encode(Image.new("L", (28, 28), 100), "PNG")).array

    np.testing.assert_array_equal(array, np.full((28, 28, 3), 100, dtype=np.float32))


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_bilevel_image_maps_to_0_and_255(fmt: str) -> None:
    image = Image.new("1", (28, 28), 0)
    image.paste(1, (0, 0, 14, 28))  # left half white

    array = decode(encode(image, fmt)).array

    np.testing.assert_array_equal(array[:, :13], 255)
    np.testing.assert_array_equal(array[:, 15:], 0)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_onto_black(fmt: str) -> None:
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 128))  # half-transparent white
    image.paste((255, 0, 0, 0), (0, 0, 14, 28))  # fully transparent red

    array = decode(encode(image, fmt)).array

    np.testing.assert_array_equal(array[:, :13], 0)  # invisible red contributes nothing
    np.testing.assert_allclose(array[:, 15:], 128, atol=1)


def test_transparent_colour_does_not_bleed_when_shrinking() -> None:
    # Opaque white stripes between fully transparent pure-red ones: a resize of unpremultiplied
    # RGBA would mix the red in; premultiplied (composited on black) must stay gray.
    image = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    for x in range(0, 200, 2):
        image.paste((255, 255, 255, 255), (x, 0, x + 1, 200))

    array = decode(encode(image, "PNG")).array

    np.testing.assert_allclose(array[..., 0], array[..., 1], atol=1)
    np.testing.assert_allclose(array, 127.5, atol=6)  # edge columns are not exactly 50:50


def test_la_is_composited_onto_black() -> None:
    image = Image.new("LA", (28, 28), (200, 255))
    image.paste((200, 0), (0, 0, 14, 28))

    array = decode(encode(image, "PNG")).array

    np.testing.assert_array_equal(array[:, :13], 0)
    np.testing.assert_array_equal(array[:, 15:], 200)


def test_palette_image_uses_palette_colours() -> None:
    image = Image.new("P", (28, 28), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)

    array = decode(encode(image, "PNG")).array

    np.testing.assert_array_equal(array, np.broadcast_to([10, 200, 30], (28, 28, 3)))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_black(fmt: str) -> None:
    image = Image.new("P", (28, 28), 1)
    image.putpalette([255, 0, 0, 255, 255, 255] + [0] * 762)  # 0: red (transparent), 1: white
    image.paste(0, (0, 0, 14, 28))

    array = decode(encode(image, fmt, transparency=0)).array

    np.testing.assert_array_equal(array[:, :13], 0)
    np.testing.assert_array_equal(array[:, 15:], 255)


def test_png_palette_with_per_entry_alpha() -> None:
    image = Image.new("P", (28, 28), 0)
    image.putpalette([255, 255, 255, 255, 255, 255] + [0] * 762)
    image.paste(1, (14, 0, 28, 28))

    # tRNS as bytes: entry 0 half transparent, entry 1 opaque (Pillow warns if this is converted
    # to RGB directly; decode_image must not).
    array = decode(encode(image, "PNG", transparency=b"\x80\xff")).array

    np.testing.assert_allclose(array[:, :13], 128, atol=1)
    np.testing.assert_array_equal(array[:, 15:], 255)


def test_rgb_colour_key_transparency_becomes_black() -> None:
    image = Image.new("RGB", (28, 28), (255, 255, 255))
    image.paste((0, 255, 0), (0, 0, 14, 28))

    array = decode(encode(image, "PNG", transparency=(0, 255, 0))).array

    np.testing.assert_array_equal(array[:, :13], 0)
    np.testing.assert_array_equal(array[:, 15:], 255)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    image = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # white
    image.paste((255, 0, 0, 0), (0, 0, 16, 32))  # cyan

    array = decode(encode(image, "JPEG", quality=95), target_size=(32, 32)).array

    np.testing.assert_allclose(array[:, :12], np.broadcast_to([0, 255, 255], (32, 12, 3)), atol=8)
    np.testing.assert_allclose(array[:, 20:], 255, atol=8)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    data = encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "I;16"  # the case convert("L") gets wrong (it clips to 255)

    array = decode(data, target_size=(4, 4)).array

    np.testing.assert_allclose(array[0, :, 0], [0.0, 1000 / 257, 128.0, 255.0], atol=1e-3)
    np.testing.assert_array_equal(array[..., 0], array[..., 2])


def test_16_bit_colour_key_transparency_becomes_black() -> None:
    values = np.full((4, 4), 40000, dtype=np.uint16)
    values[:, :2] = 65535
    data = encode(Image.fromarray(values), "PNG", transparency=65535)

    array = decode(data, target_size=(4, 4)).array

    np.testing.assert_array_equal(array[:, :2], 0)
    np.testing.assert_allclose(array[:, 2:], 40000 / 257, atol=1e-3)


def test_32_bit_integer_mode_is_read_as_16_bit_and_clipped() -> None:
    image = Image.fromarray(np.array([[0, 65535, 70000, -3]], dtype=np.int32))
    assert image.mode == "I"

    array = image_to_array(image, target_size=(1, 4))

    np.testing.assert_allclose(array[0, :, 1], [0, 255, 255, 0])


def test_float_mode_is_clipped_to_0_255_and_nan_becomes_0() -> None:
    image = Image.fromarray(np.array([[-5.0, 0.0, 100.5, 300.0, np.nan]], dtype=np.float32))
    assert image.mode == "F"

    array = image_to_array(image, target_size=(1, 5))

    np.testing.assert_allclose(array[0, :, 2], [0, 0, 100.5, 255, 0])
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"]
)
def test_every_common_mode_converts_to_model_layout(mode: str) -> None:
    image = Image.new(mode, (10, 5))

    array = image_to_array(image, target_size=(3, 7))

    assert array.shape == (3, 7, 3)
    assert array.dtype == np.float32
    assert array.flags.c_contiguous
    assert np.all((array >= 0) & (array <= 255))


# ---------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("size", [(1, 2000), (2000, 1), (1, 1)])
def test_extreme_aspect_ratios_and_single_pixel_resize(size: tuple[int, int]) -> None:
    result = decode(encode(Image.new("L", size, 255), "PNG"))

    assert result.original_size == size
    np.testing.assert_array_equal(result.array, 255)


def test_shrinking_is_antialiased() -> None:
    # One-pixel black/white stripes shrunk 7x: plain bilinear would sample pixel 7i + 3, whose
    # colour alternates, i.e. alias to 0/255 columns; a filter covering the footprint gives gray.
    stripes = np.tile(np.array([0, 255], dtype=np.uint8), (196, 98))

    array = decode(encode(Image.fromarray(stripes), "PNG")).array

    np.testing.assert_allclose(array, 127.5, atol=6)
    assert np.ptp(array[14]) < 12


def test_target_size_is_height_then_width() -> None:
    result = decode(encode(Image.new("RGB", (50, 10)), "PNG"), target_size=(5, 20))

    assert result.array.shape == (5, 20, 3)


def test_large_jpeg_is_drafted_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    drafts: list[tuple[Any, ...]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: Any, size: Any) -> Any:
        result = real_draft(self, mode, size)
        drafts.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(Image.new("RGB", (1024, 768), (200, 100, 50)), "JPEG")

    result = decode(data)

    assert drafts == [("RGB", (28, 28), (128, 96))]  # libjpeg scaled by 1/8
    assert result.original_size == (1024, 768)
    np.testing.assert_allclose(result.array, np.broadcast_to([200, 100, 50], (28, 28, 3)), atol=4)


@pytest.mark.parametrize("target_size", [(0, 28), (28, -1), (28,), (28.0, 28), (True, 28)])
def test_bad_target_size_is_a_programming_error(target_size: Any) -> None:
    with pytest.raises(ValueError, match="target_size"):
        decode(encode(Image.new("L", (4, 4)), "PNG"), target_size=target_size)


@pytest.mark.parametrize("max_pixels", [0, -1, 1.5, True])
def test_bad_max_pixels_is_a_programming_error(max_pixels: Any) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode(encode(Image.new("L", (4, 4)), "PNG"), max_pixels=max_pixels)


# ------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6_rotates_clockwise(fmt: str) -> None:
    # Stored 40 wide x 20 high, red top-left; orientation 6 = shown rotated 90° clockwise,
    # i.e. 20 wide x 40 high with the red mark top-right.
    data = encode(
        marked_image(), fmt, exif=exif_with(6), **({"quality": 95} if fmt == "JPEG" else {})
    )

    result = decode(data, target_size=(40, 20))

    assert result.original_size == (20, 40)
    assert result.array[:6, -6:, 0].mean() > 240
    assert result.array[:6, :6, 0].max() < 16
    assert result.array[-6:, -6:, 0].max() < 16


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    data = encode(marked_image((6, 4)), "PNG", exif=exif_with(orientation))
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32)

    result = decode(data, target_size=expected.shape[:2])

    np.testing.assert_array_equal(result.array, expected)
    assert result.original_size == (expected.shape[1], expected.shape[0])


def test_unparseable_exif_falls_back_to_the_stored_orientation() -> None:
    garbage = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff"
    data = encode(marked_image(), "JPEG", exif=garbage, quality=95)

    result = decode(data, target_size=(20, 40))

    assert result.original_size == (40, 20)
    assert result.array[:6, :6, 0].mean() > 240  # red still top-left: not transposed


def test_exif_warnings_are_silenced_and_the_orientation_still_applies() -> None:
    data = encode(marked_image(), "JPEG", exif=exif_with(6, broken_tag=True), quality=95)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(data)) as image:
            image.getexif()
    assert any("Skipping tag" in str(w.message) for w in caught)  # Pillow does warn here

    result = decode(data, target_size=(40, 20))

    assert result.original_size == (20, 40)
    assert result.array[:6, -6:, 0].mean() > 240


def test_malformed_mpo_header_decodes_as_plain_jpeg_without_warning() -> None:
    jpeg = encode(Image.new("RGB", (16, 16), (255, 0, 0)), "JPEG")
    payload = b"MPF\x00MM\x00*\x00\x00\x00\x08garbage-garbage"
    data = jpeg[:2] + b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]

    result = decode(data, target_size=(4, 4))

    assert result.format == "JPEG"
    np.testing.assert_allclose(result.array, np.broadcast_to([255, 0, 0], (4, 4, 3)), atol=4)


# --------------------------------------------------------------------------------- animation


@pytest.fixture
def forbid_seeking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any frame after the first is ever seeked to."""
    for plugin in (GifImagePlugin.GifImageFile, WebPImagePlugin.WebPImageFile):
        real_seek = plugin.seek

        def seek(self: Any, frame: int, real_seek: Callable[..., Any] = real_seek) -> None:
            if frame != 0:
                raise AssertionError(f"seeked to frame {frame}")
            real_seek(self, frame)

        monkeypatch.setattr(plugin, "seek", seek)
    real_png_seek = PngImagePlugin.PngImageFile.seek

    def png_seek(self: Any, frame: int) -> None:
        if frame != 0:
            raise AssertionError(f"seeked to frame {frame}")
        real_png_seek(self, frame)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "seek", png_seek)


@pytest.mark.usefixtures("forbid_seeking")
@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_the_first_frame_only(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), (i % 256, 255 - i % 256, 40)) for i in range(0, 300, 3)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=10, loop=0)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 100  # really animated

    result = decode(data, target_size=(4, 4))

    assert result.format == fmt
    np.testing.assert_array_equal(result.array, np.broadcast_to([0, 255, 40], (4, 4, 3)))


def test_multi_picture_jpeg_uses_the_first_picture() -> None:
    first, second = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=[second])

    result = decode(data, target_size=(4, 4))

    assert result.format == "JPEG"
    np.testing.assert_allclose(result.array, np.broadcast_to([255, 0, 0], (4, 4, 3)), atol=4)


# ----------------------------------------------------------------------- refused by content


def eps_bytes() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n"


def psd_bytes() -> bytes:
    """A minimal 4x4 RGB Photoshop header (Pillow can read PSD but not write it)."""
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 4, 4, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\0" * 48


UNSUPPORTED: dict[str, tuple[Callable[[], bytes], str]] = {
    "tiff": (lambda: encode(Image.new("RGB", (8, 8)), "TIFF"), "TIFF"),
    "pdf-by-pillow": (lambda: encode(Image.new("RGB", (8, 8)), "PDF"), "PDF"),
    "pdf": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n", "PDF"),
    "svg": (
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8"/>',
        "SVG",
    ),
    "svg-bare": (lambda: b"\xef\xbb\xbf  <svg viewBox='0 0 1 1'></svg>", "SVG"),
    "eps": (eps_bytes, "PostScript"),
    "eps-by-pillow": (lambda: encode(Image.new("L", (8, 8)), "EPS"), "PostScript"),
    "psd": (psd_bytes, "PSD"),
    "ico": (lambda: encode(Image.new("RGB", (16, 16)), "ICO"), "ICO"),
    "jpeg2000": (lambda: encode(Image.new("RGB", (8, 8)), "JPEG2000"), "JPEG 2000"),
    "ppm": (lambda: encode(Image.new("RGB", (8, 8)), "PPM"), "Netpbm"),
    "heic": (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    "html": (lambda: b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
    "tga": (lambda: encode(Image.new("RGB", (8, 8)), "TGA"), "unrecognised bytes"),
    "random": (
        lambda: np.random.default_rng(7).integers(1, 256, 512, dtype=np.uint8).tobytes(),
        "unrecognised bytes",
    ),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_other_formats_are_refused_with_415(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, kind = UNSUPPORTED[name]
    data = make()

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an external program (e.g. Ghostscript) was started")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    with pytest.raises(UnsupportedImageError) as caught:
        decode(data)

    error = caught.value
    assert error.status_code == 415
    assert kind in error.detail
    assert error.detail.startswith("not a supported image: ")
    assert error.detail.endswith("send PNG, JPEG, WebP, BMP or GIF")
    assert sniff_format(data) is None


def test_pillow_itself_would_have_opened_the_refused_formats() -> None:
    # Guards the test above: the refusals come from decode_image, not from unreadable samples.
    for name, expected in [("tiff", "TIFF"), ("psd", "PSD"), ("ico", "ICO"), ("eps", "EPS")]:
        with Image.open(io.BytesIO(UNSUPPORTED[name][0]())) as image:
            assert image.format == expected


def test_empty_upload_is_a_400() -> None:
    with pytest.raises(EmptyImageError) as caught:
        decode(b"")

    assert caught.value.status_code == 400
    assert caught.value.detail == "the file is empty"


# ------------------------------------------------------------------------- corrupt uploads


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_corrupt(fmt: str, keep: float) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)

    with pytest.raises(CorruptImageError) as caught:
        decode(data[: int(len(data) * keep)])

    assert caught.value.status_code == 400
    assert caught.value.detail.startswith("the image could not be decoded (truncated or corrupt): ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_magic_bytes_alone_are_corrupt_not_unsupported(fmt: str) -> None:
    data = encode(Image.new("RGB", (8, 8)), fmt)[:16]

    with pytest.raises(CorruptImageError):
        decode(data)


def test_loading_truncated_images_is_never_enabled_globally() -> None:
    data = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")
    with pytest.raises(CorruptImageError):
        decode(data[:-30])

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_text_chunk_bomb_is_refused() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 2_000_000, zip=True)  # ~2 kB compressed, 2 MB inflated
    data = encode(Image.new("L", (8, 8)), "PNG", pnginfo=info)
    assert len(data) < 10_000

    with pytest.raises(CorruptImageError) as caught:
        decode(data)

    assert caught.value.status_code == 400
    assert "metadata" in caught.value.detail


def test_zero_sized_header_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        decode(png_with_header(0, 10))


# ------------------------------------------------------------------------ decompression bombs


@pytest.mark.usefixtures("forbid_pixel_decoding")
def test_png_declaring_50000_squared_is_refused_before_decoding() -> None:
    data = png_with_header(50_000, 50_000)
    assert len(data) < 100

    with pytest.raises(ImageTooLargeError) as caught:
        decode(data)

    error = caught.value
    assert error.status_code == 413
    assert (error.width, error.height, error.pixels) == (50_000, 50_000, 2_500_000_000)
    assert error.detail == (
        f"the image is 50000 x 50000 = 2500000000 pixels; the limit is {MAX_PIXELS} pixels"
    )


@pytest.mark.usefixtures("forbid_pixel_decoding")
def test_big_solid_png_compressed_small_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (3000, 3000), 255), "PNG")
    assert len(data) < 50_000

    with pytest.raises(ImageTooLargeError) as caught:
        decode(data, max_pixels=1_000_000)

    assert "3000 x 3000 = 9000000 pixels; the limit is 1000000 pixels" in caught.value.detail


def _patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (16, 16)), "JPEG")
    sof = data.index(b"\xff\xc0")
    return _patched(data, sof + 5, ">HH", height, width)


def _webp_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (16, 16)), "WEBP", exif=exif_with(1))  # EXIF forces VP8X
    assert data[12:16] == b"VP8X"
    patched = bytearray(data)
    patched[24:27] = (width - 1).to_bytes(3, "little")
    patched[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(patched)


def _gif_with_frame(width: int, height: int) -> bytes:
    """An 8x8 GIF whose first frame claims ``width x height`` (Pillow grows the canvas to fit)."""
    data = encode(Image.new("L", (8, 8)), "GIF")
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    while data[pos] == 0x21:  # skip extension blocks: introducer, label, sub-blocks, terminator
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C  # image descriptor: left, top, width, height
    return _patched(data, pos + 5, "<HH", width, height)


BOMBS: dict[str, Callable[[], bytes]] = {
    "gif-frame": lambda: _gif_with_frame(3000, 3000),
    "gif": lambda: _patched(encode(Image.new("L", (8, 8)), "GIF"), 6, "<HH", 65535, 65535),
    "bmp": lambda: _patched(encode(Image.new("L", (8, 8)), "BMP"), 18, "<ii", 40000, -40000),
    # libwebp allocates the whole canvas when its decoder is created, inside Image.open.
    "webp": lambda: _webp_declaring(16000, 16000),
    "jpeg-within-pillow-limit": lambda: _jpeg_declaring(3000, 3000),
    "jpeg-beyond-pillow-limit": lambda: _jpeg_declaring(65000, 65000),
}


@pytest.mark.usefixtures("forbid_pixel_decoding")
@pytest.mark.parametrize("name", list(BOMBS))
def test_declared_sizes_over_the_limit_are_refused_before_decoding(name: str) -> None:
    with pytest.raises(ImageTooLargeError) as caught:
        decode(BOMBS[name](), max_pixels=1_000_000)

    assert caught.value.status_code == 413
    assert caught.value.pixels > 1_000_000
    assert "pixels; the limit is 1000000 pixels" in caught.value.detail


@pytest.mark.parametrize(
    ("size", "fmt"), [((40, 40), "PNG"), ((60, 60), "PNG"), ((40, 40), "JPEG")]
)
def test_pillow_global_bomb_limit_becomes_413(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], fmt: str
) -> None:
    # 1600 px is over Pillow's warning threshold, 3600 over its error threshold (2x).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    with pytest.raises(ImageTooLargeError) as caught:
        decode(encode(Image.new("RGB", size), fmt), max_pixels=10**9)

    pixels = size[0] * size[1]
    assert caught.value.pixels == pixels
    assert f"{pixels} pixels; the limit is 1000 pixels" in caught.value.detail


def test_image_exactly_at_the_limit_is_accepted() -> None:
    result = decode(encode(Image.new("L", (100, 50), 7), "PNG"), max_pixels=5000)

    assert result.original_size == (100, 50)


# ------------------------------------------------------------------------------ error types


@pytest.mark.parametrize(
    "error",
    [
        EmptyImageError(),
        UnsupportedImageError("PDF"),
        UnsupportedImageError(),
        CorruptImageError("PNG: broken"),
        ImageTooLargeError(width=3, height=4, pixels=12, max_pixels=10),
        ImageTooLargeError(pixels=12, max_pixels=10),
    ],
)
def test_errors_pickle_round_trip(error: ImageError) -> None:
    # A process pool would ship these between processes.
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert (copy.detail, copy.status_code, str(copy)) == (
        error.detail,
        error.status_code,
        str(error),
    )
    assert copy.__dict__ == error.__dict__


def test_status_codes() -> None:
    assert ImageError.status_code == 400
    assert EmptyImageError.status_code == 400
    assert CorruptImageError.status_code == 400
    assert UnsupportedImageError.status_code == 415
    assert ImageTooLargeError.status_code == 413
    assert UnsupportedImageError().detail == (
        "not a supported image: unrecognised bytes; send PNG, JPEG, WebP, BMP or GIF"
    )


# --------------------------------------------------------------------- warnings and threads


@pytest.fixture
def filters_unchanged() -> Iterator[None]:
    before = list(warnings.filters)
    yield
    assert warnings.filters == before


@pytest.mark.usefixtures("filters_unchanged")
def test_warnings_guard_counts_users_across_threads() -> None:
    guard = images._PillowWarningsGuard()
    before = list(warnings.filters)

    guard.__enter__()
    guard.__enter__()  # a second, concurrent decode
    guard.__exit__(None, None, None)  # the first one finishes while the second still runs
    with pytest.raises(Image.DecompressionBombWarning):
        warnings.warn_explicit(
            "bomb", Image.DecompressionBombWarning, "x.py", 1, module="PIL.Image"
        )
    warnings.warn_explicit("odd EXIF", UserWarning, "x.py", 1, module="PIL.TiffImagePlugin")
    assert warnings.filters != before
    guard.__exit__(None, None, None)

    assert warnings.filters == before


@pytest.mark.usefixtures("filters_unchanged")
def test_concurrent_decodes_are_correct_and_leave_warning_filters_alone() -> None:
    good = encode(Image.new("RGB", (64, 48), (30, 60, 90)), "PNG")
    warns = encode(marked_image(), "JPEG", exif=exif_with(6, broken_tag=True), quality=95)
    corrupt = good[:-40]
    barrier = threading.Barrier(4)

    def work(i: int) -> str:
        if i < 4:
            barrier.wait()  # make the first decodes overlap for sure
        data = (good, warns, corrupt)[i % 3]
        try:
            result = decode(data, target_size=(8, 8))
        except CorruptImageError:
            return "corrupt"
        return f"{result.original_size}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(work, range(90)))

    assert outcomes == ["(64, 48)", "(20, 40)", "corrupt"] * 30


# ---------------------------------------------------------------------------------- fuzzing

_FUZZ_TARGET = (8, 8)


def _fuzz_bases() -> list[bytes]:
    gradient = np.arange(16 * 12 * 3, dtype=np.uint8).reshape(12, 16, 3)
    image = Image.fromarray(gradient)
    return [encode(image, "PNG"), encode(image, "JPEG", quality=80), encode(image, "GIF")]


_BASES = _fuzz_bases()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid PNG/JPEG/GIF with a few bytes overwritten, then maybe truncated."""
    data = bytearray(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(1, 6))):
        # Header bytes are where parsers go wrong, so bias the edits towards the start.
        end = draw(st.sampled_from([64, len(data)]))
        data[draw(st.integers(0, min(end, len(data)) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)])


def _assert_decodes_or_refuses(data: bytes) -> None:
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        try:
            result = decode_image(data, target_size=_FUZZ_TARGET, max_pixels=1_000_000)
        except ImageError as error:
            assert error.status_code in (400, 413, 415)
            assert error.detail
            event(type(error).__name__)
        else:
            event("decoded")
            assert result.array.shape == (*_FUZZ_TARGET, 3)
            assert result.array.dtype == np.float32
            assert np.all((result.array >= 0) & (result.array <= 255))
    assert [str(w.message) for w in escaped] == []


@settings(
    max_examples=400,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=300) | mutated_images())
def test_arbitrary_and_mutated_bytes_decode_or_raise_image_error(data: bytes) -> None:
    _assert_decodes_or_refuses(data)
