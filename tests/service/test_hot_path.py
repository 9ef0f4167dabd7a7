"""Tests for the /predict hot-path changes the benchmark led to (see BENCHMARKS.md).

* the batcher starts the next model call before it delivers the finished batch's results;
* tiny uploads are decoded on the event loop, with the same pixels and errors as on the pool;
* the heap is frozen once a model is served, unfrozen on a swap, refrozen once the old one
  is gone;
* the state dependency is a coroutine (no thread hop); the lifespan sets the GIL switch interval.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import io
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.batching import Batcher
from service.decode_step import _decode_inline, decode_all
from service.deps import get_state
from service.errors import ClientError
from service.images import declared_pixels, probe_header
from service.model_store import ModelStore
from service.settings import Settings
from service.uploads import Upload

pytestmark = pytest.mark.timeout(60)


def png(width: int, height: int, mode: str = "L") -> bytes:
    rng = np.random.default_rng(width * 1000 + height)
    shape = (height, width) if mode == "L" else (height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ batcher


class GatedModel:
    """batch_fn returning ``payload * 10``; blocks while the gate is closed; records batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()

    def __call__(self, payloads: list[int]) -> list[int]:
        self.batches.append(list(payloads))
        self.gate.wait(5.0)
        return [p * 10 for p in payloads]


class StartRecorder:
    """Observer that notes, at each batch start, which callers had already got their result."""

    def __init__(self, resumed: list[int]) -> None:
        self.resumed = resumed
        self.resumed_at_start: list[list[int]] = []

    def queue_depth(self, depth: int) -> None:
        pass

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        self.resumed_at_start.append(list(self.resumed))

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


async def _wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def test_next_batch_starts_before_the_finished_batch_is_answered() -> None:
    """The model thread must not idle while the loop sends the previous batch's responses."""
    model = GatedModel()
    resumed: list[int] = []
    observer = StartRecorder(resumed)

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model, max_batch_size=8, batch_timeout_s=0.0, max_queue_size=64, observer=observer
        )
        await batcher.start()

        async def caller(payload: int) -> None:
            assert await batcher.submit(payload, timeout_s=10) == payload * 10
            resumed.append(payload)

        try:
            first = asyncio.ensure_future(caller(1))
            await _wait_until(lambda: len(model.batches) == 1)
            rest = [asyncio.ensure_future(caller(p)) for p in (2, 3)]
            await _wait_until(lambda: batcher.queue_depth == 2)
            model.gate.set()
            await asyncio.gather(first, *rest)
        finally:
            model.gate.set()
            await batcher.stop(timeout_s=5.0)

    asyncio.run(body())
    assert model.batches == [[1], [2, 3]]
    # When the second batch started, the first batch's caller had not been resumed yet.
    assert observer.resumed_at_start == [[], []]


def test_chained_batch_still_waits_for_a_fuller_batch() -> None:
    """With batch_timeout_s, a finishing batch does not start a small next batch early."""
    model = GatedModel()

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model, max_batch_size=4, batch_timeout_s=30.0, max_queue_size=64
        )
        await batcher.start()
        try:
            first = [asyncio.ensure_future(batcher.submit(p, timeout_s=60)) for p in range(4)]
            await _wait_until(lambda: len(model.batches) == 1)  # full: ran without the wait
            late = asyncio.ensure_future(batcher.submit(10, timeout_s=60))
            await _wait_until(lambda: batcher.queue_depth == 1)
            model.gate.set()
            assert await asyncio.gather(*first) == [0, 10, 20, 30]
            await asyncio.sleep(0.2)
            assert len(model.batches) == 1  # the lone item waits for company
            more = [asyncio.ensure_future(batcher.submit(p, timeout_s=60)) for p in (11, 12, 13)]
            assert await asyncio.gather(late, *more) == [100, 110, 120, 130]
        finally:
            model.gate.set()
            await batcher.stop(timeout_s=5.0)

    asyncio.run(body())
    assert model.batches == [[0, 1, 2, 3], [10, 11, 12, 13]]


