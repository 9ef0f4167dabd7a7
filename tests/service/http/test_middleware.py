"""Tests for service.http.middleware's request ids and access log: the client's ``X-Request-Id``
kept when sane and replaced when not, the id on every answer (refusals included) and in the
route's scope, and one access-log line per request that carries the id and cannot be forged
through the path. Runs a small Starlette app in process (no server)."""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.http.middleware import (
    SCOPE_REQUEST_ID,
    RequestMetricsMiddleware,
    request_id_of,
)
from service.metrics import ServiceMetrics

GENERATED = re.compile(r"[0-9a-f]{32}")


async def echo(request: Request) -> JSONResponse:
    """Answers with the id the route sees (what a prediction's id is built from)."""
    return JSONResponse({"id": request_id_of(request.scope)})


async def refuse(request: Request) -> JSONResponse:
    raise HTTPException(422, "label is missing")


def app(access_log: bool = False) -> Starlette:
    return Starlette(
        routes=[Route("/echo/{rest:path}", echo), Route("/refuse", refuse, methods=["POST"])],
        middleware=[
            Middleware(RequestMetricsMiddleware, metrics=ServiceMetrics(8), access_log=access_log)
        ],
    )


def call(
    method: str,
    path: str,
    headers: dict[str, str] | dict[bytes, bytes] | None = None,
    *,
    access_log: bool = False,
) -> httpx.Response:
    """``method path`` on a fresh app, in process (httpx's ASGI transport)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app(access_log), client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(send())


@pytest.mark.parametrize(
    "sent", ["abc", "0f8c2e1a-5b7d-4c1e-9a3b-2f6d8e9c1a4b", "trace_42", "x" * 64]
)
def test_a_sane_client_id_is_kept_and_seen_by_the_route(sent: str) -> None:
    answer = call("GET", "/echo/x", {"X-Request-Id": sent})
    assert answer.headers["x-request-id"] == sent
    assert answer.json() == {"id": sent}


@pytest.mark.parametrize(
    "sent",
    [b"x" * 65, b"abc.1", b"a b", b" abc", b"", "zif\u00e9r".encode(), b"\xff\xfe", b"../x"],
    ids=["too long", "dot", "space", "leading space", "empty", "utf-8", "bytes", "path"],
)
def test_any_other_client_id_is_replaced_by_a_generated_one(sent: bytes) -> None:
    answer = call("GET", "/echo/x", {b"X-Request-Id": sent})
    generated = answer.headers["x-request-id"]
    assert GENERATED.fullmatch(generated)
    assert answer.json() == {"id": generated}


def test_without_a_client_id_every_request_gets_its_own() -> None:
    ids = [call("GET", "/echo/x").headers["x-request-id"] for _ in range(20)]
    assert all(GENERATED.fullmatch(one) for one in ids)
    assert len(set(ids)) == 20


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/echo/x", 200),
        ("POST", "/refuse", 422),
        ("GET", "/refuse", 405),
        ("GET", "/no", 404),
    ],
)
def test_every_answer_carries_exactly_one_id(method: str, path: str, status: int) -> None:
    answer = call(method, path, {"X-Request-Id": "mine"})
    assert answer.status_code == status
    assert answer.headers.get_list("x-request-id") == ["mine"]


def test_request_id_of_a_scope_the_middleware_did_not_see_is_made_once() -> None:
    scope: dict[str, object] = {}
    first = request_id_of(scope)
    assert GENERATED.fullmatch(first)
    assert request_id_of(scope) == first == scope[SCOPE_REQUEST_ID]


# --- the access log ----------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "imgcls.access"]


def test_one_access_line_per_request_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.access"):
        call("GET", "/echo/x", {"X-Request-Id": "req-1"}, access_log=True)
        call("POST", "/refuse", {"X-Request-Id": "req-2"}, access_log=True)
    lines = access_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith('10.1.2.3:5555 "GET /echo/x" 200 ') and lines[0].endswith(
        " id=req-1"
    )
    assert '"POST /refuse" 422 ' in lines[1] and lines[1].endswith(" id=req-2")


def test_control_characters_in_the_path_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.access"):
        answer = call(
            "GET",
            '/echo/a%0A10.0.0.1 "GET /admin" 200 id=forged%0D%1B[31m%C3%A9',
            {"X-Request-Id": "req-3"},
            access_log=True,
        )
    assert answer.headers["x-request-id"] == "req-3"
    (line,) = access_lines(caplog)
    assert line.isprintable() and line.isascii()
    assert "/echo/a\\n10.0.0.1" in line and "\\r\\x1b[31m\\xe9" in line
    assert line.endswith(" id=req-3")


def test_a_huge_path_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.access"):
        call("GET", "/echo/" + "a" * 5000, access_log=True)
    (line,) = access_lines(caplog)
    assert len(line) < 400


def test_no_access_line_when_the_log_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="imgcls.access"):
        call("GET", "/echo/x", access_log=False)
    assert access_lines(caplog) == []
