"""Settings errors name what the user set (``IMGCLS_*`` variables, ``python -m service`` flags),
never the internal field names; the CLI reports them on stderr with exit code 2."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from service.__main__ import quiet_tensorflow, settings_errors
from service.settings import Settings, env_name
from tests.conftest import PYTHON, ROOT, quiet_env


def errors_of(**env: str) -> list[str]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with pytest.raises(ValidationError) as caught:
            Settings()
    return settings_errors(caught.value)


def test_env_name_is_the_prefixed_upper_case_field() -> None:
    assert env_name("max_queue_size") == "IMGCLS_MAX_QUEUE_SIZE"


def test_queue_smaller_than_a_batch_names_both_variables_and_which_was_set() -> None:
    assert errors_of(IMGCLS_MAX_QUEUE_SIZE="4") == [
        "IMGCLS_MAX_QUEUE_SIZE=4 must be >= IMGCLS_MAX_BATCH_SIZE (default 32): the queue must "
        "hold a full batch; raise IMGCLS_MAX_QUEUE_SIZE or lower IMGCLS_MAX_BATCH_SIZE"
    ]
    both = errors_of(IMGCLS_MAX_QUEUE_SIZE="4", IMGCLS_MAX_BATCH_SIZE="8")
    assert both[0].startswith("IMGCLS_MAX_QUEUE_SIZE=4 must be >= IMGCLS_MAX_BATCH_SIZE=8:")


def test_shutdown_delay_error_names_the_variables() -> None:
    assert errors_of(IMGCLS_SHUTDOWN_DELAY_S="30") == [
        "IMGCLS_SHUTDOWN_DELAY_S=30 must be shorter than IMGCLS_SHUTDOWN_GRACE_S (default 20): "
        "the delay is part of the grace; lower IMGCLS_SHUTDOWN_DELAY_S or raise "
        "IMGCLS_SHUTDOWN_GRACE_S"
    ]


def test_field_errors_name_the_variable_and_its_value() -> None:
    assert errors_of(IMGCLS_PORT="70000", IMGCLS_REQUEST_TIMEOUT_S="inf") == [
        "IMGCLS_PORT=70000: Input should be less than or equal to 65535",
        "IMGCLS_REQUEST_TIMEOUT_S=inf: must be a finite number of seconds",
    ]


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


@pytest.mark.parametrize(
    ("log_level", "preset", "expected"),
    [
        ("info", None, "3"),  # the cuInit error and the CPU-feature notes stay out of the log
        ("warning", None, "3"),
        ("debug", None, None),  # debugging: TensorFlow's own default, everything
        ("info", "0", "0"),  # what the user set wins
        ("debug", "2", "2"),
    ],
)
def test_tensorflow_log_level(log_level: str, preset: str | None, expected: str | None) -> None:
    environ = {} if preset is None else {"TF_CPP_MIN_LOG_LEVEL": preset}
    quiet_tensorflow(log_level, environ)
    assert environ.get("TF_CPP_MIN_LOG_LEVEL") == expected
