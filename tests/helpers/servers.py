"""A real service process for the end-to-end tests: ``python -m service`` on a free loopback
port, waited for until it answers ``/healthz`` (and ``/readyz``), stopped with SIGTERM; and
what its ``/metrics`` says."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.processes import PYTHON, ROOT, quiet_env

SERVER_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log_path: Path
    #: ``host:port`` of its gRPC server; None when gRPC is off.
    grpc_target: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)  # type: ignore[arg-type]


def start_server(
    models_dir: Path, log_dir: Path, *, wait_ready: bool = True, wait: bool = True, **settings: str
) -> Server:
    """Start ``python -m service`` on a free loopback port; wait for /healthz (and /readyz),
    unless ``wait`` is False (the test watches the start itself)."""
    port = free_port()
    # Captured inputs and feedback go beside the log unless a test names its own folders:
    # never into the checkout's data/.
    settings = {
        "capture_dir": str(log_dir / f"captured-{port}"),
        "feedback_dir": str(log_dir / f"feedback-{port}"),
        "grpc_port": str(free_port()),
        **settings,
    }
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
    grpc_port = settings["grpc_port"]
    server = Server(
        f"http://127.0.0.1:{port}",
        process,
        log_path,
        grpc_target=f"127.0.0.1:{grpc_port}" if grpc_port else None,
    )
    if not wait:
        return server
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


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def healthy(server: Server) -> bool:
    """The server still answers /healthz and classifies a digit."""
    from tests.helpers.images import digit_png

    if httpx.get(server.url + "/healthz", timeout=10).status_code != 200:
        return False
    response = httpx.post(
        server.url + "/predict",
        files={"file": ("d.png", digit_png(), "image/png")},
        timeout=30,
    )
    return response.status_code == 200


def metrics_text(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=30).text


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
