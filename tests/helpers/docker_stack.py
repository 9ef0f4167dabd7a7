"""A private Docker engine for the compose stack's end-to-end tests, and the stack on it.

The engine is Debian's ``dockerd``, started by hand with its own data, exec root and socket (no
iptables, no default bridge: these machines allow neither), and stopped by its PID whatever
happens to the tests. Its data root (``IMGCLS_DOCKER_ROOT``, default
``/tmp/imgcls-docker``) survives a run, so the local base images
(``deploy/local-bases/build.sh``) and the project's image layers are built once per machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.processes import ROOT

#: Where the engine keeps its images between runs (a cache, never the machine's own engine).
DOCKER_ROOT = Path(os.environ.get("IMGCLS_DOCKER_ROOT", "/tmp/imgcls-docker"))
PYTHON_IMAGE = "imgcls-base/python:3.11"
PROMETHEUS_IMAGE = "imgcls-base/prometheus:debian"
PROJECT_IMAGE_TAG = "e2e"
ENGINE_START_TIMEOUT_S = 60.0


@dataclass
class Engine:
    process: subprocess.Popen[bytes]
    host: str  # DOCKER_HOST
    log_path: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, **extra}

    def run(
        self, *args: str, timeout: float = 600, check: bool = True, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine."""
        return _run([docker_cli(), *args], self.env(**extra_env), timeout, check)

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.run("inspect", name).stdout)
        return data[0]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _run(
    argv: list[str], env: dict[str, str], timeout: float, check: bool
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``check``, a failure raises with the command and its stderr."""
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        # docker build reports a failed step on stdout, and only warnings on stderr.
        raise AssertionError(
            f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
        )
    return done


def docker_cli() -> str:
    path = shutil.which("docker")
    assert path is not None, "docker CLI not found"
    return path


def _stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def start_engine(root: Path = DOCKER_ROOT) -> Engine:
    """Start ``dockerd`` on ``root`` (a previous run's engine left behind is stopped first)."""
    root.mkdir(parents=True, exist_ok=True)
    pidfile = root / "docker.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError):
            _stop_pid(int(pidfile.read_text().strip()))
        pidfile.unlink(missing_ok=True)
    socket = root / "docker.sock"
    log_path = root / "dockerd.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                shutil.which("dockerd") or "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'exec'}",
                f"--pidfile={pidfile}",
                f"--host=unix://{socket}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(process, f"unix://{socket}", log_path)
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {process.returncode}:\n{engine.log_tail()}")
        if engine.run("version", check=False, timeout=10).returncode == 0:
            return engine
        time.sleep(0.5)
    stop_engine(engine)
    raise RuntimeError(f"dockerd did not answer in time:\n{engine.log_tail()}")


def stop_engine(engine: Engine) -> None:
    """Stop every container, then the engine, by its PID."""
    if engine.process.poll() is None:
        running = engine.run("ps", "-q", check=False, timeout=30).stdout.split()
        if running:
            engine.run("rm", "-f", *running, check=False, timeout=120)
        _stop_pid(engine.process.pid)
        engine.process.wait(30)


def build_images(engine: Engine) -> float:
    """The local bases and the project's image (tag ``PROJECT_IMAGE_TAG``); seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "deploy" / "local-bases" / "build.sh")],
        env=engine.env(DOCKER=docker_cli()),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"deploy/local-bases/build.sh failed:\n{done.stdout}{done.stderr}")
    engine.run(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={PYTHON_IMAGE}",
        "-t",
        f"imgcls:{PROJECT_IMAGE_TAG}",
        str(ROOT),
        timeout=1800,
    )
    # The runtime stage copies the whole venv (~3 GB), so each code change leaves the previous
    # image behind untagged: without this the engine's data root grew by 3 GB per run and filled
    # the disk.
    engine.run("image", "prune", "--force")
    return time.monotonic() - started


@dataclass
class Stack:
    """``docker-compose.yml`` run from a scratch project folder (its own models/ and data/)."""

    engine: Engine
    folder: Path
    project: str
    uid: int = 1000

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        compose = shutil.which("docker-compose")
        assert compose is not None, "docker-compose not found"
        return _run(
            [
                compose,
                "--project-name",
                self.project,
                "--project-directory",
                str(self.folder),
                "--file",
                str(ROOT / "docker-compose.yml"),
                *args,
            ],
            self.engine.env(
                PYTHON_IMAGE=PYTHON_IMAGE,
                PROMETHEUS_IMAGE=PROMETHEUS_IMAGE,
                IMGCLS_IMAGE_TAG=PROJECT_IMAGE_TAG,
                IMGCLS_UID=str(self.uid),
                IMGCLS_GID=str(self.uid),
                GRAFANA_ADMIN_PASSWORD="not-started-here",
                IMGCLS_POLL_INTERVAL_S="1",
            ),
            timeout,
            check,
        )

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def port(self, service: str, private: int, index: int = 1) -> int:
        out = self.compose("port", "--index", str(index), service, str(private)).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", *services, check=False).stdout


def make_project_folder(folder: Path, uid: int, files: Sequence[str]) -> None:
    """The bind-mounted folders compose expects beside its file: models/ and data/ owned by
    ``uid`` (the documented IMGCLS_UID), and the monitoring files Prometheus mounts."""
    for name in ("models", "data"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        os.chown(folder / name, uid, uid)
    for name in files:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
