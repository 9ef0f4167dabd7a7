"""A constant-answer HTTP/1.1 server (raw asyncio protocol on uvloop): the cheapest server this
machine can run, used to show that the load generator outpaces every server it measures.

It reads each request's headers and ``Content-Length`` body, and answers a fixed 200 JSON
body on the same keep-alive connection. Not a general HTTP server: no chunked bodies, no
pipelining guarantees. ``python -m bench.null_server`` (port from ``IMGCLS_PORT``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import cast

_BODY = b'{"model":{"name":"null","version":1},"results":[]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)


class NullProtocol(asyncio.Protocol):
    """Answer every complete request with :data:`RESPONSE`."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullProtocol, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> int:
    port = int(os.environ.get("IMGCLS_PORT", "8099"))
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        asyncio.run(serve(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
