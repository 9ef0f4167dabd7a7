"""Tests for service.serving.bounded: blocking jobs (explanations, feedback file moves) off the
event loop with bounded admission: a fixed number run, a fixed number wait, the rest are refused
at once, and a cancelled request keeps its slot until its thread is done."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from service.serving.bounded import BoundedRunner, RunnerBusyError


def blocking_job(gate: threading.Event, value: int) -> int:
    assert gate.wait(10), "the test never opened the gate"
    return value


async def eventually(condition: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def test_one_runs_the_wait_list_waits_and_the_rest_are_refused_at_once() -> None:
    async def scenario() -> None:
        runner = BoundedRunner(max_waiting=1, concurrency=1)
        gate = threading.Event()
        running = asyncio.create_task(runner.run(blocking_job, gate, 1, wait_timeout_s=5))
        waiting = asyncio.create_task(runner.run(blocking_job, gate, 2, wait_timeout_s=5))
        await eventually(lambda: runner.admitted == 2)
        with pytest.raises(RunnerBusyError):
            await runner.run(blocking_job, gate, 3, wait_timeout_s=5)
        gate.set()
        assert await running == 1 and await waiting == 2
        await eventually(lambda: runner.admitted == 0)
        assert await runner.run(blocking_job, gate, 4, wait_timeout_s=5) == 4
        runner.shutdown()

    asyncio.run(scenario())


def test_a_waiter_gives_up_after_its_timeout_and_frees_its_place() -> None:
    async def scenario() -> None:
        runner = BoundedRunner(max_waiting=1)
        gate = threading.Event()
        running = asyncio.create_task(runner.run(blocking_job, gate, 1, wait_timeout_s=5))
        await eventually(lambda: runner.admitted == 1)
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await runner.run(blocking_job, gate, 2, wait_timeout_s=0.05)
        assert runner.admitted == 1
        gate.set()
        assert await running == 1
        runner.shutdown()

    asyncio.run(scenario())


def test_a_cancelled_request_keeps_its_slot_until_the_thread_is_done() -> None:
    """A client that hangs up must not free the model for the next explanation early."""

    async def scenario() -> None:
        runner = BoundedRunner(max_waiting=0)
        gate = threading.Event()
        task = asyncio.create_task(runner.run(blocking_job, gate, 1, wait_timeout_s=5))
        await eventually(lambda: runner.admitted == 1)
        await asyncio.sleep(0.05)  # the job is on the thread now
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with pytest.raises(RunnerBusyError):
            await runner.run(blocking_job, gate, 2, wait_timeout_s=5)
        gate.set()
        await eventually(lambda: runner.admitted == 0)
        assert await runner.run(blocking_job, gate, 3, wait_timeout_s=5) == 3
        runner.shutdown()

    asyncio.run(scenario())


def test_runner_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        BoundedRunner(max_waiting=-1)
    with pytest.raises(ValueError):
        BoundedRunner(max_waiting=0, concurrency=0)


def test_with_two_slots_two_jobs_run_at_the_same_time() -> None:
    def meet(mine: threading.Event, theirs: threading.Event) -> bool:
        mine.set()
        return theirs.wait(5)  # True only if the other job runs meanwhile

    async def scenario() -> None:
        runner = BoundedRunner(max_waiting=0, concurrency=2)
        first, second = threading.Event(), threading.Event()
        both = await asyncio.gather(
            runner.run(meet, first, second, wait_timeout_s=5),
            runner.run(meet, second, first, wait_timeout_s=5),
        )
        assert both == [True, True]
        runner.shutdown()

    asyncio.run(scenario())
