"""Fixtures of the serving-core tests: a model repository of stand-in versions (published by the
real publishing code; no TensorFlow, see :mod:`tests.helpers.models`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.models import publish_fake


@pytest.fixture()
def three_versions(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    for _ in range(3):
        publish_fake(models)
    assert sorted(p.name for p in (models / "digits").iterdir()) == ["1", "2", "3"]
    return models
