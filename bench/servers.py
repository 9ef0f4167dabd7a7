"""Start and stop the processes under test: the service, the references (the own-stack HTTP
ceiling, the bare ceiling and the bare unbatched app), the null server.

Each runs as its own ``python -m ...`` subprocess on a free loopback port, with its output in a
log file; :meth:`ServerProcess.cpu_seconds` adds up the CPU time of the process and its workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server did not start, or died."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (all threads), counting
    the children that already exited through their parents' ``cutime``/``cstime``: summing
    only the live processes went backwards when a child (a startup probe, a replaced worker)
    exited between two readings."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: the last two are the reaped children's totals.
        total += sum(int(field) for field in fields[11:15]) / _CLOCK_TICKS
        stack.extend(_children(current))
    return total


@dataclass
class ServerProcess:
    """One running server; ``url`` has no trailing slash."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        return process_tree_cpu_s(self.process.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""


def fetch_text(url: str, timeout_s: float = 5.0) -> str:
    """GET ``url`` and return the body as text (used for /metrics)."""
    return _get(url, timeout_s)[1].decode(errors="replace")


def spawn(
    name: str,
    module: str,
    log_dir: Path,
    *,
    ready_path: str,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    cwd: Path = ROOT,
) -> tuple[ServerProcess, str]:
    """Start ``python -m module`` on a free port (``IMGCLS_PORT``) without waiting for it;
    returns the server and the path that answers 200 once it is ready. ``env`` is added to
    this process's environment; ``cwd`` is the checkout the module is imported from."""
    port = free_port()
    full_env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "IMGCLS_HOST": "127.0.0.1",
        "IMGCLS_PORT": str(port),
        "IMGCLS_LOG_LEVEL": "warning",
        # gRPC's default port (8001) is one for the whole machine: two services (or a service
        # and anything else on it) would collide; a run that measures gRPC passes its own port
        "IMGCLS_GRPC_PORT": "",
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path), ready_path


def wait_ready(pending: list[tuple[ServerProcess, str]]) -> list[ServerProcess]:
    """Wait until every server answers 200 on its ready path (they start in parallel); on
    failure stop them all and raise :class:`ServerError`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = list(pending)
    try:
        while waiting:
            for server, path in list(waiting):
                if server.process.poll() is not None:
                    raise ServerError(
                        f"{server.name} exited with {server.process.returncode}:\n"
                        f"{server.log_tail()}"
                    )
                try:
                    if _get(server.url + path)[0] == 200:
                        waiting.remove((server, path))
                except OSError:
                    pass
            if waiting and time.monotonic() > deadline:
                names = ", ".join(server.name for server, _ in waiting)
                raise ServerError(f"{names} not ready within {START_TIMEOUT_S:g} s")
            time.sleep(0.2)
    except BaseException:
        for server, _ in pending:
            server.stop()
        raise
    return [server for server, _ in pending]


def service_spec(
    models_dir: Path, model_name: str, log_dir: Path, name: str, **settings: object
) -> tuple[ServerProcess, str]:
    """Spawn ``python -m service`` with its defaults, except ``settings`` (``IMGCLS_<KEY>``)."""
    env = {
        "IMGCLS_MODELS_DIR": str(models_dir),
        "IMGCLS_MODEL_NAME": model_name,
        **{f"IMGCLS_{key.upper()}": str(value) for key, value in settings.items()},
    }
    return spawn(name, "service", log_dir, ready_path="/readyz", env=env)


def ceiling_spec(
    log_dir: Path, name: str, *, height: int, width: int, **settings: object
) -> tuple[ServerProcess, str]:
    """Spawn the HTTP-ceiling app (:mod:`bench.ceiling_app`) decoding to ``height`` x ``width``."""
    env = {
        "BENCH_TARGET_SIZE": f"{height},{width}",
        **{f"IMGCLS_{key.upper()}": str(value) for key, value in settings.items()},
    }
    return spawn(name, "bench.ceiling_app", log_dir, ready_path="/healthz", env=env)


def bare_spec(
    log_dir: Path,
    name: str,
    *,
    height: int,
    width: int,
    model_dir: Path | None = None,
) -> tuple[ServerProcess, str]:
    """Spawn a bare reference (:mod:`bench.bare_app`): the bare ceiling when ``model_dir`` is
    None, else the bare unbatched app serving that version folder (``models/<name>/<n>``)."""
    env = {
        "BENCH_TARGET_SIZE": f"{height},{width}",
        "BENCH_BARE_MODE": "ceiling" if model_dir is None else "unbatched",
    }
    if model_dir is not None:
        env["BENCH_MODEL_DIR"] = str(model_dir)
    return spawn(name, "bench.bare_app", log_dir, ready_path="/healthz", env=env)


def start_service(
    models_dir: Path, model_name: str, log_dir: Path, name: str, **settings: object
) -> ServerProcess:
    """:func:`service_spec`, started and ready."""
    return wait_ready([service_spec(models_dir, model_name, log_dir, name, **settings)])[0]


def start_ceiling(
    log_dir: Path, name: str, *, height: int, width: int, **settings: object
) -> ServerProcess:
    """:func:`ceiling_spec`, started and ready."""
    return wait_ready([ceiling_spec(log_dir, name, height=height, width=width, **settings)])[0]


def start_null(log_dir: Path) -> ServerProcess:
    """The constant-answer server (:mod:`bench.null_server`) that sizes up the load generator."""
    return wait_ready([spawn("null-server", "bench.null_server", log_dir, ready_path="/healthz")])[
        0
    ]


def box_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS
