"""Session fixtures: ONE trained digits model for the whole run, and real uvicorn servers.

The model is trained by the real CLI (``python training/train.py``), exactly as the README's
run command does, so the tests exercise what users run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SERVER_START_TIMEOUT_S = 120.0


def missing_tool(reason: str) -> NoReturn:
    """A tool a test needs is absent: fail in CI (it must install every tool), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_env(**extra: str) -> dict[str, str]:
    # One worker unless a test asks for more: most tests reason about one process's queue,
    # batcher and counters; tests/e2e/test_workers.py covers the default (one per CPU).
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "IMGCLS_WORKERS": "1",
    }
    env.update(extra)
    return env


def run_train(
    *args: str, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the training CLI as a user would; returns the finished process (not checked)."""
    return subprocess.run(
        [PYTHON, "training/train.py", *args],
        cwd=cwd,
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
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


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)  # type: ignore[arg-type]


def start_server(
    models_dir: Path, log_dir: Path, *, wait_ready: bool = True, **settings: str
) -> Server:
    """Start ``python -m service`` on a free loopback port; wait for /healthz (and /readyz)."""
    port = free_port()
    env = quiet_env(
        IMGCLS_HOST="127.0.0.1",
        IMGCLS_PORT=str(port),
        IMGCLS_MODELS_DIR=str(models_dir),
        **{f"IMGCLS_{key.upper()}": value for key, value in settings.items()},
    )
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("w") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [PYTHON, "-m", "service"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    path = "/readyz" if wait_ready else "/healthz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(
        f"server not {'ready' if wait_ready else 'up'} in time:\n{server.log()[-3000:]}"
    )


def stop_server(server: Server, timeout: float = 30.0) -> int:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return int(server.process.returncode)


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


def republish(
    models_dir: Path,
    source_version: int = 1,
    name: str = "digits",
    *,
    as_name: str | None = None,
    class_names: list[str] | None = None,
) -> int:
    """Publish a new version of ``as_name`` (default: ``name`` itself) whose SavedModel is a copy
    of ``name``'s ``source_version``, through the real publishing code (temp folder, checksums,
    metadata last, rename); ``class_names`` renames the classes (another model, same network)."""
    from training.export import publish
    from training.metadata import read_metadata

    source = models_dir / name / str(source_version)
    meta = read_metadata(source)

    def write(tmp: Path) -> list[str]:
        for item in source.iterdir():
            if item.name == "metadata.json":
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        return list(meta.endpoints)

    version, _ = publish(
        models_dir=models_dir,
        name=as_name or name,
        write_artifacts=write,
        input_spec=meta.input,
        class_names=class_names or meta.class_names,
        arch=meta.arch,
        parameter_count=meta.parameter_count,
        training={**meta.training, "republished_from": f"{name}/{source_version}"},
        data_fingerprint=meta.data_fingerprint,
        metrics=meta.metrics,
    )
    return version


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in a Prometheus text exposition whose labels include
    ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                total += sample.value
    return total
