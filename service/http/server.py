"""How ``python -m service`` serves: uvicorn options, the config class, the metrics port.

The parts live in their own modules: the guarded HTTP protocol (:mod:`service.http.guard`:
header deadline and size limit, connection cap, quiet logging of malformed requests), the
draining server (:mod:`service.http.draining`: unready on SIGTERM, then finish what is in
flight) and the ASGI middleware (:mod:`service.http.middleware`).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import uvicorn

from service.http.guard import ConnectionLimits, GuardedHttpToolsProtocol
from service.settings import Settings

logger = logging.getLogger(__name__)

#: The one path the separate metrics port serves.
METRICS_PATH = "/metrics"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of the service's server stack, shared by ``python -m service`` and
    the benchmark's own-stack ceiling app so that both are measured on the same stack."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # imgcls_requests_total and the duration histogram cover it
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "http": GuardedHttpToolsProtocol,
        "limits": ConnectionLimits(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        ),
    }


class ServiceConfig(uvicorn.Config):
    """uvicorn's Config plus :class:`ConnectionLimits` (picklable, for worker processes)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits


# --------------------------------------------------------------------------- the metrics port

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def metrics_only(metrics_app: WSGIApp) -> WSGIApp:
    """A WSGI app that serves ``metrics_app`` at :data:`METRICS_PATH` and a JSON 404 that
    names that path everywhere else (a scrape of ``/healthz`` on the metrics port is a
    mistake worth telling)."""
    body = json.dumps(
        {"detail": f"not found: this port serves only {METRICS_PATH} (Prometheus text format)"}
    ).encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") == METRICS_PATH:
            return metrics_app(environ, start_response)
        start_response(
            "404 Not Found",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class MetricsServer:
    """The separate metrics port's HTTP server, running in a daemon thread."""

    def __init__(self, host: str, port: int, registry: Any) -> None:
        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6

        class Server(ThreadingWSGIServer):
            address_family = family

        self._server = make_server(
            host,
            port,
            metrics_only(make_wsgi_app(registry)),
            Server,
            handler_class=_QuietHandler,
        )
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-port", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(host: str, port: int, registry: Any) -> MetricsServer:
    """Serve ``registry`` in the Prometheus text format at ``http://host:port/metrics`` (every
    other path: 404), from a daemon thread; ``.shutdown()`` stops it."""
    server = MetricsServer(host, port, registry)
    logger.info("metrics on http://%s:%d%s", host, server.port, METRICS_PATH)
    return server
