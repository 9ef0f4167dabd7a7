"""Tests for service.settings: errors name what the user set (``IMGCLS_*`` variables), never the
internal field names (as ``python -m service`` prints them: tests/service/test_main.py); how
many workers ``auto`` means."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.__main__ import settings_errors
from service.settings import MAX_AUTO_WORKERS, Settings, auto_workers, env_name, usable_cpus


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


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 2), (3, 3), (64, MAX_AUTO_WORKERS)])
def test_auto_is_one_worker_per_cpu_up_to_a_cap(cpus: int, workers: int) -> None:
    assert auto_workers(cpus) == workers


def test_settings_default_to_auto_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGCLS_WORKERS", raising=False)
    assert Settings().workers == "auto"
    assert Settings().worker_count == auto_workers(usable_cpus())
    monkeypatch.setenv("IMGCLS_WORKERS", "Auto")
    assert Settings().worker_count == auto_workers(usable_cpus())
    monkeypatch.setenv("IMGCLS_WORKERS", "3")
    assert Settings().workers == Settings().worker_count == 3
