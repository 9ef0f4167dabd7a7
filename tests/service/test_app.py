"""Tests for service.app: the app's lifespan (it sets the GIL switch interval, one of the
/predict hot-path changes, see BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.timeout(60)


def test_lifespan_sets_the_gil_switch_interval(tmp_path: Path) -> None:
    previous = sys.getswitchinterval()
    settings = Settings(models_dir=tmp_path, gil_switch_interval_s=0.002, poll_interval_s=60)
    app = create_app(settings)

    async def body() -> float:
        async with app.router.lifespan_context(app):
            return sys.getswitchinterval()

    try:
        assert asyncio.run(body()) == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.e2e  # a child process that imports TensorFlow
def test_thread_settings_apply_at_the_filtered_import_without_start_up_lines() -> None:
    """With threads set per worker (several workers), the settings wait for TensorFlow's first
    import instead of importing it in the lifespan (which raced the filtered background import
    and sometimes won, printing the C++ start-up lines at info, and held the server's start)."""
    import subprocess

    from tests.helpers.processes import PYTHON, ROOT, TF_START_UP_LINE, quiet_env

    script = (
        "import sys\n"
        "from contract.tf_log import import_filtered\n"
        "from service.app import configure_tensorflow_threads\n"
        "from service.settings import Settings\n"
        "configure_tensorflow_threads(Settings(tf_intra_op_threads=1))\n"
        "assert 'tensorflow' not in sys.modules  # registered, not imported: no start-up wait\n"
        "import_filtered('tensorflow')  # what the first model load does\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads())\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", script],
        cwd=ROOT,
        env=quiet_env(TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "1"
    assert not TF_START_UP_LINE.search(done.stderr), done.stderr[-3000:]
