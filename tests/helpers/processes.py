"""Child processes as the tests start them: the interpreter, the repository root, a quiet
environment, the training CLI; a tool that is missing; a process's resident memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


#: TensorFlow's C++ start-up output: absl's "I0000 00:00:..." records, its pre-init banner, and
#: the CUDA probe lines; none may reach a log the project writes.
TF_START_UP_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:|absl::InitializeLog|cuda|cuInit", re.M | re.I
)


def missing_tool(reason: str) -> NoReturn:
    """A tool a test needs is absent: fail in CI (it must install every tool), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason)


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, TensorFlow quiet, output unbuffered."""
    # One worker unless a test asks for more: most tests reason about one process's queue,
    # batcher and counters; tests/e2e/test_workers.py covers the default (one per CPU).
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "IMGCLS_WORKERS": "1",
        # gRPC off unless a test gives it a port: the default 8001 would be shared by every
        # server a test starts (tests/helpers/servers.py gives each its own free port).
        "IMGCLS_GRPC_PORT": "",
    }
    env.update(extra)
    return env


def run_train(
    *args: str, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the training CLI as a user would; returns the finished process (not checked)."""
    return _run_python(["training/train.py", *args], cwd, timeout)


def run_module(
    module: str, *args: str, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` as a user would; returns the finished process (not
    checked)."""
    return _run_python(["-m", module, *args], cwd, timeout)


def _run_python(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, *argv],
        cwd=cwd,
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` from /proc/<pid>/status (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
