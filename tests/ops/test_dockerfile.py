"""The Dockerfile and .dockerignore, read as text (no Docker engine here): a multi-stage build,
a slim non-root runtime with a stdlib health check, and a CPU/GPU switch that names a real extra."""

from __future__ import annotations

import json
import re

from tests.helpers.ops import DOCKERFILE, ROOT


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def expand(text: str) -> str:
    """Substitute global ARG defaults (``ARG NAME=value`` before the first FROM)."""
    defaults = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), text)


def test_multi_stage_build_on_python_311_slim() -> None:
    builder, *_, runtime = stages()
    assert len(stages()) >= 2
    assert expand(builder[0][1]).startswith("python:3.11-slim AS builder")
    assert expand(runtime[0][1]).startswith("python:3.11-slim")
    assert any(k == "RUN" and "pip install" in r and "." in r for k, r in builder)
    assert not any(k == "RUN" and "pip install" in r for k, r in runtime), "runtime copies the venv"
    assert any(k == "COPY" and r.startswith("--from=builder /opt/venv") for k, r in runtime)


def test_runtime_is_non_root_and_serves_on_8000_and_grpc_on_8001() -> None:
    runtime = stages()[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "no USER in the final stage: the container would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", "8000 8001") in runtime
    assert ("VOLUME", "/models") in runtime
    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "IMGCLS_MODELS_DIR=/models" in env
    assert "IMGCLS_HOST=0.0.0.0" in env
    assert "IMGCLS_GRPC_PORT=8001" in env
    (cmd,) = [rest for keyword, rest in runtime if keyword == "CMD"]
    assert json.loads(cmd) == ["python", "-m", "service"]


def test_healthcheck_uses_stdlib_urllib_on_healthz() -> None:
    runtime = stages()[-1]
    (healthcheck,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert "urllib" in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck  # not in python:slim


def test_gpu_variant_installs_the_gpu_extra() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TF_VARIANT=cpu$", text, re.MULTILINE)
    assert '"[gpu]"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project allows 3.10)
    extras = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^gpu\s*=", extras, re.MULTILINE), "pyproject.toml has no `gpu` extra"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "models/*", "bench/results", ".env"} <= ignored
    assert {".pytest_cache", ".mypy_cache", ".ruff_cache", "**/__pycache__"} <= ignored
    # What the build COPYs must not be ignored.
    copied = {"pyproject.toml", "README.md", "training", "service"}
    assert not copied & ignored


def test_every_installed_package_is_copied_into_both_stages() -> None:
    """The image holds every package pyproject installs (a package left out, e.g. the shared
    ``contract``, would make ``python -m service`` fail at its first import in the container)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in patterns}
    assert {"contract", "training", "service"} <= packages
    builder, *_, runtime = stages()
    for stage in (builder, runtime):
        copied = {r.split()[0].rstrip("/") for k, r in stage if k == "COPY" and "--from" not in r}
        assert packages <= copied, f"not copied: {sorted(packages - copied)}"
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not packages & ignored
