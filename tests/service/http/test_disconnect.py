"""Tests for service.http.disconnect: the connection watch that tells a handler its client left
(the work is cancelled and the request answered 499), without a task per request."""

from __future__ import annotations

import asyncio

import pytest

from service.http.disconnect import (
    CLIENT_CLOSED_REQUEST,
    SCOPE_KEY,
    ConnectionWatch,
    unless_disconnected,
)
from service.http.errors import ClientError


async def _never_receive() -> dict[str, object]:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


def test_work_is_awaited_inline_and_its_result_returned() -> None:
    async def scenario() -> tuple[int, int]:
        watch = ConnectionWatch()
        tasks_before = len(asyncio.all_tasks())

        async def work() -> int:
            await asyncio.sleep(0)
            return len(asyncio.all_tasks())

        tasks_during = await unless_disconnected(_never_receive, work(), scope={SCOPE_KEY: watch})
        return tasks_during - tasks_before, len(watch._callbacks)

    extra_tasks, callbacks_left = asyncio.run(scenario())
    assert extra_tasks == 0  # no task per request
    assert callbacks_left == 0


def test_a_lost_connection_cancels_the_work_and_answers_499() -> None:
    async def scenario() -> tuple[ClientError, bool]:
        watch = ConnectionWatch()
        cleaned_up = False

        async def work() -> None:
            nonlocal cleaned_up
            try:
                await asyncio.sleep(3600)
            finally:
                cleaned_up = True  # e.g. the images leave the queue

        asyncio.get_running_loop().call_later(0.05, watch.connection_lost)
        with pytest.raises(ClientError) as caught:
            await unless_disconnected(_never_receive, work(), scope={SCOPE_KEY: watch})
        return caught.value, cleaned_up

    error, cleaned_up = asyncio.run(scenario())
    assert error.status_code == CLIENT_CLOSED_REQUEST
    assert error.reason == "client_disconnected"
    assert cleaned_up


def test_a_connection_lost_before_the_work_starts_answers_499_without_running_it() -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    async def scenario() -> None:
        watch = ConnectionWatch()
        watch.connection_lost()
        await unless_disconnected(_never_receive, work(), scope={SCOPE_KEY: watch})

    with pytest.raises(ClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.status_code == CLIENT_CLOSED_REQUEST
    assert not ran


def test_a_cancellation_from_elsewhere_is_not_taken_for_a_disconnect() -> None:
    async def scenario() -> None:
        watch = ConnectionWatch()
        handler = asyncio.ensure_future(
            unless_disconnected(_never_receive, asyncio.sleep(3600), scope={SCOPE_KEY: watch})
        )
        await asyncio.sleep(0.01)
        handler.cancel()  # e.g. the server's shutdown deadline
        with pytest.raises(asyncio.CancelledError):
            await handler
        assert watch._callbacks == []

    asyncio.run(scenario())


def test_without_a_watch_the_watcher_task_notices_the_disconnect() -> None:
    async def scenario() -> None:
        async def receive() -> dict[str, object]:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        await unless_disconnected(receive, asyncio.sleep(3600))

    with pytest.raises(ClientError) as caught:
        asyncio.run(scenario())
    assert caught.value.status_code == CLIENT_CLOSED_REQUEST
