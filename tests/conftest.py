"""Session fixtures: ONE trained digits model for the whole run, and real uvicorn servers.

The model is trained by the real CLI (``python training/train.py``), exactly as the README's
run command does, so the tests exercise what users run. Fixtures only: the code they run is in
:mod:`tests.helpers`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ops import missing_tool
from tests.helpers.processes import run_train
from tests.helpers.servers import Server, start_server, stop_server

#: Fixtures that train a model or start a service process: a test that uses one must be marked
#: ``e2e`` or ``slow``, so that ``pytest -m "not e2e and not slow"`` (``make test-fast``) runs unit
#: tests only.
PROCESS_FIXTURES = frozenset(
    {
        "trained_repo",
        "repo_copy",
        "server",
        "server_factory",
        "hostile_server",
        "stress_repo",
        "stress_server",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and not any(item.iter_markers("e2e"))
        and not any(item.iter_markers("slow"))
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests train or start a server but are marked neither e2e nor slow: "
            + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding digits version 1, trained with the default settings."""
    models = tmp_path_factory.mktemp("models")
    runs = tmp_path_factory.mktemp("runs")
    done = run_train(
        "--models-dir", str(models), "--run-dir", str(runs / "digits"), "--verbose", "0"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (models / "digits" / "1" / "metadata.json").is_file()
    return models


@pytest.fixture()
def repo_copy(trained_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the trained repository that a test may modify."""
    target = tmp_path / "models"
    shutil.copytree(trained_repo, target)
    return target


@pytest.fixture(scope="session")
def server(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One live service on the shared trained model (max_batch_size 32, defaults otherwise)."""
    srv = start_server(trained_repo, tmp_path_factory.mktemp("server-logs"))
    yield srv
    stop_server(srv)


@pytest.fixture()
def server_factory(tmp_path: Path) -> Iterator[object]:
    """Start extra servers with their own settings; all stopped after the test."""
    started: list[Server] = []

    def factory(models_dir: Path, *, wait_ready: bool = True, **settings: str) -> Server:
        srv = start_server(models_dir, tmp_path, wait_ready=wait_ready, **settings)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        stop_server(srv)


@pytest.fixture(scope="session")  # session, like trained_repo, so it is checked before training
def prometheus_binary() -> str:
    """The real Prometheus (tests/ops' live monitoring tests, tests/e2e's rollout)."""
    path = shutil.which("prometheus")
    if path is None:
        missing_tool("prometheus not found on PATH")
    return path
