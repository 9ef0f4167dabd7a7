"""Fixtures for the reliability tests: a slow model with an injected fault, and a server on it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PYTHON, ROOT, Server, quiet_env, start_server, stop_server
from tests.reliability.stress_model import MODEL_NAME

#: Settings of the shared stress server: small batches and queue, one TensorFlow thread, so
#: that its capacity (~40 images/s) is far below what a few hundred clients send.
STRESS_SETTINGS = {
    "model_name": MODEL_NAME,
    "max_batch_size": "4",
    "max_queue_size": "16",
    "request_timeout_s": "5",
    "tf_intra_op_threads": "1",
    "tf_inter_op_threads": "1",
    "decode_threads": "1",
}


@pytest.fixture(scope="session")
def stress_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding stress/1 (see tests/reliability/stress_model.py)."""
    models = tmp_path_factory.mktemp("stress-models")
    done = subprocess.run(
        [PYTHON, "-m", "tests.reliability.stress_model", str(models)],
        cwd=ROOT,
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (models / MODEL_NAME / "1" / "metadata.json").is_file()
    return models


@pytest.fixture(scope="session")
def stress_server(stress_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(stress_repo, tmp_path_factory.mktemp("stress-logs"), **STRESS_SETTINGS)
    yield server
    assert stop_server(server) == 0, server.log()[-3000:]


def metrics_text(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=30).text
