"""Fixtures for the operations tests: the external tools they drive (``promtool``,
``docker-compose``); the files and helpers they share are in :mod:`tests.helpers.ops`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.ops import missing_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool("promtool not found on PATH")
    return path


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    """``docker-compose`` (v1 or the v2 standalone binary), else the ``docker compose`` plugin.

    ``config`` needs no Docker engine, only the CLI.
    """
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    missing_tool("neither docker-compose nor the docker compose plugin found")
