"""Dynamic batching of model calls: a bounded queue, one batcher task, one model thread.

Request handlers call :meth:`Batcher.submit_many` with the decoded payloads of one request (or
:meth:`Batcher.submit` with one payload) and await the results. A single batcher task (on the
event loop) groups queued payloads into batches of at most ``max_batch_size`` and hands each
batch to ``batch_fn`` in ONE dedicated thread, one call at a time. Results are delivered to the
waiting futures on the event loop thread.

Latency policy (after Ray Serve's ``_BatchQueue`` and TF Serving's batch scheduler):

* When the model is idle a request is not held back: the batcher takes whatever is queued and runs
  it at once. Batches grow naturally from what queues while the model is busy.
* ``batch_timeout_s`` (may be 0) bounds an optional extra wait for a fuller batch, counted from the
  oldest queued item's enqueue time. That wait overlaps with the running batch (pipelining), so it
  only costs latency when the model is idle.
* The queue is bounded (``max_queue_size`` items): a request whose payloads do not all fit is
  rejected at once, whole, with :class:`QueueFullError` instead of growing latency without bound.
  The payloads of one request are queued together or not at all.
* A refused request counts as ONE rejection (``BatchObserver.rejected``), however many payloads
  it had.
* Every item has a deadline (enqueue time + ``timeout_s``). An item whose deadline passed before its
  batch formed is never computed; a result that arrives after the deadline is dropped.

All loop-side times come from ``loop.time()`` (monotonic, seconds); the model-call duration is
measured with ``time.monotonic()`` in the model thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import numbers
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = [
    "BatchFunctionError",
    "BatchObserver",
    "Batcher",
    "BatchingError",
    "DeadlineExceededError",
    "QueueFullError",
    "ShuttingDownError",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


#: Shortest fill wait worth having: below this, delivering the finished batch's answers takes
#: longer than the wait, and the next batch had better start at once (seconds).
MIN_FILL_WAIT_S = 0.002


class BatchingError(Exception):
    """Base class of every error :meth:`Batcher.submit` raises on purpose."""


class QueueFullError(BatchingError):
    """The queue held ``max_queue_size`` items; the request was rejected without waiting (503)."""


class DeadlineExceededError(BatchingError):
    """The request's deadline passed: it was not computed, or its result arrived too late (504)."""


class ShuttingDownError(BatchingError):
    """The batcher is stopping or stopped and did not (and will not) compute the request (503)."""


class BatchFunctionError(BatchingError):
    """The model call for the request's batch failed (500).

    ``__cause__`` is the exception ``batch_fn`` raised; it is ``None`` when ``batch_fn`` returned
    the wrong number of outputs.
    """


class BatchObserver(Protocol):
    """Metrics hooks, called on the event loop thread; exceptions they raise are logged, ignored."""

    def queue_depth(self, depth: int) -> None:
        """The number of queued (not yet batched) items changed to ``depth``."""

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        """A batch of ``size`` items went to the model; per item, seconds from enqueue to now."""

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        """A batch finished after ``duration_s`` seconds of model time; ``error`` if it failed."""

    def rejected(self, reason: str) -> None:
        """A request was refused, once per request whatever its number of payloads:
        ``"queue_full"``, ``"deadline"`` or ``"shutting_down"``."""


class _NullObserver:
    """Observer used when none is given: does nothing."""

    def queue_depth(self, depth: int) -> None:
        pass

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        pass

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


@dataclass(eq=False, slots=True)
class _Request:
    """What the payloads of one submit call share, so that its failure is counted once."""

    settled: bool = False  # it already failed (and, if it was a rejection, was counted)


@dataclass(eq=False, slots=True)
class _Item(Generic[T, R]):
    """One queued payload. ``eq=False`` keeps identity hashing, so items can key the queue."""

    payload: T
    future: asyncio.Future[R]
    enqueued_at: float  # loop.time(), seconds
    deadline: float  # loop.time(), seconds
    request: _Request


