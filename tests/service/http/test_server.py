"""Tests for service.http.server: the separate metrics port (only ``/metrics`` there, a JSON 404
naming it elsewhere)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from service.http.server import MetricsServer, start_metrics_server
from tests.helpers.servers import free_port


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
