"""Talking to a live server the way hostile or broken clients do: raw sockets, hand-made
HTTP heads and multipart bodies that well-behaved client libraries refuse to send."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass

from tests.helpers.servers import Server, address

#: The multipart boundary of :func:`multipart` (the hostile body tests).
BOUNDARY = "hostile-boundary-7d41"


@dataclass
class RawResponse:
    status: int | None  # None: the connection closed without a status line
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.body)
        return loaded


def parse_response(data: bytes, elapsed_s: float) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        return RawResponse(None, {}, data, elapsed_s)
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        body = body[: int(length)]
    return RawResponse(status, headers, body, elapsed_s)


def raw_request(
    server: Server,
    parts: list[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = 15.0,
) -> RawResponse:
    """Send ``parts`` over one fresh connection (``pause_s`` between them), then read until the
    server closes the connection or ``timeout_s`` passes; parse the first response."""
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=timeout_s) as sock:
        try:
            for index, part in enumerate(parts):
                # Stop sending once the server has answered: writing on after it closed would
                # draw a reset that can discard its answer before we read it.
                wait = pause_s if index else 0.0
                if select.select([sock], [], [], wait)[0]:
                    break
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early: read what it said
        data = b""
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            parsed = parse_response(data, 0)
            length = parsed.headers.get("content-length")
            if parsed.status is not None and length is not None and len(parsed.body) >= int(length):
                break
    return parse_response(data, time.monotonic() - started)


def http_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def part(name: str, data: bytes, filename: str | None = "d.png", **headers: str) -> bytes:
    """One multipart part (its headers and data, without the boundary line)."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {disposition}", "Content-Type: image/png"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def multipart(
    parts: list[bytes], boundary: str = BOUNDARY, preamble: bytes = b"", epilogue: bytes = b""
) -> bytes:
    """A multipart body of ``parts`` (see :func:`part`), closed by the final boundary."""
    dash = b"--" + boundary.encode()
    body = preamble
    for item in parts:
        body += dash + b"\r\n" + item + b"\r\n"
    return body + dash + b"--\r\n" + epilogue
