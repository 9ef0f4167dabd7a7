"""Tests for training.export: publishing is atomic and numbered without collisions, even with two
publishers at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from contract.metadata import list_versions, verify_version_dir
from tests.helpers.models import publish_dummies


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
