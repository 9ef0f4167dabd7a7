"""The server's parts on their own: the separate metrics port, the quiet log of client
mistakes, and the connection watch that tells a handler its client left."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from service.disconnect import (
    CLIENT_CLOSED_REQUEST,
    SCOPE_KEY,
    ConnectionWatch,
    unless_disconnected,
)
from service.errors import ClientError
from service.http_guard import InvalidRequestLog
from service.server import MetricsServer, start_metrics_server
from tests.conftest import free_port


@pytest.fixture()
def metrics_port() -> Iterator[tuple[MetricsServer, str]]:
    registry = CollectorRegistry()
    Counter("imgcls_demo_total", "A counter to find in the scrape", registry=registry).inc(3)
    server = start_metrics_server("127.0.0.1", free_port(), registry)
    yield server, f"http://127.0.0.1:{server.port}"
    server.shutdown()


def test_the_metrics_port_serves_metrics_at_slash_metrics(
    metrics_port: tuple[MetricsServer, str],
) -> None:
    _, url = metrics_port
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "imgcls_demo_total 3.0" in response.text


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/predict", "/metrics/", "/x"])
def test_the_metrics_port_answers_404_elsewhere(
    metrics_port: tuple[MetricsServer, str], path: str
) -> None:
    _, url = metrics_port
    response = httpx.get(url + path, timeout=10)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "/metrics" in response.json()["detail"]
    assert "imgcls_demo_total" not in response.text


def test_the_metrics_port_stops(metrics_port: tuple[MetricsServer, str]) -> None:
    server, url = metrics_port
    server.shutdown()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/metrics", timeout=2)


def test_invalid_requests_are_counted_and_reported_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = InvalidRequestLog(interval_s=3600)
    with caplog.at_level(logging.DEBUG, logger="service.http_guard"):
        for _ in range(50):
            log.record("Invalid HTTP request received.")
    assert log.total == 50
    infos = [r for r in caplog.records if r.levelno >= logging.INFO]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(infos) == 1  # the first one; the next report waits for the interval
    assert "1 malformed HTTP request" in infos[0].getMessage()
    assert infos[0].levelno == logging.INFO  # never a WARNING: it is the client's mistake
    assert len(debugs) == 50


def test_the_next_report_counts_everything_since_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = InvalidRequestLog(interval_s=0.0)  # report every time: each line counts one
    with caplog.at_level(logging.INFO, logger="service.http_guard"):
        log.record("Invalid HTTP request received.")
        log.interval_s = 3600
        for _ in range(4):
            log.record("Invalid HTTP request received.")
        log.interval_s = 0.0
        log.record("Invalid HTTP request received.")
    counts = [r.getMessage().split()[0] for r in caplog.records]
    assert counts == ["1", "5"]


# --- the connection watch --------------------------------------------------------------------


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
