"""Helpers for talking to a live server the way hostile or broken clients do."""

from __future__ import annotations

import functools
import io
import json
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.conftest import Server
from training.data import digit_images


@dataclass
class RawResponse:
    status: int | None  # None: the connection closed without a status line
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.body)
        return loaded


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    return digit_images()


def digit_png(index: int = 0) -> bytes:
    """A real handwritten digit (light ink on black, 28x28) as PNG bytes."""
    return png_bytes(Image.fromarray(_digits()[0][index]))


def digit_label(index: int = 0) -> str:
    return str(_digits()[1][index])


def noise_png(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)))


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` from /proc/<pid>/status (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def healthy(server: Server) -> bool:
    """The server still answers /healthz and classifies a digit."""
    if httpx.get(server.url + "/healthz", timeout=10).status_code != 200:
        return False
    response = httpx.post(
        server.url + "/predict",
        files={"file": ("d.png", digit_png(), "image/png")},
        timeout=30,
    )
    return response.status_code == 200
