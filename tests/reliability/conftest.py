"""Fixtures for the reliability tests: a slow model with an injected fault, and a server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import run_module
from tests.helpers.servers import Server, start_server, stop_server
from tests.helpers.stress_model import MODEL_NAME, STRESS_SETTINGS


@pytest.fixture(scope="session")
def stress_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding stress/1 (see tests/helpers/stress_model.py)."""
    models = tmp_path_factory.mktemp("stress-models")
    done = run_module("tests.helpers.stress_model", str(models))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (models / MODEL_NAME / "1" / "metadata.json").is_file()
    return models


@pytest.fixture(scope="session")
def stress_server(stress_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(stress_repo, tmp_path_factory.mktemp("stress-logs"), **STRESS_SETTINGS)
    yield server
    assert stop_server(server) == 0, server.log()[-3000:]
