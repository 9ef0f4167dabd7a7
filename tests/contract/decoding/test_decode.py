"""Tests for contract.decoding.decode: decoding uploads into model-ready arrays, and refusing bad
ones (the HTTP status of each refusal is checked through the service's edge table).

Every test image is built in memory with Pillow (or by hand, byte for byte, where Pillow cannot
write the hostile variant). The suite runs with ``filterwarnings = error``, so a Pillow warning that
escaped decode_image would fail the test that triggered it.
"""

from __future__ import annotations

import io
import struct
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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

from contract.decoding.decode import (
    DecodedImage,
    _PillowWarningsGuard,
    decode_image,
    image_to_array,
)
from contract.decoding.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from contract.decoding.files import read_header
from contract.decoding.probe import SUPPORTED_FORMATS, check_header, probe_header, sniff_format
from tests.helpers.answers import image_status
from tests.helpers.images import encode, encode_hq, png_declaring
from training.data import digit_images

pytestmark = pytest.mark.timeout(60)

TARGET = (28, 28)  # (height, width) of the digits model
MAX_PIXELS = 4_000_000
FORMATS = sorted(SUPPORTED_FORMATS)
LOSSY = {"JPEG"}  # WebP is saved lossless below


# ----------------------------------------------------------------------------------- helpers


def decode(data: bytes, target_size: tuple[int, int] = TARGET, **kwargs: Any) -> DecodedImage:
    """decode_image with this module's defaults."""
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    return decode_image(data, target_size=target_size, **kwargs)


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


def test_webp_container_without_image_chunk_is_corrupt_not_unsupported() -> None:
    data = b"RIFF\x10\x00\x00\x00WEBPJUNK" + b"\x00" * 8

    assert sniff_format(data) == "WEBP"
    with pytest.raises(CorruptImageError) as caught:
        decode(data)
    assert image_status(caught.value) == 400


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
    assert image_status(error) == 415
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

    assert image_status(caught.value) == 400
    assert caught.value.detail == "the file is empty"


# ------------------------------------------------------------------------- corrupt uploads


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_corrupt(fmt: str, keep: float) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)

    with pytest.raises(CorruptImageError) as caught:
        decode(data[: int(len(data) * keep)])

    assert image_status(caught.value) == 400
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

    assert image_status(caught.value) == 400
    assert "metadata" in caught.value.detail


def test_zero_sized_header_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        decode(png_declaring(0, 10))


# ------------------------------------------------------------------------ decompression bombs


@pytest.mark.usefixtures("forbid_pixel_decoding")
def test_png_declaring_50000_squared_is_refused_before_decoding() -> None:
    data = png_declaring(50_000, 50_000)
    assert len(data) < 100

    with pytest.raises(ImageTooLargeError) as caught:
        decode(data)

    error = caught.value
    assert image_status(error) == 413
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

    assert image_status(caught.value) == 413
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


# ------------------------------------------------------------- reduced-scale JPEG decoding
#
# Tolerances, stated once: on a 0..255 scale a drafted JPEG differs from its full-size decode by a
# mean absolute difference of at most MEAN_ABS_TOLERANCE and, for the smooth upscaled digits, by
# at most MAX_ABS_TOLERANCE_DIGITS on any pixel (measured: about 0.4 and 4; on the scikit-learn
# photographs about 3 mean, edges up to ~50 on single pixels).

DRAFT_MAX_PIXELS = 100_000_000
MEAN_ABS_TOLERANCE = 4.0
MAX_ABS_TOLERANCE_DIGITS = 8.0
BIG = 448  # pixels: a 28x28 target drafts this at 1/8 scale (56x56), a 96x96 one at 1/4 (112)


# (format, Pillow mode) pairs the decoder must handle; JPEG ones are drafted.
CASES: list[tuple[str, str]] = [
    ("PNG", "L"),
    ("PNG", "LA"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "P"),
    ("PNG", "I;16"),
    ("JPEG", "L"),
    ("JPEG", "RGB"),
    ("JPEG", "CMYK"),
    ("WEBP", "RGB"),
    ("BMP", "RGB"),
    ("GIF", "P"),
]


def as_mode(gray: np.ndarray, mode: str) -> Image.Image:
    """A uint8 grey digit image converted to ``mode`` (alpha opaque: compositing is a no-op)."""
    image = Image.fromarray(gray)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range
    if mode == "P":
        return image.convert("RGB").quantize(256)
    return image.convert(mode)


@pytest.fixture
def full_size_jpeg() -> Iterator[Callable[[bytes, tuple[int, int]], np.ndarray]]:
    """decode_image with reduced-scale JPEG decoding switched off: the reference."""
    real = JpegImagePlugin.JpegImageFile.draft

    def decode_full(data: bytes, target: tuple[int, int]) -> np.ndarray:
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # type: ignore[method-assign]
        try:
            return decode_image(data, target_size=target, max_pixels=DRAFT_MAX_PIXELS).array
        finally:
            JpegImagePlugin.JpegImageFile.draft = real  # type: ignore[method-assign]

    yield decode_full
    JpegImagePlugin.JpegImageFile.draft = real  # type: ignore[method-assign]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("fmt", "mode"), CASES)
