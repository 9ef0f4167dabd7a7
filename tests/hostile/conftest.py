"""One live service with tight limits, shared by the hostile-input tests.

Short header and body timeouts keep the slow-client tests quick; a 1 MiB body limit keeps the
oversize tests cheap; every other setting is the default a deployment gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server, stop_server

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_IMAGES = 8


@pytest.fixture(scope="session")
def hostile_server(
    trained_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = start_server(
        trained_repo,
        tmp_path_factory.mktemp("hostile-logs"),
        header_timeout_s=str(HEADER_TIMEOUT_S),
        body_timeout_s=str(BODY_TIMEOUT_S),
        keep_alive_timeout_s="2",
        max_header_bytes=str(MAX_HEADER_BYTES),
        max_connections=str(MAX_CONNECTIONS),
        max_upload_bytes=str(MAX_UPLOAD_BYTES),
        max_images_per_request=str(MAX_IMAGES),
        decode_threads="1",
    )
    yield server
    assert stop_server(server) == 0, server.log()[-3000:]
    # Hostile input is the client's problem: no request ever reached the 500 handler.
    log = server.log()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-5000:]
