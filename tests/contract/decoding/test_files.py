"""Tests for contract.decoding.files: image files on disk, as training reads them while it lists
and streams a folder (the header helpers, and decode_file agreeing with the upload decoder)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, WebPImagePlugin

from contract.decoding.decode import decode_image
from contract.decoding.files import decode_file, read_header
from tests.helpers.images import encode_hq

pytestmark = pytest.mark.timeout(300)

MAX_PIXELS = 100_000_000


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_decodes_the_first_frame_only(fmt: str, tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (250, 250, 250)]
    frames = [Image.new("RGB", (64, 48), colour) for colour in colours]
    data = encode_hq(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)
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
        (tmp_path / name).write_bytes(encode_hq(image, fmt, **params))
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
    import service.serving.decode_step as serving_side

    values = np.array([[0, 200, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)

    trained = decode_file(path, target_size=(1, 4), max_pixels=MAX_PIXELS).array
    served = serving_side.decode_image(
        path.read_bytes(), target_size=(1, 4), max_pixels=MAX_PIXELS
    ).array

    np.testing.assert_array_equal(trained, served)
    np.testing.assert_allclose(trained[0, :, 0], values[0] * 255.0 / 65535.0, atol=1e-4)
