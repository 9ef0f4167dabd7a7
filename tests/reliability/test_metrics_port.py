"""``IMGCLS_METRICS_PORT``: the service's metrics on a port of their own, and nothing else there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_the_metrics_port_serves_only_metrics(
    trained_repo: Path, server_factory: Callable[..., Any]
) -> None:
    port = free_port()
    server = server_factory(trained_repo, metrics_port=str(port))
    metrics_url = f"http://127.0.0.1:{port}"
    scrape = httpx.get(metrics_url + "/metrics", timeout=10)
    assert scrape.status_code == 200
    assert "imgcls_requests_total" in scrape.text
    for path in ("/", "/healthz", "/readyz", "/predict", "/models"):
        response = httpx.get(metrics_url + path, timeout=10)
        assert response.status_code == 404, path
        assert "/metrics" in response.json()["detail"]
    # The API port still answers its own routes.
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
