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
