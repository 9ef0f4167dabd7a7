"""Noticing clients that go away: their queued work is dropped instead of computed.

Neither uvicorn nor Starlette cancels a request handler when its client disconnects: the handler
would keep its images queued, the batcher would compute them, and the answer would be thrown
away. :func:`unless_disconnected` races the handler's work against the ``http.disconnect``
message that uvicorn delivers on ``receive()`` once the body has been read, and cancels the
work when the client wins, which frees its queue slots at once (the batcher skips cancelled
items).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from service.errors import ClientError

T = TypeVar("T")

#: nginx's "client closed request": never seen by the client, but counted in
#: ``imgcls_requests_total{code="499"}`` so that every request has exactly one outcome.
CLIENT_CLOSED_REQUEST = 499

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def client_gone(what: str) -> ClientError:
    """The answer recorded for a request whose client disconnected ``what`` (e.g. "queued")."""
    return ClientError(
        CLIENT_CLOSED_REQUEST,
        f"the client closed the connection {what}; nothing was computed for it",
        reason="client_disconnected",
    )


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise a 499 ClientError.

    Call only after the request body has been read to the end: ``receive`` then yields nothing
    but ``http.disconnect`` (when the client goes away or after the response is sent).
    """
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
