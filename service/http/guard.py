"""The guarded HTTP/1.1 protocol: uvicorn's httptools protocol, hardened against slow clients.

uvicorn's defaults trust the client more than an Internet-facing server can: it waits forever
for a request's headers (a connection that sends nothing, or one byte a minute, is held open for
good), and httptools buffers a header of any size (hundreds of MB from one client).
:class:`GuardedHttpToolsProtocol` answers 408 when the request line and headers have not arrived
within ``header_timeout_s``, 431 beyond ``max_header_bytes``, 503 (with ``Retry-After``) to
connections beyond ``max_connections``, and JSON 400s that say what was malformed. Bodies are
bounded by the routes (``max_upload_bytes``, ``body_timeout_s``).

A malformed request (a port scan, TLS spoken to a plain-HTTP port) is the client's mistake and
is already answered 400: uvicorn's ``WARNING: Invalid HTTP request received.`` for each one is
logged at DEBUG here, with one INFO line per :data:`INVALID_REQUEST_REPORT_INTERVAL_S` counting
them, so that a scan cannot flood the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.http.disconnect import SCOPE_KEY, ConnectionWatch
from service.http.errors import error_body

logger = logging.getLogger(__name__)

#: Seconds between the INFO lines that count invalid requests (logged at DEBUG one by one).
INVALID_REQUEST_REPORT_INTERVAL_S = 60.0
#: uvicorn's WARNING messages for what a client sent wrong (answered 400 / ignored already).
CLIENT_MISTAKE_MESSAGES = frozenset(
    {"Invalid HTTP request received.", "Unsupported upgrade request."}
)


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


class InvalidRequestLog:
    """Counts client mistakes that uvicorn would log as warnings: each one at DEBUG, and at
    most one INFO line per ``interval_s`` seconds with how many there were (thread-safe: worker
    processes each have their own)."""

    def __init__(self, interval_s: float = INVALID_REQUEST_REPORT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.total = 0
        self._unreported = 0
        self._last_report = time.monotonic() - interval_s  # the first one is reported at once
        self._lock = threading.Lock()

    def record(self, message: str) -> None:
        logger.debug("%s (a client mistake, answered 400)", message)
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self._unreported += 1
            if now - self._last_report < self.interval_s:
                return
            count, self._unreported, self._last_report = self._unreported, 0, now
        logger.info(
            "%d malformed HTTP request(s) (e.g. TLS or a scanner on this plain-HTTP port) "
            "answered 400 since the last report; at most one such line per %g s, each one "
            "at DEBUG",
            count,
            self.interval_s,
        )


#: The process's counter of invalid requests.
INVALID_REQUESTS = InvalidRequestLog()


class _QuietClientMistakes:
    """Stands in for uvicorn's protocol logger: client mistakes go to :data:`INVALID_REQUESTS`,
    everything else to the real logger unchanged."""

    def __init__(self, real: logging.Logger) -> None:
        self._real = real

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not args and msg in CLIENT_MISTAKE_MESSAGES:
            INVALID_REQUESTS.record(str(msg))
            return
        self._real.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _raw_response(
    status: int, answer: dict[str, str], extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    body = json.dumps(answer).encode()
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
    cap (see :class:`ConnectionLimits`), quiet about client mistakes, and a
    :class:`~service.http.disconnect.ConnectionWatch` in every request's scope; everything else is
    uvicorn's."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.logger = _QuietClientMistakes(self.logger)  # type: ignore[assignment]
        limits = getattr(config, "limits", None)  # a plain uvicorn.Config gets the defaults
        self.limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        # Tells handlers awaiting their work that the client left (service.http.disconnect).
        self._watch = ConnectionWatch()
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
        self._watch.connection_lost()

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
        self.scope[SCOPE_KEY] = self._watch  # type: ignore[literal-required]
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

    def _request_path(self) -> str:
        """The path of the request being read, as far as it arrived ("" before any): a refusal
        on a TF Serving or V2 route gets those protocols' ``{"error": ...}`` body."""
        url = getattr(self, "url", b"") or b""
        return bytes(url).split(b"?", 1)[0].decode("latin-1")

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
        answer = error_body(self._request_path(), detail)
        self.transport.write(_raw_response(status, answer, extra_headers))
        self.transport.close()
