"""Tests for contract.tf_log: TensorFlow's start-up lines stay out of every process's log (the
service, its workers, the trainer), and nothing else written meanwhile is lost."""

from __future__ import annotations

import subprocess

import pytest

from contract.tf_log import StartupLineFilter, min_log_level, quiet_tensorflow
from tests.helpers.processes import PYTHON, ROOT, quiet_env

# Verbatim from a CPU machine (TensorFlow 2.21).
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
INFO = (
    b"I0000 00:00:1795708673.020027   23681 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used."
)
CPU_NOTE = (
    b"I0000 00:00:1795708116.450564    9303 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations."
)
CPU_NOTE_2 = b"To enable the following instructions: AVX2 FMA, in other operations, rebuild ..."
ERROR = (
    b"E0000 00:00:1795708118.999347    9303 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)
WARNING = b"W0000 00:00:1795708118.999347    9303 some.cc:1] a warning"
FATAL = b"F0000 00:00:1795708118.999347    9303 some.cc:1] check failed"
OURS = b"2026-11-26 15:59:00,649 INFO service.app: serving every model of models"
UVICORN = b"INFO:     Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
STARTUP = [BANNER, INFO, CPU_NOTE, CPU_NOTE_2, OURS, WARNING, ERROR, UVICORN, FATAL]


def kept(level: int) -> list[bytes]:
    line_filter = StartupLineFilter(level)
    return [line for line in STARTUP if line_filter.keep(line)]


def test_level_3_keeps_only_the_service_lines_and_fatal_ones() -> None:
    assert kept(3) == [OURS, UVICORN, FATAL]


def test_lower_levels_drop_less() -> None:
    assert kept(2) == [OURS, ERROR, UVICORN, FATAL]
    assert kept(1) == [OURS, WARNING, ERROR, UVICORN, FATAL]
    assert kept(0) == STARTUP


@pytest.mark.parametrize(
    ("value", "level"), [(None, 0), ("0", 0), ("2", 2), (" 3 ", 3), ("9", 3), ("x", 0)]
)
def test_min_log_level_reads_the_variable_as_tensorflow_does(value: str | None, level: int) -> None:
    environ = {} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}
    assert min_log_level(environ) == level


_PROBE = """
import logging, sys, threading, time
from contract.tf_log import import_tensorflow_filtered
logging.basicConfig(level=logging.INFO, format="%(message)s")
done = threading.Event()
def chatter():  # the event loop's log, written while TensorFlow loads
    n = 0
    while not done.is_set() or n < 3:
        logging.info("service line %d", n)
        n += 1
        time.sleep(0.01)
thread = threading.Thread(target=chatter)
thread.start()
import_tensorflow_filtered()
done.set()
thread.join()
logging.info("after the import; tensorflow=%s", "tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_filtered_import_drops_tensorflow_lines_and_keeps_everything_else() -> None:
    done = subprocess.run(
        [PYTHON, "-c", _PROBE],
        cwd=ROOT,
        env=quiet_env(TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stderr.splitlines()
    assert lines[-1] == "after the import; tensorflow=True"
    # Every line the service wrote during the import arrived, whole and in order; nothing else.
    assert len(lines) > 3
    assert lines[:-1] == [f"service line {n}" for n in range(len(lines) - 1)], done.stderr[-3000:]


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
    quiet_tensorflow(show_log=log_level == "debug", environ=environ)  # as the CLIs call it
    assert environ.get("TF_CPP_MIN_LOG_LEVEL") == expected
