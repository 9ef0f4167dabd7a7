"""A scan cannot flood the log: malformed requests (TLS on the plain-HTTP port, garbage) are
answered 400 and logged at DEBUG, with at most one INFO line per interval counting them."""

from __future__ import annotations

import time

import pytest

from tests.helpers.clients import raw_request
from tests.helpers.servers import Server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SCAN = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
    b"GET /\x00healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x00\x01\x02\x03 garbage\r\n\r\n",
]


def test_a_scan_of_malformed_requests_leaves_at_most_one_log_line(hostile_server: Server) -> None:
    before = len(hostile_server.log())
    statuses = [raw_request(hostile_server, [request]).status for request in SCAN * 10]
    assert statuses == [400] * len(SCAN) * 10
    time.sleep(0.5)  # let the log reach the file
    added = hostile_server.log()[before:]
    assert "Invalid HTTP request received" not in added, added[-2000:]
    assert added.count("malformed HTTP request(s)") <= 1, added[-2000:]
