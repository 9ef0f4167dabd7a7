"""Broken and slow HTTP clients: a JSON 4xx that says what is wrong, never a hang, and everyone
else keeps being served.

Everything goes over raw sockets, because well-behaved client libraries refuse to send most of
these requests.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers.clients import RawResponse, http_head, parse_response, raw_request
from tests.helpers.hostile import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_UPLOAD_BYTES,
)
from tests.helpers.images import digit_png
from tests.helpers.servers import Server, address, healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: How much later than its configured timeout the server may act (2 shared CPU cores).
SLACK_S = 2.0


def predict_head(**headers: str) -> bytes:
    return http_head("POST", "/predict", {"Content-Type": "image/png", **headers})


def assert_says(response: RawResponse, status: int, *words: str) -> None:
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers.get("content-type", "").startswith("application/json")
    detail = str(response.json()["detail"])
    for word in words:
        assert word in detail, detail


@pytest.mark.parametrize(
    ("length_headers", "words"),
    [
        ({"Content-Length": "-5"}, ["Content-Length"]),
        ({"Content-Length": "abc"}, ["Content-Length"]),
        ({"Content-Length": "0x10"}, ["Content-Length"]),
        # Two different lengths: the request-smuggling classic.
        ({"Content-Length": "5", "content-length": "7"}, ["Content-Length"]),
        ({"Content-Length": "5", "Transfer-Encoding": "chunked"}, ["malformed"]),
    ],
)
def test_unparseable_content_length_is_a_json_400(
    hostile_server: Server, length_headers: dict[str, str], words: list[str]
) -> None:
    head = http_head("POST", "/predict", {"Content-Type": "image/png", **length_headers})
    response = raw_request(hostile_server, [head + b"hello"])
    assert_says(response, 400, *words)
    assert response.headers["connection"] == "close"


def test_content_length_larger_than_the_body_times_out_with_408(hostile_server: Server) -> None:
    response = raw_request(hostile_server, [predict_head(**{"Content-Length": "1000"}) + b"x" * 10])
    assert_says(response, 408, "body did not arrive")
    assert response.elapsed_s < BODY_TIMEOUT_S + SLACK_S
    assert response.headers["connection"] == "close"


def test_content_length_smaller_than_the_body_answers_the_declared_part(
    hostile_server: Server,
) -> None:
    png = digit_png()
    # The server reads 20 bytes as the image; the rest is not a valid next request.
    response = raw_request(hostile_server, [predict_head(**{"Content-Length": "20"}) + png])
    assert_says(response, 400, "truncated or corrupt")


def test_declared_length_over_the_limit_is_refused_without_reading(hostile_server: Server) -> None:
    head = predict_head(**{"Content-Length": str(MAX_UPLOAD_BYTES + 1)})
    response = raw_request(hostile_server, [head])  # no body sent at all
    assert_says(response, 413, "limit")
    assert response.elapsed_s < 2


def test_chunked_body_over_the_limit_is_a_413(hostile_server: Server) -> None:
    chunk = b"\x89PNG" + b"\x00" * (64 * 1024 - 4)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    count = MAX_UPLOAD_BYTES // len(chunk) + 2
    parts = [predict_head(**{"Transfer-Encoding": "chunked"})] + [framed] * count + [b"0\r\n\r\n"]
    response = raw_request(hostile_server, parts)
    assert_says(response, 413, "exceeds the limit")


def test_malformed_chunk_size_is_a_400(hostile_server: Server) -> None:
    parts = [predict_head(**{"Transfer-Encoding": "chunked"}), b"zz\r\nhello\r\n0\r\n\r\n"]
    assert_says(raw_request(hostile_server, parts), 400, "chunked")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
        b"GET /\x00healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    ],
    ids=["tls", "nul-in-path", "unknown-method", "http-9.9", "space-in-name", "nul-in-value"],
)
def test_garbage_requests_get_a_json_400(hostile_server: Server, request_bytes: bytes) -> None:
    assert_says(raw_request(hostile_server, [request_bytes]), 400, "malformed")


def test_oversized_headers_are_a_431(hostile_server: Server) -> None:
    one_big = http_head("GET", "/healthz", {"X-Big": "a" * (MAX_HEADER_BYTES + 1)})
    assert_says(raw_request(hostile_server, [one_big]), 431, "headers exceed")
    many = http_head("GET", "/healthz", {f"X-H{i}": "v" * 40 for i in range(1000)})
    assert_says(raw_request(hostile_server, [many]), 431, "headers exceed")
    # A long header that never ends is cut off too, not buffered for ever.
    endless = [b"GET /healthz HTTP/1.1\r\nX-Endless: "] + [b"a" * 8192] * 64
    assert_says(raw_request(hostile_server, endless), 431, "headers exceed")


@pytest.mark.parametrize("path", ["/v1/models/digits:predict", "/v2/models/digits/infer"])
def test_connection_level_refusals_on_protocol_routes_use_their_error_shape(
    hostile_server: Server, path: str
) -> None:
    """TF Serving and V2 clients read ``{"error": ...}``: the guard's refusals (before the app)
    on their routes have that shape too."""
    oversized = http_head("POST", path, {"X-Big": "a" * (MAX_HEADER_BYTES + 1)})
    response = raw_request(hostile_server, [oversized])
    assert response.status == 431, response.body[:300]
    assert set(response.json()) == {"error"}
    assert "headers exceed" in response.json()["error"]
    lying = http_head("POST", path, {"Content-Length": "abc"})
    response = raw_request(hostile_server, [lying])
    assert response.status == 400 and "Content-Length" in response.json()["error"]


def test_headers_trickled_in_are_cut_off_with_408(hostile_server: Server) -> None:
    lines = [b"GET /healthz HTTP/1.1\r\n"] + [f"X-{i}: y\r\n".encode() for i in range(20)]
    response = raw_request(hostile_server, lines, pause_s=0.4)
    assert_says(response, 408, "headers did not arrive")
    assert response.elapsed_s < HEADER_TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed(hostile_server: Server) -> None:
    response = raw_request(hostile_server, [])
    assert_says(response, 408, "headers did not arrive")
    assert response.elapsed_s < HEADER_TIMEOUT_S + SLACK_S


def test_a_body_trickled_in_is_cut_off_with_408(hostile_server: Server) -> None:
    png = digit_png()
    parts = [predict_head(**{"Content-Length": str(len(png))})] + [
        png[i : i + 8] for i in range(0, 160, 8)
    ]
    response = raw_request(hostile_server, parts, pause_s=0.3)
    assert_says(response, 408, "body did not arrive")
    assert response.elapsed_s < BODY_TIMEOUT_S + SLACK_S + 0.3


def _slow_client(server: Server, kind: str, results: list[RawResponse]) -> None:
    png = digit_png()
    if kind == "header":
        parts = [b"POST /predict HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 30
    else:
        parts = [predict_head(**{"Content-Length": str(len(png))})] + [
            png[i : i + 4] for i in range(0, 120, 4)
        ]
    results.append(raw_request(server, parts, pause_s=0.25, timeout_s=20))


def test_slow_clients_do_not_hold_up_the_others(hostile_server: Server) -> None:
    """Slowloris: 40 connections trickling headers or bodies while normal clients are served."""
    slow_results: list[RawResponse] = []
    slow = [
        threading.Thread(target=_slow_client, args=(hostile_server, kind, slow_results))
        for kind in ["header", "body"] * 20
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.3)
    latencies = []
    with httpx.Client(base_url=hostile_server.url, timeout=10) as client:
        for _ in range(20):
            started = time.monotonic()
            response = client.post("/predict", files={"file": ("d.png", digit_png(), "image/png")})
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
    for thread in slow:
        thread.join(30)
    assert max(latencies) < 2.0, latencies
    assert sorted(r.status for r in slow_results) == [408] * 40  # type: ignore[type-var]
    limit = max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + SLACK_S + 0.5
    assert max(r.elapsed_s for r in slow_results) < limit


def test_connections_beyond_the_limit_get_503_with_retry_after(hostile_server: Server) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection(address(hostile_server), timeout=10))
        time.sleep(0.2)  # let the server accept them all

        def extra() -> RawResponse:
            with socket.create_connection(address(hostile_server), timeout=10) as sock:
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            return parse_response(data, 0)

        with ThreadPoolExecutor(4) as pool:
            refused = list(pool.map(lambda _: extra(), range(4)))
        for response in refused:
            assert_says(response, 503, "open connections")
            assert response.headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert healthy(hostile_server)


def test_pipelined_requests_are_answered_in_order(hostile_server: Server) -> None:
    png = digit_png()
    one = predict_head(**{"Content-Length": str(len(png))}) + png
    with socket.create_connection(address(hostile_server), timeout=15) as sock:
        sock.sendall(one + http_head("GET", "/healthz", {}) + one)
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
            data.count(b'"results"') == 2 and b'{"status":"ok"}' in data
        ):
            data += sock.recv(65536)
    assert data.count(b"HTTP/1.1 ") == data.count(b"HTTP/1.1 200 OK\r\n") == 3, data[:2000]
    assert data.index(b'"results"') < data.index(b'{"status":"ok"}') < data.rindex(b'"results"')