class SlowModel:
    """A model call of ``seconds``; records each batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list[int]] = []

    def __call__(self, payloads: list[int]) -> list[int]:
        self.batches.append(list(payloads))
        time.sleep(self.seconds)
        return [p * 10 for p in payloads]


@pytest.mark.parametrize(("ratio", "batches"), [(0.5, [[0, 1, 2, 3]] * 2), (0.0, None)])
def test_a_slow_model_waits_for_its_clients_to_come_back(
    ratio: float, batches: list[list[int]] | None
) -> None:
    """Four clients in a closed loop on a 100 ms model: with the fill wait, each round is one
    batch of four, although the clients come back a few milliseconds apart; without it, the
    first client to come back runs alone."""
    model = SlowModel(0.1)

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model,
            max_batch_size=8,
            batch_timeout_s=0.0,
            max_queue_size=64,
            fill_wait_ratio=ratio,
        )
        await batcher.start()

        async def client(payload: int) -> None:
            for _ in range(2):
                assert await batcher.submit(payload, timeout_s=10) == payload * 10
                await asyncio.sleep(0.005 * payload)  # the next request takes a moment

        try:
            await asyncio.gather(*(client(p) for p in range(4)))
        finally:
            await batcher.stop(timeout_s=5.0)

    asyncio.run(body())
    if batches is not None:
        assert model.batches == batches
    else:
        assert model.batches[0] == [0, 1, 2, 3] and len(model.batches) > 2


# ------------------------------------------------------------------------------ inline decode


def test_declared_pixels_reads_headers_only() -> None:
    assert declared_pixels(png(28, 28)) == 784
    assert declared_pixels(png(300, 20, "RGB")) == 6000
    assert declared_pixels(jpeg(10, 10)) is None  # behind a marker scan: not read here
    assert declared_pixels(b"") is None
    assert declared_pixels(b"%PDF-1.7") is None


def test_decode_inline_only_for_small_uploads_and_inputs() -> None:
    small = [probe_header(png(28, 28)), probe_header(png(64, 64))]
    assert _decode_inline(small, (28, 28), 4096)
    assert not _decode_inline(small, (28, 28), 0)  # 0 turns it off
    assert not _decode_inline(small, (224, 224), 4096)  # a large model input: resize costs
    assert not _decode_inline([*small, probe_header(png(65, 64))], (28, 28), 4096)
    assert not _decode_inline([probe_header(jpeg(8, 8))], (28, 28), 4096)


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
    uploads = [Upload("a.png", png(28, 28)), Upload("b.png", png(40, 30, "RGB"))]
    inline = _decode(uploads, decode_pool, 4096)
    pooled = _decode(uploads, decode_pool, 0)
    assert len(inline) == len(pooled) == 2
    for a, b in zip(inline, pooled, strict=True):
        assert a.shape == (28, 28, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_inline_decode_errors_name_the_image(decode_pool: ThreadPoolExecutor) -> None:
    truncated = png(28, 28)[:60]  # header intact (so it is judged small), data cut off
    uploads = [Upload("ok.png", png(28, 28)), Upload("bad.png", truncated)]
    assert declared_pixels(truncated) == 784
    with pytest.raises(ClientError) as caught:
        _decode(uploads, decode_pool, 4096)
    assert caught.value.status_code == 400
    assert "image 2 ('bad.png')" in str(caught.value.detail)


# -------------------------------------------------------------------------------- heap freeze


class _Model:
    """Stands in for a LoadedModel: what ModelStore._swap reads, weakly referenceable."""

    def __init__(self, version: int) -> None:
        self.name = "digits"
        self.version = version


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_heap_frozen_after_first_model_and_refrozen_after_a_swap(
    tmp_path: Path, unfrozen: None
) -> None:
    store = ModelStore(tmp_path / "digits", repository_root=tmp_path, max_batch_size=4)
    store._swap(_Model(1))  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 0  # the first model's objects are out of the GC's reach

    store._swap(_Model(2))  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0  # version 1's cycles must stay collectable
    asyncio.run(store.poll_once())  # version 1 is gone (no batch holds it): freeze again
    assert gc.get_freeze_count() > 0


def test_heap_stays_unfrozen_while_the_old_model_is_in_use(tmp_path: Path, unfrozen: None) -> None:
    store = ModelStore(tmp_path / "digits", repository_root=tmp_path, max_batch_size=4)
    old = _Model(1)
    store._swap(old)  # type: ignore[arg-type]
    store._swap(_Model(2))  # type: ignore[arg-type]
    asyncio.run(store.poll_once())  # `old` is still referenced, like a batch in flight
    assert gc.get_freeze_count() == 0
    del old
    asyncio.run(store.poll_once())
    assert gc.get_freeze_count() > 0


# ---------------------------------------------------------------------------- app and deps


def test_state_dependency_needs_no_thread_hop() -> None:
    # FastAPI runs a plain `def` dependency in its thread pool; a coroutine runs on the loop.
    assert inspect.iscoroutinefunction(get_state)


def test_lifespan_sets_the_gil_switch_interval(tmp_path: Path) -> None:
    previous = sys.getswitchinterval()
    settings = Settings(models_dir=tmp_path, gil_switch_interval_s=0.002, poll_interval_s=60)
    app = create_app(settings)

    async def body() -> float:
        async with app.router.lifespan_context(app):
            return sys.getswitchinterval()

    try:
        assert asyncio.run(body()) == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(previous)
