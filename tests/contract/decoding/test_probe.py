"""Tests for contract.decoding.probe: what the first bytes of an upload say (the format by its
magic bytes, the declared size) before anything is decoded."""

from __future__ import annotations

import pytest
from PIL import Image

from contract.decoding.decode import DecodedImage, decode_image
from contract.decoding.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from contract.decoding.probe import (
    HEADER_BYTES,
    SUPPORTED_FORMATS,
    check_header,
    declared_pixels,
    sniff_format,
)
from tests.helpers.images import encode, encode_hq, random_png, solid_jpeg

pytestmark = pytest.mark.timeout(60)

MAX_PIXELS = 100_000_000
FORMATS = sorted(SUPPORTED_FORMATS)


def decode(data: bytes, target_size: tuple[int, int] = (28, 28)) -> DecodedImage:
    """decode_image with test_decode's defaults (28x28, 4 million pixels at most)."""
    return decode_image(data, target_size=target_size, max_pixels=4_000_000)


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


def test_declared_pixels_reads_headers_only() -> None:
    assert declared_pixels(random_png(28, 28)) == 784
    assert declared_pixels(random_png(300, 20, "RGB")) == 6000
    assert declared_pixels(solid_jpeg(10, 10)) is None  # behind a marker scan: not read here
    assert declared_pixels(b"") is None
    assert declared_pixels(b"%PDF-1.7") is None


@pytest.mark.timeout(300)
def test_check_header_reads_only_the_first_bytes() -> None:
    png = encode_hq(Image.new("L", (30, 20)), "PNG")
    assert check_header(png[:HEADER_BYTES], max_pixels=MAX_PIXELS) == "PNG"
    assert (
        check_header(encode_hq(Image.new("RGB", (9, 9)), "JPEG")[:HEADER_BYTES], max_pixels=9)
        == "JPEG"
    )
    with pytest.raises(EmptyImageError):
        check_header(b"", max_pixels=MAX_PIXELS)
    with pytest.raises(UnsupportedImageError):
        check_header(b"%PDF-1.7 hello", max_pixels=MAX_PIXELS)
    with pytest.raises(CorruptImageError):
        check_header(b"\x89PNG\r\n\x1a\nnot really a png", max_pixels=MAX_PIXELS)
    with pytest.raises(ImageTooLargeError):
        check_header(png[:HEADER_BYTES], max_pixels=599)
