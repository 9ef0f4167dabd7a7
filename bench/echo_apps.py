"""Echo servers for the V2 route: the floor of a Python HTTP stack, with no model and no checks.

What a Python server cannot go below on this machine for one V2 infer request: uvicorn with
uvloop and httptools (the service's server), access log off, one process, and an app that reads
the whole body and answers a constant V2 answer of the size the service's is. Imports nothing
from ``service/``.

* ``BENCH_ECHO_APP=asgi``: a raw ASGI callable (no framework at all);
* ``BENCH_ECHO_APP=fastapi``: FastAPI with one ``POST /v2/models/{name}/infer`` route reading
  ``await request.body()`` (what a user writing a V2 endpoint by hand would start from).

``IMGCLS_HOST``/``IMGCLS_PORT``: where to listen (as the other bench servers).
``python -m bench.echo_apps``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

APP_ENV = "BENCH_ECHO_APP"
APPS = ("asgi", "fastapi")
#: A V2 infer answer of one image's ten probabilities, as JSON (about the service's size).
ANSWER = json.dumps(
    {
        "model_name": "digits",
        "model_version": "1",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}
        ],
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi_echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Read the body to its end, answer :data:`ANSWER`: 200 to a POST or to ``/healthz``
    (the bench's ready check), 404 otherwise."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    ok = scope["method"] == "POST" or scope["path"] == "/healthz"
    await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def fastapi_echo() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(ANSWER, media_type="application/json")

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    which = os.environ.get(APP_ENV, "asgi")
    if which not in APPS:
        raise SystemExit(f"{APP_ENV} must be one of {APPS}, got {which!r}")
    app = asgi_echo if which == "asgi" else fastapi_echo()
    uvicorn.run(
        app,
        host=os.environ.get("IMGCLS_HOST", "127.0.0.1"),
        port=int(os.environ.get("IMGCLS_PORT", "8000")),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
