"""Memory stays bounded under a long stream of hostile requests (VmRSS of the server process)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.helpers.clients import BOUNDARY, multipart, part
from tests.helpers.hostile import MAX_UPLOAD_BYTES
from tests.helpers.images import (
    REFUSED_BY_CONTENT,
    digit_png,
    gif_with_frames,
    png_declaring,
    png_with_text_bomb,
)
from tests.helpers.processes import rss_bytes
from tests.helpers.servers import Server, healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WARM_UP_REQUESTS = 400
MEASURED_REQUESTS = 3000
#: Allowed growth of the server's resident memory over the measured requests.
RSS_GROWTH_BOUND_BYTES = 48 * 1024 * 1024

Send = Callable[[httpx.Client], httpx.Response]


def _payloads() -> list[Send]:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    near_limit = (
        b"\x89PNG\r\n\x1a\n"
        + rng.integers(0, 256, MAX_UPLOAD_BYTES - 4096, dtype=np.uint8).tobytes()
    )
    many_parts = multipart([part("file", b"x")] * 2000)
    form = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    animation = gif_with_frames(500)
    bodies = [
        ("image/png", noise),
        ("image/png", near_limit),
        ("image/png", png_declaring(60_000, 60_000)),
        ("image/png", png_with_text_bomb()),
        ("image/gif", animation),
        ("image/png", digit_png(7)),
        *(("image/png", data) for data, _ in REFUSED_BY_CONTENT.values()),
    ]
    sends: list[Send] = [
        (
            lambda client, ct=ct, body=body: client.post(
                "/predict", content=body, headers={"Content-Type": ct}
            )
        )
        for ct, body in bodies
    ]
    sends += [
        lambda client: client.post("/predict", content=many_parts, headers=form),
        lambda client: client.post(
            "/predict", content=b"x" * 5000, headers={"Content-Type": "multipart/form-data"}
        ),
        lambda client: client.post(
            "/predict", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
        ),
        lambda client: client.post("/predict", params={"top_k": "9" * 400}, content=noise),
        lambda client: client.get("/static/../../etc/passwd"),
        lambda client: client.get("/models/999999/report/curves.png"),
    ]
    return sends


def _run(server: Server, count: int, sends: list[Send]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    schedule = list(itertools.islice(itertools.cycle(sends), count))

    def worker(chunk: list[Send]) -> Counter[int]:
        seen: Counter[int] = Counter()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for send in chunk:
                seen[send(client).status_code] += 1
        return seen

    with ThreadPoolExecutor(6) as pool:
        for seen in pool.map(worker, [schedule[i::6] for i in range(6)]):
            statuses.update(seen)
    return statuses


def test_rss_stays_bounded_over_thousands_of_hostile_requests(hostile_server: Server) -> None:
    pid = hostile_server.process.pid
    sends = _payloads()
    _run(hostile_server, WARM_UP_REQUESTS, sends)  # allocator arenas and caches settle first
    before = rss_bytes(pid)
    started = time.monotonic()
    statuses = _run(hostile_server, MEASURED_REQUESTS, sends)
    took = time.monotonic() - started
    after = rss_bytes(pid)
    growth = after - before
    print(
        f"{MEASURED_REQUESTS} hostile requests in {took:.1f} s: RSS {before / 2**20:.0f} MiB -> "
        f"{after / 2**20:.0f} MiB ({growth / 2**20:+.1f} MiB); statuses {dict(statuses)}"
    )
    assert sum(statuses.values()) == MEASURED_REQUESTS
    assert all(status < 500 for status in statuses), statuses
    assert growth < RSS_GROWTH_BOUND_BYTES, growth
    assert healthy(hostile_server)
