"""Tests for training.export: publishing is atomic and numbered without collisions, even with two
publishers at once, and stores the drift baseline it is given."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from contract.drift import baseline_from
from contract.metadata import InputSpec, list_versions, verify_version_dir
from tests.helpers.models import publish_dummies
from training.export import publish


@pytest.mark.e2e  # two publishing processes
def test_two_publishers_at_once_never_take_the_same_version(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [
        ctx.Process(target=publish_dummies, args=(str(tmp_path), tag, 10, barrier, out))
        for tag in "ab"
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    taken = sorted(results[0] + results[1])
    assert taken == list(range(1, 21))
    assert list_versions(tmp_path / "m") == list(range(1, 21))
    tags = set()
    for version in taken:
        metadata = verify_version_dir(tmp_path / "m" / str(version))
        assert metadata.version == version
        tags.add(metadata.training["tag"])
    assert len(tags) == 20  # every publish landed whole, none overwrote another
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp-")]


def test_the_drift_baseline_given_to_publish_is_in_the_metadata(tmp_path: Path) -> None:
    baseline = baseline_from([0, 1, 1, 2], [0.97, 0.55, 0.999, 0.3], ["a", "b", "c"])

    def write(tmp: Path) -> list[str]:
        (tmp / "saved_model.pb").write_bytes(b"stand-in")
        return ["serve"]

    common: dict[str, Any] = {
        "models_dir": tmp_path,
        "name": "m",
        "write_artifacts": write,
        "input_spec": InputSpec(height=4, width=4, channels=1, color_mode="grayscale"),
        "class_names": ["a", "b", "c"],
        "arch": "simple",
        "parameter_count": 1,
        "training": {},
        "data_fingerprint": "",
        "metrics": {},
    }
    with_baseline, _ = publish(**common, drift_baseline=baseline)
    without, _ = publish(**common)

    stored = verify_version_dir(tmp_path / "m" / str(with_baseline)).drift_baseline
    assert stored == baseline
    assert stored is not None and stored.class_shares == {"a": 0.25, "b": 0.5, "c": 0.25}
    assert verify_version_dir(tmp_path / "m" / str(without)).drift_baseline is None
