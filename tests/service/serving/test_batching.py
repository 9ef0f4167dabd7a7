"""Tests for service.serving.batching: the dynamic batcher (pure asyncio + one model thread).

The model is a fake ``batch_fn`` that records every batch and can be held busy with a
``threading.Event``; that lets the tests fill the queue deterministically instead of racing timers.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from service.serving.batching import (
    Batcher,
    BatchFunctionError,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
)

pytestmark = pytest.mark.timeout(30)

_T = TypeVar("_T")

# Generous: a request that must not wait still has to cross threads on 2 busy shared cores.
PROMPT_S = 1.0
HOLD_S = 5.0  # upper bound on how long the fake model waits for its gate, so nothing hangs


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run one async test body on a fresh event loop (no pytest-asyncio in this project)."""
    return asyncio.run(coro)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` every millisecond until it holds; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


class FakeModel:
    """A batch_fn: returns ``payload * 10`` for each payload and records what it saw.

    Args:
        sleep_s: Seconds each call sleeps (after the gate opens).
        fail_if_negative: Raise ValueError for a batch holding any negative payload.
        drop_last: Return one output too few.
    """

    def __init__(
        self, *, sleep_s: float = 0.0, fail_if_negative: bool = False, drop_last: bool = False
    ) -> None:
        self.sleep_s = sleep_s
        self.fail_if_negative = fail_if_negative
        self.drop_last = drop_last
        self.batches: list[list[int]] = []
        self.thread_ids: list[int] = []
        self.thread_names: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._active = 0
        self.max_active = 0

    @property
    def calls(self) -> int:
        return len(self.batches)

    @property
    def computed(self) -> list[int]:
        return [p for batch in self.batches for p in batch]

    def hold(self) -> None:
        """Make the next calls block until :meth:`release`."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, payloads: list[int]) -> list[int]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self.batches.append(list(payloads))
            self.thread_ids.append(threading.get_ident())
            self.thread_names.append(threading.current_thread().name)
        try:
            self.gate.wait(HOLD_S)
            if self.sleep_s:
                time.sleep(self.sleep_s)
            if self.fail_if_negative and any(p < 0 for p in payloads):
                raise ValueError(f"negative payload in {payloads}")
            outputs = [p * 10 for p in payloads]
            return outputs[:-1] if self.drop_last else outputs
        finally:
            with self._lock:
                self._active -= 1


@dataclass
class RecordingObserver:
    """A BatchObserver that keeps every call."""

    depths: list[int] = field(default_factory=list)
    started: list[tuple[int, list[float]]] = field(default_factory=list)
    finished: list[tuple[int, float, BaseException | None]] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        self.started.append((size, list(queue_waits_s)))

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        self.finished.append((size, duration_s, error))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


@asynccontextmanager
async def started_batcher(
    model: FakeModel,
    *,
    max_batch_size: int = 8,
    batch_timeout_s: float = 0.0,
    max_queue_size: int = 64,
    observer: RecordingObserver | None = None,
) -> AsyncIterator[Batcher[int, int]]:
    """A started Batcher around ``model``; always released and stopped at the end."""
    batcher: Batcher[int, int] = Batcher(
        model,
        max_batch_size=max_batch_size,
        batch_timeout_s=batch_timeout_s,
        max_queue_size=max_queue_size,
        observer=observer,
        name="test",
    )
    await batcher.start()
    try:
        yield batcher
    finally:
        model.release()
        await batcher.stop(timeout_s=HOLD_S)


def spawn(aw: Awaitable[_T]) -> asyncio.Task[_T]:
    async def wrapper() -> _T:
        return await aw

    return asyncio.ensure_future(wrapper())


def test_concurrent_submits_form_batches_with_results_in_order() -> None:
    model = FakeModel(sleep_s=0.02)

    async def body() -> list[int]:
        async with started_batcher(model, max_batch_size=8, max_queue_size=128) as batcher:
            return await asyncio.gather(*(batcher.submit(i, timeout_s=10) for i in range(64)))

    results = run(body())

    assert results == [i * 10 for i in range(64)]  # each caller got its own item's output
    assert sorted(model.computed) == list(range(64))  # each item computed exactly once
    sizes = [len(b) for b in model.batches]
    assert max(sizes) <= 8
    assert sum(1 for s in sizes if s > 1) >= 2
    assert len(sizes) < 64
    assert model.max_active == 1  # one model call at a time


def test_lone_request_runs_at_once_with_zero_timeout() -> None:
    model = FakeModel()
    observer = RecordingObserver()

    async def body() -> tuple[int, float]:
        async with started_batcher(model, batch_timeout_s=0.0, observer=observer) as batcher:
            t0 = time.monotonic()
            result = await batcher.submit(7, timeout_s=10)
            return result, time.monotonic() - t0

    result, elapsed = run(body())

    assert result == 70
    assert model.batches == [[7]]  # not held back waiting for company
    assert elapsed < PROMPT_S
    assert observer.started[0][0] == 1
    assert observer.started[0][1][0] < PROMPT_S


def test_zero_timeout_does_not_hold_a_request_for_a_busy_peer() -> None:
    """With the model idle, a second request is batched at once, not merged into a later batch."""
    model = FakeModel()

    async def body() -> None:
        async with started_batcher(model, batch_timeout_s=0.0) as batcher:
            assert await batcher.submit(1, timeout_s=10) == 10
            assert await batcher.submit(2, timeout_s=10) == 20

    run(body())
    assert model.batches == [[1], [2]]


def test_lone_request_waits_about_batch_timeout() -> None:
    model = FakeModel()
    observer = RecordingObserver()
    batch_timeout_s = 0.2

    async def body() -> float:
        async with started_batcher(
            model, batch_timeout_s=batch_timeout_s, observer=observer
        ) as batcher:
            t0 = time.monotonic()
            assert await batcher.submit(3, timeout_s=10) == 30
            return time.monotonic() - t0

    elapsed = run(body())

    assert model.batches == [[3]]
    queue_wait_s = observer.started[0][1][0]
    assert batch_timeout_s - 0.01 <= queue_wait_s < batch_timeout_s + PROMPT_S
    assert batch_timeout_s - 0.01 <= elapsed < batch_timeout_s + PROMPT_S


def test_batch_timeout_stops_early_when_batch_is_full() -> None:
    model = FakeModel()

    async def body() -> tuple[list[int], float]:
        async with started_batcher(model, max_batch_size=4, batch_timeout_s=20.0) as batcher:
            t0 = time.monotonic()
            results = await asyncio.gather(*(batcher.submit(i, timeout_s=30) for i in range(4)))
            return results, time.monotonic() - t0

    results, elapsed = run(body())

    assert results == [0, 10, 20, 30]
    assert model.batches == [[0, 1, 2, 3]]
    assert elapsed < PROMPT_S  # far below the 20 s window


def test_next_batch_gathers_while_model_is_busy() -> None:
    """Everything queued during a model call forms the next batch, in arrival order."""
    model = FakeModel()
    model.hold()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=8) as batcher:
            first = spawn(batcher.submit(100, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            rest = [spawn(batcher.submit(i, timeout_s=10)) for i in range(5)]
            await wait_until(lambda: batcher.queue_depth == 5)
            model.release()
            assert await first == 1000
            assert await asyncio.gather(*rest) == [0, 10, 20, 30, 40]

    run(body())
    assert model.batches == [[100], [0, 1, 2, 3, 4]]
    assert model.max_active == 1


def test_batch_timeout_window_overlaps_the_running_batch() -> None:
    """The fuller-batch wait runs while the model is busy, not after it (pipelining)."""
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()
    batch_timeout_s = 0.3
    busy_s = 0.6

    async def body() -> None:
        async with started_batcher(
            model, max_batch_size=8, batch_timeout_s=batch_timeout_s, observer=observer
        ) as batcher:
            first = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            second = spawn(batcher.submit(2, timeout_s=10))
            await asyncio.sleep(busy_s)
            model.release()
            assert await first == 10
            assert await second == 20

    run(body())
    second_wait_s = observer.started[1][1][0]
    # Overlapped: about max(busy, window) = 0.6 s; serial would be busy + window = 0.9 s.
    assert busy_s - 0.05 <= second_wait_s < busy_s + batch_timeout_s - 0.1


def test_full_queue_rejects_at_once() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(
            model, max_batch_size=1, max_queue_size=3, observer=observer
        ) as batcher:
            running = spawn(batcher.submit(0, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            queued = [spawn(batcher.submit(i, timeout_s=10)) for i in (1, 2, 3)]
            await wait_until(lambda: batcher.queue_depth == 3)

            t0 = time.monotonic()
            with pytest.raises(QueueFullError, match="3 items"):
                # The model is still held: only an immediate rejection can finish in time.
                await asyncio.wait_for(batcher.submit(4, timeout_s=10), PROMPT_S)
            assert time.monotonic() - t0 < PROMPT_S
            assert observer.rejections == ["queue_full"]

            model.release()
            assert await running == 0
            assert await asyncio.gather(*queued) == [10, 20, 30]

    run(body())
    assert 4 not in model.computed


def test_expired_item_is_not_computed() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=1, observer=observer) as batcher:
            running = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            with pytest.raises(DeadlineExceededError):
                await batcher.submit(2, timeout_s=0.05)
            assert batcher.queue_depth == 0  # its slot was freed at the deadline
            model.release()
            assert await running == 10
            assert await batcher.submit(3, timeout_s=10) == 30

    run(body())
    assert model.batches == [[1], [3]]  # item 2 never reached batch_fn
    assert observer.rejections == ["deadline"]
    assert observer.depths[-1] == 0


def test_deadline_while_running_drops_the_late_result() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, observer=observer) as batcher:
            with pytest.raises(DeadlineExceededError):
                await batcher.submit(1, timeout_s=0.1)
            assert model.batches == [[1]]  # it was computing when the deadline hit
            model.release()
            # The late result must not disturb the next request.
            assert await batcher.submit(2, timeout_s=10) == 20

    run(body())
    assert observer.rejections == ["deadline"]
    assert [size for size, _, _ in observer.finished] == [1, 1]


def test_cancelled_item_is_not_computed_and_frees_its_slot() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(
            model, max_batch_size=4, max_queue_size=1, observer=observer
        ) as batcher:
            running = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            abandoned = spawn(batcher.submit(2, timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 1)

            abandoned.cancel()  # the client disconnected
            with pytest.raises(asyncio.CancelledError):
                await abandoned
            assert batcher.queue_depth == 0
            assert observer.depths[-1] == 0
            # The freed slot is usable again although the model is still busy.
            replacement = spawn(batcher.submit(3, timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 1)

            model.release()
            assert await running == 10
            assert await replacement == 30

    run(body())
    assert model.batches == [[1], [3]]
    assert observer.rejections == []


def test_cancelled_while_running_drops_the_result() -> None:
    model = FakeModel()
    model.hold()

    async def body() -> None:
        async with started_batcher(model) as batcher:
            task = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            model.release()
            assert await batcher.submit(2, timeout_s=10) == 20

    run(body())
    assert model.batches == [[1], [2]]


def test_batch_fn_exception_fails_only_its_batch() -> None:
    model = FakeModel(fail_if_negative=True)
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=4, observer=observer) as batcher:
            first = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            # These two queue behind the busy model and form the failing batch together.
            bad = spawn(batcher.submit(-1, timeout_s=10))
            innocent = spawn(batcher.submit(5, timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 2)
            model.release()

            assert await first == 10
            for task in (bad, innocent):
                with pytest.raises(BatchFunctionError, match="ValueError") as info:
                    await task
                assert isinstance(info.value.__cause__, ValueError)
            assert await batcher.submit(7, timeout_s=10) == 70  # the next batch works

    run(body())
    assert model.batches == [[1], [-1, 5], [7]]
    errors = [error for _, _, error in observer.finished]
    assert errors[0] is None
    assert isinstance(errors[1], ValueError)
    assert errors[2] is None


def test_wrong_number_of_outputs_fails_the_batch() -> None:
    model = FakeModel(drop_last=True)
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, observer=observer) as batcher:
            tasks = [spawn(batcher.submit(i, timeout_s=10)) for i in (1, 2)]
            await wait_until(lambda: batcher.queue_depth == 0 and model.calls == 1)
            model.release()
            for task in tasks:
                with pytest.raises(BatchFunctionError, match="1 outputs for a batch of 2"):
                    await task

    run(body())
    assert model.batches == [[1, 2]]
    assert isinstance(observer.finished[0][2], BatchFunctionError)


def test_batch_fn_runs_in_one_dedicated_thread() -> None:
    model = FakeModel(sleep_s=0.005)
    loop_thread: list[int] = []

    async def body() -> None:
        loop_thread.append(threading.get_ident())
        async with started_batcher(model, max_batch_size=4) as batcher:
            for i in range(3):
                assert await batcher.submit(i, timeout_s=10) == i * 10
            await asyncio.gather(*(batcher.submit(i, timeout_s=10) for i in range(20)))

    run(body())
    assert model.calls >= 4
    assert len(set(model.thread_ids)) == 1
    assert model.thread_ids[0] != loop_thread[0]
    assert model.thread_names[0].startswith("batcher-test")
    assert model.max_active == 1
    # stop() shut the executor down: its thread is gone.
    assert not any(t.name.startswith("batcher-test") for t in threading.enumerate())


def test_stop_drains_everything_queued() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model, max_batch_size=2, batch_timeout_s=0.0, max_queue_size=16, observer=observer
        )
        await batcher.start()
        assert batcher.running
        tasks = [spawn(batcher.submit(i, timeout_s=10)) for i in range(6)]
        await wait_until(lambda: model.calls == 1)
        stopping = spawn(batcher.stop(drain=True))
        await wait_until(lambda: not batcher.running)

        with pytest.raises(ShuttingDownError):
            await batcher.submit(99, timeout_s=10)
        model.release()
        await stopping
        assert await asyncio.gather(*tasks) == [i * 10 for i in range(6)]
        assert batcher.queue_depth == 0

    run(body())
    assert sorted(model.computed) == list(range(6))
    assert all(len(b) <= 2 for b in model.batches)
    assert observer.rejections == ["shutting_down"]


def test_stop_without_drain_fails_queued_items() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=1, observer=observer) as batcher:
            running = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            queued = [spawn(batcher.submit(i, timeout_s=10)) for i in (2, 3)]
            await wait_until(lambda: batcher.queue_depth == 2)

            stopping = spawn(batcher.stop(drain=False))
            for task in queued:
                with pytest.raises(ShuttingDownError):
                    await task
            model.release()
            await stopping
            assert await running == 10  # the batch already in the model still finishes

    run(body())
    assert model.batches == [[1]]
    assert observer.rejections == ["shutting_down", "shutting_down"]
    assert observer.depths[-1] == 0


def test_stop_timeout_fails_a_stuck_batch() -> None:
    model = FakeModel()
    model.hold()

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model, max_batch_size=1, batch_timeout_s=0.0, max_queue_size=4
        )
        await batcher.start()
        stuck = spawn(batcher.submit(1, timeout_s=10))
        queued = spawn(batcher.submit(2, timeout_s=10))
        await wait_until(lambda: model.calls == 1 and batcher.queue_depth == 1)
        t0 = time.monotonic()
        await batcher.stop(timeout_s=0.1)
        assert time.monotonic() - t0 < PROMPT_S
        for task in (stuck, queued):
            with pytest.raises(ShuttingDownError):
                await task
        model.release()  # let the abandoned model thread end

    run(body())
    assert model.batches == [[1]]


def test_submit_after_stop_and_stop_is_idempotent() -> None:
    model = FakeModel()
    observer = RecordingObserver()

    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            model, max_batch_size=4, batch_timeout_s=0.0, max_queue_size=4, observer=observer
        )
        await batcher.start()
        assert await batcher.submit(1, timeout_s=10) == 10
        await batcher.stop()
        await batcher.stop()
        await asyncio.gather(batcher.stop(), batcher.stop(drain=False))
        assert not batcher.running
        with pytest.raises(ShuttingDownError):
            await batcher.submit(2, timeout_s=10)
        with pytest.raises(RuntimeError, match="already started"):
            await batcher.start()

    run(body())
    assert model.batches == [[1]]
    assert observer.rejections == ["shutting_down"]


def test_submit_before_start_is_an_error() -> None:
    async def body() -> None:
        batcher: Batcher[int, int] = Batcher(
            FakeModel(), max_batch_size=1, batch_timeout_s=0.0, max_queue_size=1
        )
        with pytest.raises(RuntimeError, match="not started"):
            await batcher.submit(1, timeout_s=1)
        await batcher.stop()  # stopping a never-started batcher is harmless

    run(body())


def test_observer_sees_depths_batches_and_durations() -> None:
    model = FakeModel(sleep_s=0.05)
    model.hold()
    observer = RecordingObserver()
    held_s = 0.1

    async def body() -> None:
        async with started_batcher(model, max_batch_size=4, observer=observer) as batcher:
            first = spawn(batcher.submit(1, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            rest = [spawn(batcher.submit(i, timeout_s=10)) for i in (2, 3)]
            await wait_until(lambda: batcher.queue_depth == 2)
            await asyncio.sleep(held_s)
            model.release()
            assert await first == 10
            assert await asyncio.gather(*rest) == [20, 30]

    run(body())
    # enqueue 1 -> dequeued -> enqueue 2, 3 -> both dequeued as one batch
    assert observer.depths == [1, 0, 1, 2, 0]
    assert [size for size, _ in observer.started] == [1, 2]
    first_waits, second_waits = observer.started[0][1], observer.started[1][1]
    assert len(first_waits) == 1 and 0 <= first_waits[0] < PROMPT_S
    assert len(second_waits) == 2 and all(w >= held_s - 0.01 for w in second_waits)
    assert [(size, error) for size, _, error in observer.finished] == [(1, None), (2, None)]
    assert all(0.05 - 0.01 <= duration < 0.05 + HOLD_S for _, duration, _ in observer.finished)
    assert observer.rejections == []


def test_observer_failure_does_not_break_batching(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenObserver(RecordingObserver):
        def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
            raise RuntimeError("metrics backend down")

    model = FakeModel()

    async def body() -> None:
        async with started_batcher(model, observer=BrokenObserver()) as batcher:
            assert await batcher.submit(4, timeout_s=10) == 40

    run(body())
    assert "observer hook batch_started failed" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1"),
        ({"max_batch_size": -3}, "max_batch_size must be an integer >= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer >= 1"),
        ({"max_queue_size": 0}, "max_queue_size must be an integer >= 1"),
        ({"batch_timeout_s": -0.1}, "batch_timeout_s must be >= 0 seconds"),
        ({"batch_timeout_s": math.nan}, "batch_timeout_s must be a finite number of seconds"),
        ({"batch_timeout_s": math.inf}, "batch_timeout_s must be a finite number of seconds"),
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    params: dict[str, Any] = {"max_batch_size": 4, "batch_timeout_s": 0.0, "max_queue_size": 8}
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Batcher(FakeModel(), **params)


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, math.nan, math.inf])
def test_invalid_submit_timeout_is_rejected(timeout_s: float) -> None:
    model = FakeModel()

    async def body() -> None:
        async with started_batcher(model) as batcher:
            with pytest.raises(ValueError, match="timeout_s"):
                await batcher.submit(1, timeout_s=timeout_s)
            assert batcher.queue_depth == 0

    run(body())
    assert model.calls == 0


# -- submit_many: the images of one request, queued and counted as one ------------------------


def test_submit_many_queues_a_request_whole_or_refuses_it_whole() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(
            model, max_batch_size=1, max_queue_size=4, observer=observer
        ) as batcher:
            running = spawn(batcher.submit(0, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            first = spawn(batcher.submit_many([1, 2, 3], timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 3)

            # Two images, one free slot: nothing of the request is queued, and it counts once.
            with pytest.raises(QueueFullError, match="queue is full"):
                await asyncio.wait_for(batcher.submit_many([4, 5], timeout_s=10), PROMPT_S)
            assert batcher.queue_depth == 3
            assert observer.rejections == ["queue_full"]
            # Larger than the whole queue: refused at once, with a message that says so.
            with pytest.raises(QueueFullError, match="5 items can never fit"):
                await batcher.submit_many([6, 7, 8, 9, 10], timeout_s=10)
            assert observer.rejections == ["queue_full", "queue_full"]
            last = spawn(batcher.submit_many([11], timeout_s=10))  # fits the last slot
            await wait_until(lambda: batcher.queue_depth == 4)

            model.release()
            assert await running == 0
            assert await first == [10, 20, 30]
            assert await last == [110]

    run(body())
    assert model.computed == [0, 1, 2, 3, 11]
    assert observer.depths[:3] == [1, 0, 3]  # a request's images arrive in the queue together


def test_submit_many_deadline_counts_one_rejection_and_computes_nothing() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=1, observer=observer) as batcher:
            running = spawn(batcher.submit(0, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            with pytest.raises(DeadlineExceededError):
                await batcher.submit_many([1, 2, 3], timeout_s=0.05)
            assert batcher.queue_depth == 0  # every slot of the request was freed
            model.release()
            assert await running == 0
            assert await batcher.submit_many([4, 5], timeout_s=10) == [40, 50]

    run(body())
    assert model.computed == [0, 4, 5]
    assert observer.rejections == ["deadline"]


def test_submit_many_shutdown_counts_one_rejection_per_request() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=1, observer=observer) as batcher:
            running = spawn(batcher.submit(0, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            queued = [spawn(batcher.submit_many([i, i + 1, i + 2], timeout_s=10)) for i in (1, 4)]
            await wait_until(lambda: batcher.queue_depth == 6)

            stopping = spawn(batcher.stop(drain=False))
            for task in queued:
                with pytest.raises(ShuttingDownError):
                    await task
            model.release()
            await stopping
            assert await running == 0
            with pytest.raises(ShuttingDownError):
                await batcher.submit_many([7, 8], timeout_s=10)

    run(body())
    assert model.computed == [0]
    assert observer.rejections == ["shutting_down"] * 3  # two queued requests, one late one


def test_submit_many_model_failure_fails_the_request_without_a_rejection() -> None:
    model = FakeModel(fail_if_negative=True)
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(model, max_batch_size=1, observer=observer) as batcher:
            request = spawn(batcher.submit_many([-1, 2, 3, 4], timeout_s=10))
            await wait_until(lambda: model.calls == 1 and batcher.queue_depth == 3)
            model.release()
            with pytest.raises(BatchFunctionError, match="negative payload"):
                await request
            assert batcher.queue_depth == 0  # the rest of the request left the queue
            assert await batcher.submit_many([5], timeout_s=10) == [50]

    run(body())
    # The next batch may already have started when the failure arrived; nothing after it did.
    assert 3 not in model.computed and 4 not in model.computed
    assert observer.rejections == []


def test_cancelled_submit_many_frees_every_slot() -> None:
    model = FakeModel()
    model.hold()
    observer = RecordingObserver()

    async def body() -> None:
        async with started_batcher(
            model, max_batch_size=1, max_queue_size=3, observer=observer
        ) as batcher:
            running = spawn(batcher.submit(0, timeout_s=10))
            await wait_until(lambda: model.calls == 1)
            abandoned = spawn(batcher.submit_many([1, 2, 3], timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 3)
            abandoned.cancel()  # the client disconnected
            with pytest.raises(asyncio.CancelledError):
                await abandoned
            assert batcher.queue_depth == 0
            replacement = spawn(batcher.submit_many([4, 5, 6], timeout_s=10))
            await wait_until(lambda: batcher.queue_depth == 3)
            model.release()
            assert await running == 0
            assert await replacement == [40, 50, 60]

    run(body())
    assert model.computed == [0, 4, 5, 6]
    assert observer.rejections == []


def test_submit_many_needs_a_payload() -> None:
    model = FakeModel()

    async def body() -> None:
        async with started_batcher(model) as batcher:
            with pytest.raises(ValueError, match="at least one payload"):
                await batcher.submit_many([], timeout_s=1)

    run(body())
    assert model.calls == 0


# -- pipelining and the fill wait: the /predict hot-path changes the benchmark led to ----------
# (BENCHMARKS.md): the batcher starts the next model call before it delivers the finished
# batch's results, and waits a little for a slow model's clients to come back.


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


@pytest.mark.timeout(60)
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
            await wait_until(lambda: len(model.batches) == 1)
            rest = [asyncio.ensure_future(caller(p)) for p in (2, 3)]
            await wait_until(lambda: batcher.queue_depth == 2)
            model.gate.set()
            await asyncio.gather(first, *rest)
        finally:
            model.gate.set()
            await batcher.stop(timeout_s=5.0)

    asyncio.run(body())
    assert model.batches == [[1], [2, 3]]
    # When the second batch started, the first batch's caller had not been resumed yet.
    assert observer.resumed_at_start == [[], []]


@pytest.mark.timeout(60)
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
            await wait_until(lambda: len(model.batches) == 1)  # full: ran without the wait
            late = asyncio.ensure_future(batcher.submit(10, timeout_s=60))
            await wait_until(lambda: batcher.queue_depth == 1)
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


@pytest.mark.timeout(60)
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