@pytest.mark.parametrize("target", [(28, 28), (96, 96)])
def test_drafted_decode_matches_a_full_size_decode(
    fmt: str,
    mode: str,
    target: tuple[int, int],
    full_size_jpeg: Callable[[bytes, tuple[int, int]], np.ndarray],
) -> None:
    images, _ = digit_images()
    for gray in images[:5]:
        big = np.asarray(Image.fromarray(gray).resize((BIG, BIG), Image.Resampling.BILINEAR))
        data = encode_hq(as_mode(big, mode), fmt)

        drafted = decode_image(data, target_size=target, max_pixels=DRAFT_MAX_PIXELS)
        reference = full_size_jpeg(data, target)

        assert drafted.original_size == (BIG, BIG)
        assert drafted.array.shape == (*target, 3)
        diff = np.abs(drafted.array - reference)
        if fmt == "JPEG":
            assert diff.mean() <= MEAN_ABS_TOLERANCE
            assert diff.max() <= MAX_ABS_TOLERANCE_DIGITS
        else:  # no reduced-scale decode for other formats: bit for bit the same
            np.testing.assert_array_equal(drafted.array, reference)


@pytest.mark.timeout(300)
def test_drafted_photo_stays_within_the_mean_tolerance(
    full_size_jpeg: Callable[[bytes, tuple[int, int]], np.ndarray],
) -> None:
    from sklearn.datasets import load_sample_images

    for photo in load_sample_images().images:  # two real 640x427 photographs
        for mode in ("L", "RGB", "CMYK"):
            data = encode_hq(Image.fromarray(photo).convert(mode), "JPEG")
            for target in ((28, 28), (96, 96)):
                drafted = decode_image(data, target_size=target, max_pixels=DRAFT_MAX_PIXELS).array
                assert np.abs(drafted - full_size_jpeg(data, target)).mean() <= MEAN_ABS_TOLERANCE


@pytest.mark.timeout(300)
def test_draft_never_goes_below_the_target_size(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self: JpegImagePlugin.JpegImageFile) -> Any:
        result = real_load(self)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    for size, target in [((1000, 120), (100, 100)), ((640, 480), (60, 90)), ((300, 300), (299, 1))]:
        decoded.clear()
        decode_image(
            encode_hq(Image.new("RGB", size, (9, 9, 9)), "JPEG"),
            target_size=target,
            max_pixels=DRAFT_MAX_PIXELS,
        )
        width, height = decoded[0]
        assert width >= max(target) or width == size[0]
        assert height >= max(target) or height == size[1]
        assert width <= size[0] and height <= size[1]


@pytest.mark.e2e  # trains the shared digits model (trained_repo)
@pytest.mark.timeout(300)
def test_the_same_class_with_and_without_draft(
    trained_repo: Path, full_size_jpeg: Callable[[bytes, tuple[int, int]], np.ndarray]
) -> None:
    """The digits model gives each big digit image the same class either way."""
    import tensorflow as tf

    model = tf.saved_model.load(str(trained_repo / "digits" / "1"))
    images, labels = digit_images()
    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    for fmt, mode in CASES:
        drafted, reference = [], []
        for index in picks:
            big = Image.fromarray(images[index]).resize((BIG, BIG), Image.Resampling.BILINEAR)
            data = encode_hq(as_mode(np.asarray(big), mode), fmt)
            drafted.append(
                decode_image(data, target_size=(28, 28), max_pixels=DRAFT_MAX_PIXELS).array
            )
            reference.append(full_size_jpeg(data, (28, 28)))
        p_drafted = model.serve(np.stack(drafted)).numpy()
        p_reference = model.serve(np.stack(reference)).numpy()
        np.testing.assert_array_equal(
            p_drafted.argmax(axis=1), p_reference.argmax(axis=1), err_msg=f"{fmt} {mode}"
        )
        assert np.abs(p_drafted - p_reference).max() <= (0.1 if fmt == "JPEG" else 0.0)


def marked(size: tuple[int, int]) -> Image.Image:
    """A dark image with a white block in its top-left corner (width, height = size)."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, size[0] // 4, size[1] // 4))
    return image


@pytest.mark.timeout(300)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_drafted_exif_rotated_jpeg_comes_out_upright(orientation: int) -> None:
    upright = marked((800, 600))
    # Store the pixels so that applying `orientation` gives `upright` back.
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_hq(stored, "JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as check:  # Pillow's own reading agrees: upright
        transposed = np.asarray(ImageOps.exif_transpose(check).convert("L")) > 128
        assert transposed.shape == (600, 800)
        assert np.mean(transposed == (np.asarray(upright.convert("L")) > 128)) > 0.99

    result = decode_image(data, target_size=(30, 40), max_pixels=DRAFT_MAX_PIXELS)

    assert result.original_size == (800, 600)
    gray = result.array.mean(axis=2)
    assert gray[:5, :7].min() > 200  # the white block is top-left
    assert gray[-10:, -10:].max() < 30 and gray[:5, -10:].max() < 30 and gray[-10:, :5].max() < 30


# ----------------------------------------------------------------- one decoder for both sides


def test_the_service_and_training_call_this_very_decoder() -> None:
    """One decoder, not a copy: the service's decode step and training's data pipeline call
    these very functions (``service.images``, the re-export that used to prove it, is gone)."""
    import service.serving.decode_step as serving_side
    import training.data as training_side

    assert serving_side.decode_image is decode_image
    assert serving_side.ImageError is ImageError
    assert serving_side.probe_header is probe_header
    assert training_side.decode_image is decode_image
    assert training_side.ImageError is ImageError
    assert training_side.check_header is check_header
    assert training_side.read_header is read_header


# --------------------------------------------------------------------- warnings and threads


@pytest.fixture
def filters_unchanged() -> Iterator[None]:
    before = list(warnings.filters)
    yield
    assert warnings.filters == before


@pytest.mark.usefixtures("filters_unchanged")
def test_warnings_guard_counts_users_across_threads() -> None:
    guard = _PillowWarningsGuard()
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
            assert image_status(error) in (400, 413, 415)
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