@dataclass(frozen=True, slots=True)
class _CallOutcome(Generic[R]):
    """What one model call produced: outputs or an error, and its duration in seconds."""

    outputs: Sequence[R] | None
    error: BaseException | None
    duration_s: float


def _call_batch_fn(fn: Callable[[list[T]], Sequence[R]], payloads: list[T]) -> _CallOutcome[R]:
    """Run ``fn`` on one batch in the model thread and time it (``time.monotonic``, seconds).

    The length check happens here so that a result without ``len()`` (a generator, say) is reported
    as a batch failure like any other exception from the model call.
    """
    start = time.monotonic()
    try:
        outputs = fn(payloads)
        n_outputs = len(outputs)
    except Exception as exc:
        return _CallOutcome(None, exc, time.monotonic() - start)
    duration_s = time.monotonic() - start
    if n_outputs != len(payloads):
        error = BatchFunctionError(
            f"batch_fn returned {n_outputs} outputs for a batch of {len(payloads)} payloads; "
            "it must return exactly one output per payload"
        )
        return _CallOutcome(None, error, duration_s)
    return _CallOutcome(outputs, None, duration_s)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")


class Batcher(Generic[T, R]):
    """Groups concurrent :meth:`submit_many` / :meth:`submit` calls into batches for one
    synchronous ``batch_fn``.

    Args:
        batch_fn: Synchronous model call, run in the batcher's own thread with 1 to
            ``max_batch_size`` payloads; must return exactly one output per payload, in order.
        max_batch_size: Largest batch handed to ``batch_fn`` (items, >= 1).
        batch_timeout_s: Longest extra wait for a fuller batch, in seconds (>= 0), counted from the
            enqueue time of the oldest queued item. 0 means never wait: run what is queued.
        max_queue_size: Most items (payloads) waiting for a batch (>= 1); a request whose
            payloads do not all fit raises :class:`QueueFullError`. Items in the running batch
            do not count.
        observer: Metrics hooks; see :class:`BatchObserver`.
        name: Used in the thread name, the task name and log messages.
        fill_wait_ratio: Once the model is idle, how long it may stay idle for a fuller batch,
            as a fraction (0..1) of its previous call's duration; 0 never waits. It waits only
            while fewer items are queued than the previous batch held plus what queued during
            it (at most ``max_batch_size``): on a model whose calls take tens of milliseconds,
            clients answered by the previous batch send their next request within a few
            milliseconds, and waiting for them runs one full batch instead of two half ones
            alternating, at a cost of at most this fraction of the model's time. Waits shorter
            than :data:`MIN_FILL_WAIT_S` are not worth a loop turn and are skipped.

    Use from one event loop: ``await start()``, then ``submit`` from any task on that loop, then
    ``await stop()``. A stopped batcher cannot be restarted; make a new one.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        batch_timeout_s: float,
        max_queue_size: int,
        observer: BatchObserver | None = None,
        name: str = "model",
        fill_wait_ratio: float = 0.0,
    ) -> None:
        if not callable(batch_fn):
            raise ValueError(f"batch_fn must be callable, got {batch_fn!r}")
        _check_positive_int("max_batch_size", max_batch_size)
        _check_positive_int("max_queue_size", max_queue_size)
        _check_seconds("batch_timeout_s", batch_timeout_s, allow_zero=True)
        if not 0 <= fill_wait_ratio <= 1:
            raise ValueError(f"fill_wait_ratio must be within 0..1, got {fill_wait_ratio!r}")
        self._fill_wait_ratio = float(fill_wait_ratio)
        self._last_call_s = 0.0  # duration of the previous model call, seconds
        # What the next batch may wait for: the previous batch's requests (their clients
        # usually send the next one) plus what queued meanwhile, at most a full batch.
        self._fill_target = max_batch_size
        self._batch_fn = batch_fn
        self._max_batch_size = max_batch_size
        self._batch_timeout_s = float(batch_timeout_s)
        self._max_queue_size = max_queue_size
        self._observer: BatchObserver = observer if observer is not None else _NullObserver()
        self._name = name
        # An OrderedDict used as a FIFO: O(1) append, pop-oldest and removal of an abandoned item,
        # so a cancelled or expired request frees its slot at once.
        self._queue: OrderedDict[_Item[T, R], None] = OrderedDict()
        # Nothing touching the loop or threads happens here: start() creates them.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._stopped = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the running batch)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` begins (or the batcher task dies)."""
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self) -> None:
        """Start the batcher task and its one model thread on the running event loop."""
        if self._task is not None or self._stopped:
            raise RuntimeError(f"batcher {self._name!r} was already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        # One worker: the model is called by one thread, one batch at a time, never on the loop.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{self._name}"
        )
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self._name}")
        logger.info(
            "batcher %r started: max_batch_size=%d batch_timeout_s=%g max_queue_size=%d",
            self._name,
            self._max_batch_size,
            self._batch_timeout_s,
            self._max_queue_size,
        )

    async def submit(self, payload: T, *, timeout_s: float) -> R:
        """Queue one ``payload`` for the next batch and return its output.

        The same as ``(await submit_many([payload], timeout_s=timeout_s))[0]``; see
        :meth:`submit_many` for the arguments and errors.
        """
        return (await self.submit_many((payload,), timeout_s=timeout_s))[0]

    async def submit_many(self, payloads: Sequence[T], *, timeout_s: float) -> list[R]:
        """Queue the payloads of ONE request together and return their outputs, in order.

        Either every payload is queued or none is: a request that does not fit the free queue
        slots is refused whole, at once. The request is answered as a unit: the first payload
        that fails (deadline, shutdown, model error) fails the call, and the others are taken
        out of the queue (or their results dropped). A refused request is reported to the
        observer ONCE (``rejected(reason)``), whatever its number of payloads.

        Args:
            payloads: The model inputs of one request (at least one).
            timeout_s: Seconds (> 0) from now until the request's deadline: a payload is not
                computed if its batch has not formed by then, and this call stops waiting at the
                deadline.

        Raises:
            QueueFullError: the free queue slots cannot hold every payload (raised at once,
                without waiting; nothing was queued).
            DeadlineExceededError: the deadline passed before every result arrived.
            ShuttingDownError: :meth:`stop` was called.
            BatchFunctionError: the model call for one of the payloads' batches failed.
            ValueError: no payloads, or ``timeout_s`` is not a positive number of seconds.
            RuntimeError: the batcher was not started, or is used from another event loop.
        """
        _check_seconds("timeout_s", timeout_s, allow_zero=False)
        loop, wakeup = self._admit(len(payloads))
        now = loop.time()
        request = _Request()
        items: list[_Item[T, R]] = [
            _Item(payload, loop.create_future(), now, now + timeout_s, request)
            for payload in payloads
        ]
        for item in items:
            self._queue[item] = None
        self._notify(self._observer.queue_depth, len(self._queue))
        wakeup.set()

        futures = [item.future for item in items]
        try:
            # asyncio.wait neither raises on timeout nor cancels the futures, so we decide below.
            # FIRST_EXCEPTION: one failed payload fails the request, no need to wait for the rest.
            _, pending = await asyncio.wait(
                futures, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION
            )
        except asyncio.CancelledError:
            # The client went away: free the slots now, and make sure no batch computes them.
            self._abandon(items)
            raise
        if pending:
            self._settle_pending(items, timeout_s)
        error: BaseException | None = None
        for future in futures:
            if future.cancelled():
                continue
            exc = future.exception()  # also marks it retrieved
            if exc is not None and error is None:
                error = exc
        if error is not None:
            raise error
        return [future.result() for future in futures]

    def _admit(self, count: int) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        """Check that a request of ``count`` payloads may be queued now (see
        :meth:`submit_many` for what is raised); returns the loop and the wake-up event."""
        if count == 0:
            raise ValueError("submit_many needs at least one payload")
        if self._closing:
            self._notify(self._observer.rejected, "shutting_down")
            raise ShuttingDownError(f"batcher {self._name!r} is shutting down")
        loop = self._loop
        if loop is None or self._wakeup is None:
            raise RuntimeError(f"batcher {self._name!r} was not started")
        if asyncio.get_running_loop() is not loop:
            raise RuntimeError(f"batcher {self._name!r} belongs to another event loop")
        if len(self._queue) + count > self._max_queue_size:
            self._notify(self._observer.rejected, "queue_full")
            if count > self._max_queue_size:
                raise QueueFullError(
                    f"a request of {count} items can never fit batcher {self._name!r}'s queue "
                    f"({self._max_queue_size} items)"
                )
            raise QueueFullError(
                f"batcher {self._name!r} queue is full ({self._max_queue_size} items)"
            )
        return loop, self._wakeup

    def _settle_pending(self, items: list[_Item[T, R]], timeout_s: float) -> None:
        """Some payloads of a request have no result yet: another one failed (drop the rest),
        or the deadline passed (answer every one with :class:`DeadlineExceededError`)."""
        futures = [item.future for item in items]
        if any(f.done() and not f.cancelled() and f.exception() for f in futures):
            self._abandon(items)  # another payload failed: the rest is not needed
            return
        # Deadline: whether still queued or in the running batch, answer now; a late result is
        # dropped because _execute never touches a done future.
        for item in items:
            self._discard(item)
            self._reject(
                item,
                DeadlineExceededError(
                    f"no result from batcher {self._name!r} within {timeout_s:g} s"
                ),
                "deadline",
            )

    async def stop(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop accepting requests, then stop the batcher task and the model thread.

        Args:
            drain: True: every queued item is still computed and answered first. False: queued
                items fail with :class:`ShuttingDownError`; the running batch still finishes.
            timeout_s: Most seconds to wait for the drain and the running batch (None: no
                limit). When it runs out, what is left fails with :class:`ShuttingDownError` and
                the model thread is abandoned (it ends when its current call returns).

        Idempotent; concurrent calls all return once the batcher has stopped.
        """
        if timeout_s is not None:
            _check_seconds("timeout_s", timeout_s, allow_zero=True)
        first_call = not self._closing
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if not drain:
            self._fail_queued("stopped without draining")
        if self._stopped:
            return
        task = self._task
        if task is None:  # never started: nothing runs
            self._stopped = True
            return
        if first_call:
            logger.info(
                "batcher %r stopping (drain=%s, %d queued)", self._name, drain, len(self._queue)
            )

        finished = True
        if not task.done():
            done, _ = await asyncio.wait((task,), timeout=timeout_s)
            finished = bool(done)
        if not finished:
            logger.warning(
                "batcher %r did not drain within %g s; failing %d queued item(s)",
                self._name,
                timeout_s,
                len(self._queue),
            )
            self._fail_queued(f"stop timed out after {timeout_s:g} s")
            pending = [t for t in (task, self._inflight) if t is not None and not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)

        if self._stopped:  # a concurrent stop() finished the job while we waited
            return
        self._stopped = True
        if self._executor is not None:
            # After a clean drain the thread is idle and joins at once; after a timeout it may be
            # stuck in batch_fn, so do not block the loop on it.
            self._executor.shutdown(wait=finished, cancel_futures=True)
        logger.info("batcher %r stopped", self._name)

    # -- batcher task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """Batcher task body; a bug here must not leave requests hanging until their deadline."""
        try:
            await self._batch_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batcher %r crashed; failing queued requests", self._name)
            self._closing = True
            self._fail_queued("the batcher task crashed")

    async def _batch_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            # 1. Wait for work; exit once closing and drained.
            while not self._queue:
                if self._closing:
                    await self._wait_model_idle()
                    return
                await self._wait_wakeup(None)

            # 2. Optionally wait for a fuller batch. This runs while the previous batch may still
            #    be in the model thread, so the wait overlaps with model time (pipelining).
            while self._batch_timeout_s > 0 and not self._closing and self._queue:
                if len(self._queue) >= self._max_batch_size:
                    break
                oldest = next(iter(self._queue))
                remaining = oldest.enqueued_at + self._batch_timeout_s - loop.time()
                if remaining <= 0:
                    break
                await self._wait_wakeup(remaining)

            # 3. One model call at a time; once it is idle, maybe a short wait for more.
            await self._wait_model_idle()
            await self._wait_to_fill()

            # 4. Form the batch from what is queued now: everything that queued while the model
            #    was busy joins it.
            self._start_batch(self._take_batch(loop.time()))

    def _fill_wait_s(self) -> float:
        """Seconds the idle model may wait for a fuller batch now (0: start at once)."""
        if self._closing or len(self._queue) >= self._fill_target:
            return 0.0
        wait = self._fill_wait_ratio * self._last_call_s
        return wait if wait >= MIN_FILL_WAIT_S else 0.0

    async def _wait_to_fill(self) -> None:
        loop = self._loop
        assert loop is not None
        patience = self._fill_wait_s()
        if not patience:
            return
        until = loop.time() + patience
        while self._queue and len(self._queue) < self._fill_target and not self._closing:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            await self._wait_wakeup(remaining)

    def _start_batch(self, batch: list[_Item[T, R]]) -> None:
        if batch:
            assert self._loop is not None
            self._inflight = self._loop.create_task(
                self._execute(batch), name=f"batcher-{self._name}-batch"
            )

    def _chain_next_batch(self) -> None:
        """As a batch finishes, start the next one at once when nothing argues for waiting.

        Called before the finished batch's results are delivered: the loop then turns to the
        next model call first (its task runs before the woken request handlers), instead of
        leaving the model idle while it sends every response of the batch that just finished.
        """
        loop = self._loop
        assert loop is not None
        if not self._queue or self._fill_wait_s():
            return  # nothing to run, or the batcher task waits for a fuller batch
        if self._batch_timeout_s > 0 and not self._closing:
            oldest = next(iter(self._queue))
            if (
                len(self._queue) < self._max_batch_size
                and loop.time() < oldest.enqueued_at + self._batch_timeout_s
            ):
                return  # the batcher task waits for a fuller batch, as usual
        self._start_batch(self._take_batch(loop.time()))

    async def _wait_wakeup(self, timeout_s: float | None) -> None:
        """Sleep until submit/stop signals, or ``timeout_s`` seconds pass (None: no limit)."""
        wakeup = self._wakeup
        assert wakeup is not None
        # Callers check their condition right before this without yielding, so clearing here
        # cannot lose a wakeup.
        wakeup.clear()
        if timeout_s is None:
            await wakeup.wait()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout_s)

    async def _wait_model_idle(self) -> None:
        # A finishing batch may have chained the next one (_chain_next_batch): wait for that too.
        while (inflight := self._inflight) is not None and not inflight.done():
            # asyncio.wait: if this task is cancelled, the batch keeps running (stop() decides).
            await asyncio.wait((inflight,))

    def _take_batch(self, now: float) -> list[_Item[T, R]]:
        """Pop up to ``max_batch_size`` live items; fail expired ones, skip abandoned ones."""
        batch: list[_Item[T, R]] = []
        popped = False
        while self._queue and len(batch) < self._max_batch_size:
            item, _ = self._queue.popitem(last=False)
            popped = True
            if item.future.done():  # cancelled or already answered: do not compute it
                continue
            if now >= item.deadline:
                self._reject(
                    item,
                    DeadlineExceededError(
                        f"deadline passed while queued in batcher {self._name!r}"
                    ),
                    "deadline",
                )
                continue
            batch.append(item)
        if popped:
            self._notify(self._observer.queue_depth, len(self._queue))
        return batch

    async def _execute(self, batch: list[_Item[T, R]]) -> None:
        """Run one batch in the model thread and resolve its futures on the loop thread."""
        loop = self._loop
        executor = self._executor
        assert loop is not None and executor is not None
        started = loop.time()
        self._notify(
            self._observer.batch_started, len(batch), [started - item.enqueued_at for item in batch]
        )
        payloads = [item.payload for item in batch]
        try:
            # run_in_executor's future completes on the loop thread, so every set_result below
            # happens on the loop, never in the model thread.
            outcome = await loop.run_in_executor(executor, _call_batch_fn, self._batch_fn, payloads)
        except asyncio.CancelledError:
            # stop() gave up waiting: the thread may still be busy, but these requests are over.
            error = ShuttingDownError(f"batcher {self._name!r} stopped during the model call")
            self._notify(self._observer.batch_finished, len(batch), loop.time() - started, error)
            for item in batch:
                self._reject(item, ShuttingDownError(str(error)), "shutting_down")
            raise
        except Exception as exc:  # e.g. the executor refused the call
            outcome = _CallOutcome(None, exc, loop.time() - started)
        except BaseException as exc:
            # SystemExit/KeyboardInterrupt from inside batch_fn: answer the batch, then let the
            # process-level exception propagate.
            self._fail_batch(batch, exc)
            raise

        self._notify(self._observer.batch_finished, len(batch), outcome.duration_s, outcome.error)
        self._last_call_s = outcome.duration_s
        self._fill_target = min(self._max_batch_size, len(batch) + len(self._queue))
        self._chain_next_batch()
        if outcome.error is not None:
            self._fail_batch(batch, outcome.error)
            return
        outputs = outcome.outputs
        assert outputs is not None
        # Lengths were checked in the model thread.
        for item, output in zip(batch, outputs, strict=True):
            # A request that timed out or was cancelled meanwhile already has its answer.
            if not item.future.done():
                item.future.set_result(output)

    def _fail_batch(self, batch: list[_Item[T, R]], error: BaseException) -> None:
        """Fail every unanswered item of ``batch`` with a :class:`BatchFunctionError`; a model
        failure is not a rejection, so the requests are settled without being counted."""
        if isinstance(error, BatchFunctionError):  # wrong number of outputs: no cause to chain
            message, cause = str(error), None
        else:
            message = f"batch_fn raised {type(error).__name__}: {error}"
            cause = error
        logger.error(
            "batcher %r: model call failed for a batch of %d: %s",
            self._name,
            len(batch),
            message,
            exc_info=cause,
        )
        for item in batch:
            if not item.future.done():
                # One exception object per future: concurrent raisers would share its traceback.
                item_error = BatchFunctionError(message)
                item_error.__cause__ = cause
                item.future.set_exception(item_error)
                item.request.settled = True

    # -- helpers ------------------------------------------------------------------------------

    def _discard(self, item: _Item[T, R]) -> None:
        """Remove ``item`` from the queue if it is still there, freeing its slot."""
        if item in self._queue:
            del self._queue[item]
            self._notify(self._observer.queue_depth, len(self._queue))

    def _abandon(self, items: Sequence[_Item[T, R]]) -> None:
        """Take a request's unanswered items out of the queue and cancel them (not counted)."""
        for item in items:
            self._discard(item)
            future = item.future
            if future.done():
                if not future.cancelled():
                    future.exception()  # mark retrieved: nobody else will read it
            else:
                future.cancel()
        if items:
            items[0].request.settled = True

    def _reject(self, item: _Item[T, R], error: BatchingError, reason: str) -> None:
        """Fail ``item`` with ``error`` unless it already has an answer; the first rejection of
        a request is reported, once per request (not per item)."""
        if item.future.done():
            return
        item.future.set_exception(error)
        request = item.request
        if not request.settled:
            request.settled = True
            self._notify(self._observer.rejected, reason)

    def _fail_queued(self, why: str) -> None:
        if not self._queue:
            return
        items = list(self._queue)
        self._queue.clear()
        self._notify(self._observer.queue_depth, 0)
        for item in items:
            self._reject(
                item,
                ShuttingDownError(f"batcher {self._name!r} is shutting down: {why}"),
                "shutting_down",
            )

    def _notify(self, hook: Callable[..., object], *args: object) -> None:
        """Call an observer hook; a metrics bug must never fail or stall requests."""
        try:
            hook(*args)
        except Exception:
            name = getattr(hook, "__name__", repr(hook))
            logger.exception("batcher %r: observer hook %s failed", self._name, name)
