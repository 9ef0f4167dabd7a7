"""Blocking work off the event loop, with bounded admission: a fixed number of threads, a
fixed number of waiting jobs, and a refusal beyond them (the caller answers 503), so a flood of
requests can neither grow a queue without bound nor block other requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class RunnerBusyError(Exception):
    """Every slot is taken and the wait list is full: refuse (503), do not queue."""


class BoundedRunner:
    """Runs blocking jobs (explanations, feedback file moves) on dedicated threads with bounded
    admission.

    At most ``concurrency`` jobs run and ``max_waiting`` wait for a slot; a job beyond that is
    refused at once with :class:`RunnerBusyError`. A slot is freed when its job's thread work
    actually ends, even if the request that started it was cancelled (client gone), so cancelled
    requests cannot pile up work behind the limiter's back.
    """

    def __init__(
        self, *, max_waiting: int, concurrency: int = 1, thread_name: str = "bounded"
    ) -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=thread_name)
        self._slots: asyncio.Semaphore | None = None
        self._admitted = 0  # running + waiting

    @property
    def admitted(self) -> int:
        """Jobs running or waiting right now."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: Any, wait_timeout_s: float) -> T:
        """Run ``fn(*args)`` on the runner's thread and return its result.

        Raises:
            RunnerBusyError: ``concurrency + max_waiting`` jobs are already admitted.
            TimeoutError: no slot freed up within ``wait_timeout_s`` seconds.
        """
        if self._admitted >= self.concurrency + self.max_waiting:
            raise RunnerBusyError
        if self._slots is None:  # created on the serving loop, on first use
            self._slots = asyncio.Semaphore(self.concurrency)
        slots = self._slots
        self._admitted += 1
        try:
            await asyncio.wait_for(slots.acquire(), wait_timeout_s)
        except BaseException:
            self._admitted -= 1
            raise

        def release(_: object) -> None:
            self._admitted -= 1
            slots.release()

        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        future.add_done_callback(release)
        # shield: a cancelled request must not cancel the future before the thread is done,
        # or the slot would be released while the thread is still busy.
        return await asyncio.shield(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
