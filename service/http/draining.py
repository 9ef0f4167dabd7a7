"""The draining server: on SIGTERM, unready first, then finish everything in flight.

uvicorn closes its listening socket at once on SIGTERM. :class:`DrainingServer` first marks the
service not ready (``/readyz`` and new ``/predict`` requests: 503), waits ``shutdown_delay_s`` so
load balancers notice, then stops accepting and lets every request in flight finish; just before
``shutdown_grace_s`` runs out, whatever is still queued is answered 503 so that the process exits
in time with nothing left unanswered. Exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from types import FrameType
from typing import Any, Protocol, runtime_checkable

import uvicorn

logger = logging.getLogger(__name__)


@runtime_checkable
class Drainable(Protocol):
    """What a drain marks: the app's service state (``service.state.ServiceState``), found by
    shape so this plumbing needs nothing of the layers above it."""

    shutting_down: bool
    metrics: Any  # ServiceMetrics: its ``model_ready`` gauge goes to 0
    repository: Any  # ModelRepository: what is still queued at the end of the grace period


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT drains instead of dropping (see module docstring).

    Args:
        config: The uvicorn config.
        app: The FastAPI app; its lifespan puts the service state (a :class:`Drainable`) at
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

    def _state(self) -> Drainable | None:
        state = getattr(getattr(self._app, "state", None), "service", None)
        return state if isinstance(state, Drainable) else None

    def retire(self) -> None:
        """Stop taking connections and finish what is in flight, without turning unready:
        other workers on the same socket serve on (a signal handler: sets a flag only)."""
        self.should_exit = True

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
        batchers = [served.batcher for served in state.repository.models.values()]
        queued = sum(batcher.queue_depth for batcher in batchers)
        if queued:
            logger.warning(
                "the grace period ends in %.2g s: answering %d queued image(s) with 503",
                margin,
                queued,
            )
        # Idempotent; also cuts short the lifespan's own drain if a model call hangs.
        await asyncio.gather(
            *(batcher.stop(drain=False, timeout_s=margin / 2) for batcher in batchers),
            return_exceptions=True,
        )
