"""ASGI middleware of the service's stack (pure ASGI: no per-request task or body copy)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.feedback.ids import new_request_id, sane_request_id
from service.metrics import ServiceMetrics

#: One line per request when IMGCLS_ACCESS_LOG is on (uvicorn's own access log stays off).
access_logger = logging.getLogger("imgcls.access")

#: ASGI scope key where a route records the version that served the request, for the request
#: metrics' ``model`` and ``version`` labels (set only once the model is known: bounded).
SCOPE_MODEL_KEY = "imgcls.model"
#: ASGI scope key of the request's id (``X-Request-Id``), set before any route runs.
SCOPE_REQUEST_ID = "imgcls.request_id"
_REQUEST_ID_HEADER = b"x-request-id"


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The request's id: the one the middleware set, else a new one (kept in the scope)."""
    request_id = scope.get(SCOPE_REQUEST_ID)
    if request_id is None:
        request_id = scope[SCOPE_REQUEST_ID] = new_request_id()
    return str(request_id)


def _client_request_id(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER:
            return sane_request_id(value.decode("latin-1"))
    return None


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
    """Gives every request its id, counts every answer by route template, status code, model
    and version, times it, and (``access_log``) logs it: a pure ASGI middleware, cheaper than
    BaseHTTPMiddleware on the hot path.

    The id is the client's ``X-Request-Id`` when sane (:mod:`service.feedback.ids`), else a new
    one; every answer carries it back in ``X-Request-Id``. The route label is the matched
    route's template (``/v2/models/{name}/infer``), never the raw path; ``model`` and
    ``version`` are set by the route once it knows the version that serves the request
    (``service.dataplane.record_model``), empty otherwise.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = _client_request_id(scope) or new_request_id()
        scope[SCOPE_REQUEST_ID] = request_id
        id_header = (_REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            matched = scope.get("route")
            route = getattr(matched, "path", None) or UNMATCHED_ROUTE
            model, version = scope.get(SCOPE_MODEL_KEY) or ("", "")
            duration_s = time.perf_counter() - started
            self.metrics.request_finished(route, str(status), model, version, duration_s)
            if self.access_log:
                _log_access(scope, status, duration_s, request_id)


def _log_access(scope: dict[str, Any], status: int, duration_s: float, request_id: str) -> None:
    client = scope.get("client")
    access_logger.info(
        '%s "%s %s" %d %.1f ms id=%s',
        f"{client[0]}:{client[1]}" if client else "-",
        scope.get("method", "-"),
        # Escaped: a path with a newline or a quote cannot forge a log line or a field.
        str(scope.get("path", "-"))[:200]
        .encode("unicode_escape")
        .decode("ascii")
        .replace('"', '\\"'),
        status,
        duration_s * 1000,
        request_id,
    )
