"""Tests for service.serving.decode_step: tiny uploads are decoded on the event loop, with the
same pixels and errors as on the decode pool (one of the /predict hot-path changes the benchmark
led to, see BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from contract.decoding.probe import declared_pixels, probe_header
from service.serving.decode_step import Upload, _decode_inline, decode_all
from service.serving.errors import ImageRejected
from service.settings import Settings
from tests.helpers.answers import http_answer
from tests.helpers.images import random_png, solid_jpeg

pytestmark = pytest.mark.timeout(60)


def test_decode_inline_only_for_small_uploads_and_inputs() -> None:
    small = [probe_header(random_png(28, 28)), probe_header(random_png(64, 64))]
    assert _decode_inline(small, (28, 28), 4096)
    assert not _decode_inline(small, (28, 28), 0)  # 0 turns it off
    assert not _decode_inline(small, (224, 224), 4096)  # a large model input: resize costs
    assert not _decode_inline([*small, probe_header(random_png(65, 64))], (28, 28), 4096)
    assert not _decode_inline([probe_header(solid_jpeg(8, 8))], (28, 28), 4096)


@pytest.fixture()
def decode_pool() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


def _decode(uploads: list[Upload], pool: ThreadPoolExecutor, inline_max: int) -> list[Any]:
    settings = Settings()
    return asyncio.run(
        decode_all(
            uploads,
            (28, 28),
            pool,
            max_pixels=settings.max_pixels,
            inline_max_pixels=inline_max,
        )
    )


def test_inline_and_pool_decoding_agree(decode_pool: ThreadPoolExecutor) -> None:
    uploads = [Upload("a.png", random_png(28, 28)), Upload("b.png", random_png(40, 30, "RGB"))]
    inline = _decode(uploads, decode_pool, 4096)
    pooled = _decode(uploads, decode_pool, 0)
    assert len(inline) == len(pooled) == 2
    for a, b in zip(inline, pooled, strict=True):
        assert a.shape == (28, 28, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_inline_decode_errors_name_the_image(decode_pool: ThreadPoolExecutor) -> None:
    truncated = random_png(28, 28)[:60]  # header intact (so it is judged small), data cut off
    uploads = [Upload("ok.png", random_png(28, 28)), Upload("bad.png", truncated)]
    assert declared_pixels(truncated) == 784
    with pytest.raises(ImageRejected) as caught:
        _decode(uploads, decode_pool, 4096)
    assert http_answer(caught.value).status_code == 400
    assert "image 2 ('bad.png')" in str(caught.value.detail)
