"""Tests for contract.decoding.errors: the decoder's refusals, their messages and categories (the
HTTP status each category gets comes from the service's edge table, checked through it here),
and that they survive a trip between processes."""

from __future__ import annotations

import pickle

import pytest

from contract.decoding.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.http.errors import IMAGE_ANSWERS
from tests.helpers.answers import image_status

pytestmark = pytest.mark.timeout(60)


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
    assert (copy.detail, copy.category, image_status(copy), str(copy)) == (
        error.detail,
        error.category,
        image_status(error),
        str(error),
    )
    assert copy.__dict__ == error.__dict__


def test_status_codes() -> None:
    # Each category's status, through the service's edge table (the errors know no HTTP).
    assert IMAGE_ANSWERS[ImageError.category].status == 400
    assert IMAGE_ANSWERS[EmptyImageError.category].status == 400
    assert IMAGE_ANSWERS[CorruptImageError.category].status == 400
    assert IMAGE_ANSWERS[UnsupportedImageError.category].status == 415
    assert IMAGE_ANSWERS[ImageTooLargeError.category].status == 413
    assert UnsupportedImageError().detail == (
        "not a supported image: unrecognised bytes; send PNG, JPEG, WebP, BMP or GIF"
    )
