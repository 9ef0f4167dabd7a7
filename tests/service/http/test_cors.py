"""Tests for service.http.cors: refused CORS preflights answer JSON ``{"detail": ...}`` that says
what to fix; allowed ones and simple requests behave exactly as Starlette's CORSMiddleware."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.http.cors import JSONCORSMiddleware

ORIGIN = "https://digits.example"
OTHER = "https://evil.example"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(
    routes=[Route("/predict", hello, methods=["GET", "POST"])],
    middleware=[
        Middleware(
            JSONCORSMiddleware,
            allow_origins=[ORIGIN, "https://second.example"],
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    ],
)


def request(method: str, headers: dict[str, str]) -> httpx.Response:
    """``method /predict`` on APP in process (httpx's ASGI transport)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, "/predict", headers=headers)

    return asyncio.run(send())


def test_disallowed_origin_gets_json_naming_the_allowed_origins_and_setting() -> None:
    response = request("OPTIONS", {"Origin": OTHER, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert "access-control-allow-origin" not in response.headers
    assert response.json() == {
        "detail": "CORS preflight refused: origin 'https://evil.example' is not allowed to call "
        "this API cross-origin; allowed origins: https://digits.example, https://second.example "
        "(add it to IMGCLS_CORS_ORIGINS, comma-separated)"
    }


def test_disallowed_method_and_header_are_each_named() -> None:
    response = request(
        "OPTIONS",
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "x-api-key, x-debug",
        },
    )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "origin" not in detail  # the origin was fine
    assert "method 'DELETE' is not allowed; allowed methods: GET, POST" in detail
    assert "request header(s) 'x-debug' not allowed" in detail
    assert "x-api-key" in detail.split("allowed headers:")[1]  # listed as allowed, not refused
    # Starlette's own CORS headers are kept: the browser still learns the policy.
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET, POST"


def test_allowed_preflight_and_simple_requests_are_unchanged() -> None:
    allowed = request(
        "OPTIONS",
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert allowed.status_code == 200 and allowed.text == "OK"
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    simple = request("GET", {"Origin": ORIGIN})
    assert simple.text == "hello"
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    foreign = request("GET", {"Origin": OTHER})
    assert foreign.text == "hello"  # the browser, not the server, enforces CORS here
    assert "access-control-allow-origin" not in foreign.headers
