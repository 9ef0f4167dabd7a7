"""ASGI middleware of the service's stack (pure ASGI: no per-request task or body copy)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from service.metrics import ServiceMetrics

#: ASGI scope key where a route records the version that served the request, for the request
#: metrics' ``model`` and ``version`` labels (set only once the model is known: bounded).
SCOPE_MODEL_KEY = "imgcls.model"


class CloseConnectionsWhileDraining:
    """ASGI middleware: once the service is shutting down, every response says
    ``Connection: close``, so clients leave their kept-alive connections before the listening
    socket closes, and their next request finds another replica."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                app = scope.get("app")
                state = getattr(getattr(app, "state", None), "service", None)
                if getattr(state, "shutting_down", False):
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != b"connection"
                    ]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


#: Route label for requests no route matched (scanners cannot blow up label cardinality).
UNMATCHED_ROUTE = "other"

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RequestMetricsMiddleware:
    """Counts every answer by route template, status code, model and version, and times it (a
    pure ASGI middleware: cheaper than BaseHTTPMiddleware on the hot path).

    The route label is the matched route's template (``/v2/models/{name}/infer``), never the raw
    path; ``model`` and ``version`` are set by the route once it knows the version that serves
    the request (``service.dataplane.record_model``), empty otherwise.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            matched = scope.get("route")
            route = getattr(matched, "path", None) or UNMATCHED_ROUTE
            model, version = scope.get(SCOPE_MODEL_KEY) or ("", "")
            self.metrics.request_finished(
                route, str(status), model, version, time.perf_counter() - started
            )
