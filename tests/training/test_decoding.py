"""Tests for training.decoding, the one decoder training and serving share.

The service's own rules (refusals, bombs, warnings, modes) are tested through ``service.images`` in
tests/service/test_images.py; this file covers what the shared module adds or must guarantee to both
sides: reduced-scale JPEG decoding gives the same class and nearly the same pixels as a full-size
decode (and exactly the same pixels where it does not apply), EXIF orientation and first-frame-only
still hold when the JPEG is drafted, the header helpers training uses while listing a folder, and
that ``service.images`` really is this module (one function, not a copy).

Tolerances, stated once: on a 0..255 scale a drafted JPEG differs from its full-size decode by a
mean absolute difference of at most :data:`MEAN_ABS_TOLERANCE` and, for the smooth upscaled digits,
by at most :data:`MAX_ABS_TOLERANCE_DIGITS` on any pixel (measured: about 0.4 and 4; on the
scikit-learn photographs about 3 mean, edges up to ~50 on single pixels).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageOps, JpegImagePlugin, WebPImagePlugin

import service.images
from training import decoding
from training.data import digit_images
from training.decoding import (
    HEADER_BYTES,
    CorruptImageError,
    EmptyImageError,
    UnsupportedImageError,
    check_header,
    decode_file,
    decode_image,
    read_header,
)

pytestmark = pytest.mark.timeout(300)

MAX_PIXELS = 100_000_000
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


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


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
            return decode_image(data, target_size=target, max_pixels=MAX_PIXELS).array
        finally:
            JpegImagePlugin.JpegImageFile.draft = real  # type: ignore[method-assign]

    yield decode_full
    JpegImagePlugin.JpegImageFile.draft = real  # type: ignore[method-assign]


def test_service_images_is_the_shared_module() -> None:
    assert service.images.decode_image is decoding.decode_image
    assert service.images.ImageError is decoding.ImageError
    assert service.images.declared_pixels is decoding.declared_pixels
    assert service.images.sniff_format is decoding.sniff_format
    assert service.images.image_to_array is decoding.image_to_array


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
        data = encode(as_mode(big, mode), fmt)

        drafted = decode_image(data, target_size=target, max_pixels=MAX_PIXELS)
        reference = full_size_jpeg(data, target)

        assert drafted.original_size == (BIG, BIG)
        assert drafted.array.shape == (*target, 3)
        diff = np.abs(drafted.array - reference)
        if fmt == "JPEG":
            assert diff.mean() <= MEAN_ABS_TOLERANCE
            assert diff.max() <= MAX_ABS_TOLERANCE_DIGITS
        else:  # no reduced-scale decode for other formats: bit for bit the same
            np.testing.assert_array_equal(drafted.array, reference)


def test_drafted_photo_stays_within_the_mean_tolerance(
    full_size_jpeg: Callable[[bytes, tuple[int, int]], np.ndarray],
) -> None:
    from sklearn.datasets import load_sample_images

    for photo in load_sample_images().images:  # two real 640x427 photographs
        for mode in ("L", "RGB", "CMYK"):
            data = encode(Image.fromarray(photo).convert(mode), "JPEG")
            for target in ((28, 28), (96, 96)):
                drafted = decode_image(data, target_size=target, max_pixels=MAX_PIXELS).array
                assert np.abs(drafted - full_size_jpeg(data, target)).mean() <= MEAN_ABS_TOLERANCE


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
            encode(Image.new("RGB", size, (9, 9, 9)), "JPEG"),
            target_size=target,
            max_pixels=MAX_PIXELS,
        )
        width, height = decoded[0]
        assert width >= max(target) or width == size[0]
        assert height >= max(target) or height == size[1]
        assert width <= size[0] and height <= size[1]


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
            data = encode(as_mode(np.asarray(big), mode), fmt)
            drafted.append(decode_image(data, target_size=(28, 28), max_pixels=MAX_PIXELS).array)
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
    data = encode(stored, "JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as check:  # Pillow's own reading agrees: upright
        transposed = np.asarray(ImageOps.exif_transpose(check).convert("L")) > 128
        assert transposed.shape == (600, 800)
        assert np.mean(transposed == (np.asarray(upright.convert("L")) > 128)) > 0.99

    result = decode_image(data, target_size=(30, 40), max_pixels=MAX_PIXELS)

    assert result.original_size == (800, 600)
    gray = result.array.mean(axis=2)
    assert gray[:5, :7].min() > 200  # the white block is top-left
    assert gray[-10:, -10:].max() < 30 and gray[:5, -10:].max() < 30 and gray[-10:, :5].max() < 30


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_decodes_the_first_frame_only(fmt: str, tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (250, 250, 250)]
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)
    plugin = GifImagePlugin.GifImageFile if fmt == "GIF" else WebPImagePlugin.WebPImageFile
    with plugin(io.BytesIO(data)) as image:
        assert image.n_frames == 4
    path = tmp_path / f"anim.{fmt.lower()}"
    path.write_bytes(data)

    for result in (
        decode_image(data, target_size=(12, 16), max_pixels=MAX_PIXELS),
        decode_file(path, target_size=(12, 16), max_pixels=MAX_PIXELS),  # the training path
    ):
        np.testing.assert_allclose(result.array, np.broadcast_to(colours[0], (12, 16, 3)), atol=2)


def test_check_header_reads_only_the_first_bytes() -> None:
    png = encode(Image.new("L", (30, 20)), "PNG")
    assert check_header(png[:HEADER_BYTES], max_pixels=MAX_PIXELS) == "PNG"
    assert (
        check_header(encode(Image.new("RGB", (9, 9)), "JPEG")[:HEADER_BYTES], max_pixels=9)
        == "JPEG"
    )
    with pytest.raises(EmptyImageError):
        check_header(b"", max_pixels=MAX_PIXELS)
    with pytest.raises(UnsupportedImageError):
        check_header(b"%PDF-1.7 hello", max_pixels=MAX_PIXELS)
    with pytest.raises(CorruptImageError):
        check_header(b"\x89PNG\r\n\x1a\nnot really a png", max_pixels=MAX_PIXELS)
    with pytest.raises(decoding.ImageTooLargeError):
        check_header(png[:HEADER_BYTES], max_pixels=599)


def test_read_header_gives_upright_size_mode_and_greyness(tmp_path: Path) -> None:
    cases: dict[str, tuple[Image.Image, str, dict[str, Any]]] = {
        "gray.png": (Image.new("L", (30, 20)), "PNG", {}),
        "rgb.jpg": (Image.new("RGB", (30, 20), (1, 2, 3)), "JPEG", {}),
        "graypal.gif": (Image.new("L", (30, 20), 7).convert("P"), "GIF", {}),
        "colourpal.png": (Image.new("RGB", (30, 20), (200, 0, 0)).quantize(4), "PNG", {}),
        "deep.png": (Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)), "PNG", {}),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the upright image is 20 wide, 30 high
    cases["rotated.jpg"] = (Image.new("L", (30, 20)), "JPEG", {"exif": exif.tobytes()})
    for name, (image, fmt, params) in cases.items():
        (tmp_path / name).write_bytes(encode(image, fmt, **params))
    headers = {name: read_header(tmp_path / name, max_pixels=MAX_PIXELS) for name in cases}

    assert headers["gray.png"].size == (30, 20) and headers["gray.png"].grayscale
    assert headers["rgb.jpg"].format == "JPEG" and not headers["rgb.jpg"].grayscale
    assert headers["graypal.gif"].mode == "P" and headers["graypal.gif"].grayscale
    assert not headers["colourpal.png"].grayscale
    assert headers["deep.png"].mode.startswith("I") and headers["deep.png"].grayscale
    assert headers["rotated.jpg"].size == (20, 30)


def test_sixteen_bit_grey_scales_by_65535_in_both_training_and_serving(tmp_path: Path) -> None:
    """The disagreement this module resolved: 16-bit grey is value * 255 / 65535, always (the
    old training loader divided by 255 when no value exceeded 255)."""
    values = np.array([[0, 200, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)

    trained = decode_file(path, target_size=(1, 4), max_pixels=MAX_PIXELS).array
    served = service.images.decode_image(
        path.read_bytes(), target_size=(1, 4), max_pixels=MAX_PIXELS
    ).array

    np.testing.assert_array_equal(trained, served)
    np.testing.assert_allclose(trained[0, :, 0], values[0] * 255.0 / 65535.0, atol=1e-4)
