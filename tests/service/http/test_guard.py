"""Tests for service.http.guard: the quiet log of client mistakes (malformed HTTP requests are
counted, and reported once per interval at INFO, never as warnings)."""

from __future__ import annotations

import logging

import pytest

from service.http.guard import InvalidRequestLog


def test_invalid_requests_are_counted_and_reported_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = InvalidRequestLog(interval_s=3600)
    with caplog.at_level(logging.DEBUG, logger="service.http.guard"):
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
    with caplog.at_level(logging.INFO, logger="service.http.guard"):
        log.record("Invalid HTTP request received.")
        log.interval_s = 3600
        for _ in range(4):
            log.record("Invalid HTTP request received.")
        log.interval_s = 0.0
        log.record("Invalid HTTP request received.")
    counts = [r.getMessage().split()[0] for r in caplog.records]
    assert counts == ["1", "5"]
