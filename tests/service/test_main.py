"""Tests for service.__main__, the ``python -m service`` CLI: settings errors name what the user
set (``python -m service`` flags, ``IMGCLS_*`` variables), never the internal field names or a
secret; the CLI reports them on stderr with exit code 2."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from service.__main__ import settings_errors
from service.settings import Settings
from tests.helpers.processes import PYTHON, ROOT, quiet_env


def test_a_secret_is_never_repeated() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys=12345)  # type: ignore[arg-type]
    lines = settings_errors(caught.value)
    assert lines and all(line.startswith("IMGCLS_API_KEYS") for line in lines)
    assert not any("12345" in line for line in lines)


def test_flags_the_user_gave_are_named_as_flags() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLS_WORKERS", "0")  # what __main__ does with --workers 0
        with pytest.raises(ValidationError) as caught:
            Settings()
    assert settings_errors(caught.value, ["workers"]) == [
        "--workers 0: must be a number of worker processes (1-64) or auto"
    ]


def run_service(*flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "service", *flags],
        cwd=ROOT,
        env=quiet_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.e2e  # runs python -m service
def test_the_cli_prints_the_names_and_exits_2() -> None:
    """The issue's case: a small queue with the default batch size (the server never starts)."""
    done = run_service(IMGCLS_MAX_QUEUE_SIZE="4")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: IMGCLS_MAX_QUEUE_SIZE=4 must be >= IMGCLS_MAX_BATCH_SIZE (default 32): the queue "
        "must hold a full batch; raise IMGCLS_MAX_QUEUE_SIZE or lower IMGCLS_MAX_BATCH_SIZE"
    ]
    done = run_service("--port", "70000", "--workers", "2", IMGCLS_PORT="8080")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --port 70000: Input should be less than or equal to 65535"
    ]
