"""Tests for service.app: the app's lifespan (it sets the GIL switch interval, one of the
/predict hot-path changes, see BENCHMARKS.md), and the request id on the app's error answers."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import httpx
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


def get(app: object, path: str, headers: dict[str, str]) -> httpx.Response:
    """``GET path`` on ``app`` in process, without its lifespan (no model is loaded)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(send())


@pytest.mark.parametrize(
    ("path", "status"), [("/no-such-route", 404), ("/broken", 500)], ids=["404", "500"]
)
def test_error_answers_carry_the_request_id_in_header_and_body(
    tmp_path: Path, path: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A client quoting the id of a failed request (a bug report) finds it in both places,
    even when the route crashed."""
    app = create_app(Settings(models_dir=tmp_path))

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.CRITICAL, logger="service.app"):  # the 500's traceback
        answer = get(app, path, {"X-Request-Id": "bug-report-1"})
    assert answer.status_code == status
    assert answer.headers.get_list("x-request-id") == ["bug-report-1"]
    assert answer.json()["id"] == "bug-report-1"


def test_protocol_errors_keep_their_peers_shape_and_the_id_in_the_header(tmp_path: Path) -> None:
    """TF Serving and V2 clients parse exactly ``{"error": ...}``: the id rides in the header."""
    app = create_app(Settings(models_dir=tmp_path))
    for path in ("/v1/models/nope/no-such", "/v2/no-such"):
        answer = get(app, path, {"X-Request-Id": "bug-report-2"})
        assert answer.status_code == 404
        assert set(answer.json()) == {"error"}
        assert answer.headers.get_list("x-request-id") == ["bug-report-2"]


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
