"""Odd, broken and hostile images through HTTP against a live server.

contract/decoding has unit tests for each rule (tests/contract/decoding); these prove the same
answers reach a client (status, a detail that says what to fix), that nothing outside the five
supported formats is decoded, that odd-but-valid images are classified, and that random or
mutated bytes never produce a 5xx (Hypothesis, a bounded number of examples).
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.images import (
    REFUSED_BY_CONTENT,
    digit_label,
    digit_png,
    gif_with_frames,
    png_declaring,
    png_with_text_bomb,
    save,
)
from tests.helpers.servers import Server, healthy
from training.data import digit_images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def post_image(
    server: Server, data: bytes, name: str = "upload.png", mime: str = "image/png"
) -> httpx.Response:
    return httpx.post(server.url + "/predict", files={"file": (name, data, mime)}, timeout=30)


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


@pytest.mark.parametrize("name", list(REFUSED_BY_CONTENT))
def test_formats_outside_the_supported_five_are_refused_by_content(
    hostile_server: Server, name: str
) -> None:
    data, kind = REFUSED_BY_CONTENT[name]
    # Named and typed as a PNG: the content decides.
    response = post_image(hostile_server, data, "innocent.png", "image/png")
    assert response.status_code == 415, response.text
    assert kind in detail(response)
    assert "send PNG, JPEG, WebP, BMP or GIF" in detail(response)


def _truncated(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = save(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return data[: len(data) // 3]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, ["empty"]),
        (_truncated("PNG"), 400, ["PNG"]),
        (_truncated("JPEG"), 400, ["JPEG"]),
        (_truncated("WEBP"), 400, ["WEBP"]),
        (b"\x89PNG\r\n\x1a\n", 400, ["PNG"]),
        (png_declaring(0, 10), 400, ["PNG"]),
        (png_declaring(60_000, 60_000), 413, ["pixels"]),
        (png_declaring(1, 2**31 - 1), 413, ["pixels"]),
        (png_with_text_bomb(), 400, ["text"]),
    ],
    ids=[
        "empty",
        "truncated-png",
        "truncated-jpeg",
        "truncated-webp",
        "magic-only",
        "zero-width",
        "bomb-60000-squared",
        "bomb-1-by-2g",
        "ztxt-bomb",
    ],
)
def test_broken_and_bomb_images_are_refused_quickly(
    hostile_server: Server, data: bytes, status: int, words: list[str]
) -> None:
    started = time.monotonic()
    response = post_image(hostile_server, data)
    assert time.monotonic() - started < 5
    assert response.status_code == status, response.text
    for word in words:
        assert word in detail(response)


def test_thousands_of_animation_frames_cost_one_frame(hostile_server: Server) -> None:
    data = gif_with_frames(3000)
    started = time.monotonic()
    response = post_image(hostile_server, data, "anim.gif", "image/gif")
    assert time.monotonic() - started < 5
    assert response.status_code == 200, response.text


def _digit(index: int) -> np.ndarray:
    return digit_images()[0][index]


ODD_BUT_VALID = {
    "1x1": lambda: save(Image.new("L", (1, 1), 255), "PNG"),
    "1x20000": lambda: save(Image.new("L", (1, 20_000), 128), "PNG"),
    "20000x1": lambda: save(Image.new("RGB", (20_000, 1), (1, 2, 3)), "PNG"),
    "cmyk-jpeg": lambda: save(Image.fromarray(_digit(0)).convert("CMYK"), "JPEG", quality=95),
    "palette-transparent": lambda: save(
        Image.fromarray(_digit(0)).convert("P"), "PNG", transparency=0
    ),
    "bmp": lambda: save(Image.fromarray(_digit(0)), "BMP"),
}


@pytest.mark.parametrize("name", list(ODD_BUT_VALID))
def test_odd_but_valid_images_are_classified(hostile_server: Server, name: str) -> None:
    response = httpx.post(
        hostile_server.url + "/predict",
        files={"file": ("odd.png", ODD_BUT_VALID[name](), "image/png")},
        params={"top_k": 10},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    scores = [p["score"] for p in response.json()["results"][0]["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0.99 < sum(scores) <= 1.0 + 1e-3


def test_16_bit_and_8_bit_versions_of_a_digit_get_the_same_answer(hostile_server: Server) -> None:
    gray = _digit(3).astype(np.uint16) * 257  # the same picture, 0..65535
    wide = save(Image.fromarray(gray), "PNG")
    with Image.open(io.BytesIO(wide)) as check:
        assert check.mode.startswith("I")
    answers = [
        post_image(hostile_server, data).json()["results"][0]["predictions"][0]
        for data in (wide, digit_png(3))
    ]
    assert answers[0]["label"] == answers[1]["label"] == digit_label(3)
    assert answers[0]["score"] == pytest.approx(answers[1]["score"], abs=0.02)


def test_exif_orientation_is_applied_before_classifying(hostile_server: Server) -> None:
    """Stored sideways with an EXIF "rotate 90° clockwise" tag: classified as displayed."""

    def top(data: bytes) -> dict[str, object]:
        response = post_image(hostile_server, data)
        assert response.status_code == 200, response.text
        return dict(response.json()["results"][0]["predictions"][0])

    rotation_mattered = 0
    for index in range(8):
        upright = Image.fromarray(_digit(index))
        sideways = upright.transpose(Image.Transpose.ROTATE_90)  # 90° counter-clockwise
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        tagged = top(save(sideways, "PNG", exif=exif.tobytes()))
        expected = top(save(upright, "PNG"))
        assert tagged["label"] == expected["label"], index
        assert tagged["score"] == pytest.approx(expected["score"], abs=1e-3)
        rotation_mattered += top(save(sideways, "PNG"))["label"] != expected["label"]
    assert rotation_mattered >= 3  # the tag, not luck, made the difference


def test_one_bad_image_among_several_is_named(hostile_server: Server) -> None:
    files = [("file", (f"d{i}.png", digit_png(i), "image/png")) for i in range(3)]
    files.insert(1, ("file", ("evil.svg.png", REFUSED_BY_CONTENT["svg"][0], "image/png")))
    response = httpx.post(hostile_server.url + "/predict", files=files, timeout=30)
    assert response.status_code == 415
    assert "image 2 ('evil.svg.png')" in detail(response)


def _bases() -> list[bytes]:
    image = Image.fromarray(_digit(5))
    return [save(image, "PNG"), save(image, "JPEG", quality=80), save(image, "GIF")]


BASES = _bases()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real digit as PNG/JPEG/GIF with a few bytes overwritten, maybe truncated."""
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 8))):
        end = draw(st.sampled_from([64, len(data)]))  # bias towards the headers
        data[draw(st.integers(0, min(end, len(data)) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[: cut if draw(st.booleans()) else len(data)])


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.binary(max_size=2000) | mutated_images(), raw=st.booleans())
def test_random_and_mutated_bytes_never_get_a_5xx(
    hostile_server: Server, data: bytes, raw: bool
) -> None:
    if raw:
        response = httpx.post(
            hostile_server.url + "/predict",
            content=data,
            headers={"Content-Type": "image/webp"},
            timeout=30,
        )
    else:
        response = post_image(hostile_server, data)
    assert response.status_code in (200, 400, 413, 415), response.text
    if response.status_code != 200:
        assert detail(response)


def test_the_server_is_still_healthy_afterwards(hostile_server: Server) -> None:
    assert healthy(hostile_server)
