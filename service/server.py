"""How ``python -m service`` serves: uvicorn, hardened against slow clients, drained on SIGTERM.

uvicorn's defaults trust the client more than an Internet-facing server can:

* it waits forever for a request's headers (a connection that sends nothing, or one byte a
  minute, is held open for good), and httptools buffers a header of any size (hundreds of MB
  from one client). :class:`GuardedHttpToolsProtocol` answers 408 when the request line and
  headers have not arrived within ``header_timeout_s``, 431 beyond ``max_header_bytes``, 503
  (with ``Retry-After``) to connections beyond ``max_connections``, and JSON 400s that say what
  was malformed. Bodies are bounded by the routes (``max_upload_bytes``, ``body_timeout_s``).
* on SIGTERM it closes its listening socket at once. :class:`DrainingServer` first marks the
  service not ready (``/readyz`` and new ``/predict`` requests: 503), waits
  ``shutdown_delay_s`` so load balancers notice, then stops accepting and lets every request in
  flight finish; just before ``shutdown_grace_s`` runs out, whatever is still queued is answered
  503 so that the process exits in time with nothing left unanswered. Exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits enforced before a request reaches the app.

    Attributes:
        header_timeout_s: Seconds from connection (or from the first byte of the next request on
            a kept-alive connection) until the request line and headers must be complete.
        max_header_bytes: Most bytes of request line and headers (about one socket read more
            may be buffered before the check).
        max_connections: Most open connections of this process; a new one beyond it is answered
            503 and closed.
        retry_after_s: ``Retry-After`` on that 503.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    retry_after_s: int = 1


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of the service's server stack, shared by ``python -m service`` and
    the benchmark's HTTP-ceiling app so that both are measured on the same stack."""
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


def _raw_response(
    status: int, detail: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    lines = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n",
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in extra_headers]
    return b"".join([*lines, b"\r\n", body])


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request that was already refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit and a connection
    cap (see :class:`ConnectionLimits`); everything else is uvicorn's."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits = getattr(config, "limits", None)  # a plain uvicorn.Config gets the defaults
        self.limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line and headers (or waiting for them)
        self._head_bytes = 0

    # --- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                f"the server has {self.limits.max_connections} open connections, its limit; "
                "retry after the Retry-After delay",
                ((b"retry-after", str(self.limits.retry_after_s).encode()),),
            )
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still incomplete after this many bytes: httptools would buffer it without end.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse_oversized_head()

    def send_400_response(self, msg: str) -> None:
        self._refuse(
            400,
            "malformed HTTP/1.1 request: check the request line, header syntax, "
            "Content-Length (one non-negative integer) and chunked encoding",
        )

    # --- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._head_timer is None:  # the first request's timer runs from connection_made
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_oversized_head()
            raise _HeadRefused  # stops the parser: nothing of this request reaches the app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's head
        self._head_bytes = 0

    # --- helpers -----------------------------------------------------------------------------
    def _refuse_oversized_head(self) -> None:
        self._refuse(
            431,
            f"the request line and headers exceed {self.limits.max_header_bytes} bytes; "
            "send fewer or shorter headers",
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self._refuse(
            408,
            f"the request line and headers did not arrive within "
            f"{self.limits.header_timeout_s:g} s",
        )

    def _refuse(
        self, status: int, detail: str, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Answer ``status`` with a JSON detail and close the connection.

        A request whose body was still arriving can never complete: the app is told the client
        left (its answer is dropped) and this one is sent instead. A request whose response is
        still being computed (pipelining) gets that response first; the connection closes after.
        """
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not cycle.more_body:
                cycle.keep_alive = False  # uvicorn closes once this response is sent
                self.flow.pause_reading()
                return
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(_raw_response(status, detail, extra_headers))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT drains instead of dropping (see module docstring).

    Args:
        config: The uvicorn config.
        app: The FastAPI app; its lifespan puts the :class:`ServiceState` at
            ``app.state.service``.
        shutdown_delay_s: Seconds between the signal and closing the listening socket, while
            ``/readyz`` already answers 503.
        shutdown_grace_s: Seconds from the signal until the process must have answered
            everything and begun to exit.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        app: Any,
        shutdown_delay_s: float,
        shutdown_grace_s: float,
    ) -> None:
        super().__init__(config)
        self._app = app
        self._delay_s = shutdown_delay_s
        self._grace_s = shutdown_grace_s
        self._signalled_at: float | None = None
        self._skip_delay = False
        self._announced = False

    def _state(self) -> ServiceState | None:
        state = getattr(getattr(self._app, "state", None), "service", None)
        return state if isinstance(state, ServiceState) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: set flags only (no locks, no logging); on_tick acts on them.
        # Unlike uvicorn's, it does not re-raise the signal at exit: a drained stop exits 0.
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()
            state = self._state()
            if state is not None:
                state.shutting_down = True  # /readyz and new /predict: 503 from now on
            return
        self._skip_delay = True  # a second signal: stop waiting for load balancers
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # Ctrl-C twice: stop waiting for requests, as uvicorn does

    async def on_tick(self, counter: int) -> bool:
        if self._signalled_at is not None and not self.should_exit:
            self._drain_step(self._signalled_at)
        return await super().on_tick(counter)

    def _drain_step(self, signalled_at: float) -> None:
        state = self._state()
        if not self._announced:
            self._announced = True
            if state is not None:
                state.shutting_down = True
                state.metrics.model_ready.set(0)
            logger.info(
                "shutdown requested: not ready now, intake stops in %g s, everything is "
                "answered within %g s",
                self._delay_s,
                self._grace_s,
            )
        elapsed = time.monotonic() - signalled_at
        if elapsed >= self._delay_s or self._skip_delay:
            remaining = max(0.1, self._grace_s - elapsed)
            # uvicorn waits this long for requests in flight, then cancels them.
            self.config.timeout_graceful_shutdown = remaining  # type: ignore[assignment]
            self.should_exit = True

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        watchdog = asyncio.create_task(self._answer_leftovers_in_time(), name="drain-deadline")
        try:
            await super().shutdown(sockets)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _answer_leftovers_in_time(self) -> None:
        """Shortly before the grace period ends, answer what is still queued or computing with
        503 (``ShuttingDownError``), so that no request is cut off without an answer."""
        started = self._signalled_at if self._signalled_at is not None else time.monotonic()
        margin = min(2.0, self._grace_s / 4)
        await asyncio.sleep(max(0.0, started + self._grace_s - margin - time.monotonic()))
        state = self._state()
        if state is None:
            return
        if state.batcher.queue_depth:
            logger.warning(
                "the grace period ends in %.2g s: answering %d queued image(s) with 503",
                margin,
                state.batcher.queue_depth,
            )
        # Idempotent; also cuts short the lifespan's own drain if a model call hangs.
        await state.batcher.stop(drain=False, timeout_s=margin / 2)


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


def start_metrics_server(host: str, port: int, registry: Any) -> Any:
    """Serve ``registry`` in the Prometheus text format on ``host:port`` (every path), from a
    daemon thread; returns the HTTP server (``.shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return server
