"""``bench.floor`` and its echo apps, without load: what the echo servers answer, and the table.

The measurement itself (``python -m bench.floor``, ~3 min) is not repeated here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from bench import echo_apps, floor


def asgi_call(method: str, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """Drive the raw ASGI echo with a body in ``chunks``; its status and body."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path}
    asyncio.run(echo_apps.asgi_echo(scope, receive, send))
    assert not messages, "the echo answered before reading the whole body"
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_asgi_echo_reads_the_whole_body_then_answers_a_v2_answer() -> None:
    status, body = asgi_call("POST", "/v2/models/digits/infer", [b"{", b"...", b"}"])
    assert status == 200
    answer = json.loads(body)
    assert answer["outputs"][0]["shape"] == [1, 10]
    assert asgi_call("GET", "/nowhere", [b""])[0] == 404


def test_the_fastapi_echo_answers_the_same_on_the_v2_route() -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=echo_apps.fastapi_echo())
        async with httpx.AsyncClient(transport=transport, base_url="http://echo") as client:
            return await client.post("/v2/models/digits/infer", content=b"\x00" * 2352)

    response = asyncio.run(post())
    assert response.status_code == 200
    assert response.content == echo_apps.ANSWER


def test_the_table_gives_medians_and_the_cost_over_the_bare_echo() -> None:
    points = [
        floor.Point(server, "binary", repeat, rps, cpu, 1.0, 2.0, 0)
        for repeat, (server, rps, cpu) in enumerate(
            [
                ("echo-asgi", 30000.0, 30.0),
                ("echo-asgi", 32000.0, 34.0),
                ("echo-asgi", 31000.0, 32.0),
                ("service", 2000.0, 600.0),
                ("service", 2200.0, 640.0),
                ("service", 1800.0, 700.0),
            ]
        )
    ]
    table = floor.table(points, repeats=3)
    assert "| binary | echo-asgi | 31,000 | 32 | 1.0 / 2.0 | - |" in table
    assert "| binary | service | 2,000 | 640 | 1.0 / 2.0 | +608 |" in table
    assert "echo-fastapi" not in table  # no points, no row
