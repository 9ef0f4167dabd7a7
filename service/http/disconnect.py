"""Noticing clients that go away: their queued work is dropped instead of computed.

Neither uvicorn nor Starlette cancels a request handler when its client disconnects: the handler
would keep its images queued, the batcher would compute them, and the answer would be thrown
away. :func:`unless_disconnected` awaits the handler's work and cancels it when the client goes
away first, which frees its queue slots at once (the batcher skips cancelled items).

Two ways to notice, the cheap one first:

* **A callback from the connection** (the service's own server): the guarded HTTP protocol
  (:mod:`service.http.guard`) puts a :class:`ConnectionWatch` into every request's ASGI scope
  (:data:`SCOPE_KEY`) and fires it from ``connection_lost``. The work is awaited inline, in the
  handler's own task, and the callback cancels that task: no task, no ``asyncio.wait`` and no
  extra loop turn per request.
* **A watcher task** (any other ASGI server, e.g. the test client): the work runs in a task
  raced against a task that waits for the ``http.disconnect`` message on ``receive()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

from service.http.errors import ClientError

T = TypeVar("T")

#: nginx's "client closed request": never seen by the client, but counted in
#: ``imgcls_requests_total{code="499"}`` so that every request has exactly one outcome.
CLIENT_CLOSED_REQUEST = 499

#: ASGI scope key of the request's :class:`ConnectionWatch` (set by the guarded protocol).
SCOPE_KEY = "imgcls.connection_watch"

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def client_gone(what: str) -> ClientError:
    """The answer recorded for a request whose client disconnected ``what`` (e.g. "queued")."""
    return ClientError(
        CLIENT_CLOSED_REQUEST,
        f"the client closed the connection {what}; nothing was computed for it",
        reason="client_disconnected",
    )


class ConnectionWatch:
    """One per connection: callbacks to run once when the connection is lost.

    The protocol calls :meth:`connection_lost` (once; later calls do nothing); a callback added
    after that is not run: check :attr:`lost` first.
    """

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._callbacks: list[Callable[[], object]] = []

    def add(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def discard(self, callback: Callable[[], object]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def connection_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def _watch_of(receive: Receive, scope: MutableMapping[str, Any] | None) -> ConnectionWatch | None:
    """The request's watch: from ``scope``, else from the scope of uvicorn's request cycle that
    ``receive`` is a method of (what Starlette's ``request.receive`` is, unless a middleware
    wrapped it); None when the server puts none there."""
    if scope is None:
        scope = getattr(getattr(receive, "__self__", None), "scope", None)
    watch = scope.get(SCOPE_KEY) if isinstance(scope, MutableMapping) else None
    return watch if isinstance(watch, ConnectionWatch) else None


def _close(work: Awaitable[Any]) -> None:
    if isinstance(work, Coroutine):
        work.close()  # never started: no "never awaited" warning
    elif isinstance(work, asyncio.Future):
        work.cancel()


async def unless_disconnected(
    receive: Receive, work: Awaitable[T], *, scope: MutableMapping[str, Any] | None = None
) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise a 499 ClientError.

    Call only after the request body has been read to the end: ``receive`` then yields nothing
    but ``http.disconnect`` (when the client goes away or after the response is sent).

    Args:
        receive: The request's ASGI ``receive``.
        work: What to await (a coroutine or a future); cancelled when the client leaves, and
            its own cleanup (dequeuing its images) has run when the 499 is raised.
        scope: The request's ASGI scope, where the service's protocol puts the connection's
            :class:`ConnectionWatch`; found through ``receive`` when not given.
    """
    watch = _watch_of(receive, scope)
    if watch is None:
        return await _race_watcher_task(receive, work)
    if watch.lost:
        _close(work)
        raise client_gone("before its images were queued")
    task = asyncio.current_task()
    assert task is not None
    left = False

    def cancel_work() -> None:
        nonlocal left
        left = True
        task.cancel()

    watch.add(cancel_work)
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled by someone else (the server's shutdown deadline): not ours
        if hasattr(task, "uncancel"):  # Python >= 3.11: this cancellation is handled here
            task.uncancel()
        raise client_gone("while its images were queued or computed") from None
    finally:
        watch.discard(cancel_work)


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race_watcher_task(receive: Receive, work: Awaitable[T]) -> T:
    """The fallback: ``work`` in a task raced against a task reading ``receive()``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this handler itself is cancelled (server shutdown deadline).
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # let the work's own cleanup (dequeuing its images) run first
    raise client_gone("while its images were queued or computed")
