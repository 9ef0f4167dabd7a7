"""API keys on /predict and /explain, /metrics on its own port, CORS only when configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.images import digit_png
from tests.helpers.servers import Server, free_port, metric_value, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEYS = ("first-key-0123456789", "second-key-abcdefghij")
ORIGIN = "https://digits.example"


@pytest.fixture(scope="module")
def locked_server(
    trained_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, int]]:
    metrics_port = free_port()
    server = start_server(
        trained_repo,
        tmp_path_factory.mktemp("locked-logs"),
        api_keys=",".join(KEYS),
        cors_origins=ORIGIN,
        metrics_port=str(metrics_port),
    )
    yield server, metrics_port
    assert stop_server(server) == 0


def upload() -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("d.png", digit_png(), "image/png")}


@pytest.mark.parametrize("route", ["/predict", "/explain"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": KEYS[0][:-1]},  # a prefix of a real key
        {"X-API-Key": KEYS[0] + "x"},
        {"Authorization": "Basic " + KEYS[0]},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "prefix", "longer", "basic-scheme", "empty-bearer"],
)
def test_requests_without_a_valid_key_are_a_401(
    locked_server: tuple[Server, int], route: str, headers: dict[str, str]
) -> None:
    server, _ = locked_server
    before = httpx.get(f"http://127.0.0.1:{locked_server[1]}/metrics", timeout=10).text
    response = httpx.post(server.url + route, files=upload(), headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert "X-API-Key" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    after = httpx.get(f"http://127.0.0.1:{locked_server[1]}/metrics", timeout=10).text
    reason = {"reason": "unauthorized"}
    assert (
        metric_value(after, "imgcls_rejected_requests_total", reason)
        - metric_value(before, "imgcls_rejected_requests_total", reason)
        == 1
    )


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": KEYS[0]}, {"X-API-Key": KEYS[1]}, {"Authorization": f"Bearer {KEYS[1]}"}],
    ids=["first", "second", "bearer"],
)
def test_a_valid_key_is_accepted(
    locked_server: tuple[Server, int], headers: dict[str, str]
) -> None:
    server, _ = locked_server
    response = httpx.post(server.url + "/predict", files=upload(), headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    explained = httpx.post(server.url + "/explain", files=upload(), headers=headers, timeout=60)
    assert explained.status_code in (200, 409), explained.text  # 409: no explanation endpoints


def test_probes_and_models_need_no_key(locked_server: tuple[Server, int]) -> None:
    server, _ = locked_server
    for path in ("/healthz", "/readyz", "/models"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path


def test_metrics_move_to_their_own_port(locked_server: tuple[Server, int]) -> None:
    server, metrics_port = locked_server
    public = httpx.get(server.url + "/metrics", timeout=10)
    assert public.status_code == 404
    assert "imgcls_" not in public.text
    private = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert private.status_code == 200
    assert private.headers["content-type"].startswith("text/plain")
    assert metric_value(private.text, "imgcls_model_info", {"name": "digits", "version": "1"}) == 1
    assert (
        metric_value(private.text, "imgcls_requests_total", {"route": "/metrics", "code": "404"})
        >= 1
    )


def test_cors_allows_only_the_configured_origin(locked_server: tuple[Server, int]) -> None:
    server, _ = locked_server
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    allowed = httpx.options(
        server.url + "/predict", headers={"Origin": ORIGIN, **preflight}, timeout=10
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        server.url + "/predict", headers={"Origin": "https://evil.example", **preflight}, timeout=10
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    # JSON like every other error, saying what is allowed and which setting allows more.
    assert other.headers["content-type"] == "application/json"
    detail = other.json()["detail"]
    assert "'https://evil.example' is not allowed" in detail
    assert f"allowed origins: {ORIGIN}" in detail and "IMGCLS_CORS_ORIGINS" in detail
    simple = httpx.get(
        server.url + "/healthz", headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert "access-control-allow-origin" not in simple.headers


def test_cors_is_off_and_metrics_public_by_default(server: Server) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    response = httpx.options(server.url + "/predict", headers=preflight, timeout=10)
    assert "access-control-allow-origin" not in response.headers
    response = httpx.get(server.url + "/healthz", headers={"Origin": ORIGIN}, timeout=10)
    assert "access-control-allow-origin" not in response.headers
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 200
    no_key = httpx.post(server.url + "/predict", files=upload(), timeout=30)
    assert no_key.status_code == 200  # no API_KEYS configured: open
