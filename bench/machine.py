"""The machine a run was measured on: cores, CPU model and vector flags, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from bench import loadgen

#: The vector extensions reported (those that matter to the model kernels' speed).
WANTED_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)
PACKAGES = ("tensorflow", "keras", "fastapi", "starlette", "uvicorn", "uvloop", "httptools")


def _version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def _wrk_version() -> str | None:
    wrk = loadgen.wrk_path()
    if not wrk:
        return None
    probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    text = (probe.stdout + probe.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else None


def machine_info() -> dict[str, Any]:
    """Cores, CPU model and vector flags, versions: what a reader needs to compare numbers."""
    cpuinfo_path = Path("/proc/cpuinfo")
    lines = cpuinfo_path.read_text(errors="replace").splitlines() if cpuinfo_path.exists() else []
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor(),
    )
    flags_line = next((line for line in lines if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if flags_line else set()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [flag for flag in WANTED_FLAGS if flag in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "wrk": _wrk_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }
