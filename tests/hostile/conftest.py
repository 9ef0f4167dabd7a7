"""One live service with tight limits, shared by the hostile-input tests (the limits:
:mod:`tests.helpers.hostile`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hostile import HOSTILE_SETTINGS
from tests.helpers.servers import Server, start_server, stop_server


@pytest.fixture(scope="session")
def hostile_server(
    trained_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = start_server(trained_repo, tmp_path_factory.mktemp("hostile-logs"), **HOSTILE_SETTINGS)
    yield server
    assert stop_server(server) == 0, server.log()[-3000:]
    # Hostile input is the client's problem: no request ever reached the 500 handler.
    log = server.log()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-5000:]
