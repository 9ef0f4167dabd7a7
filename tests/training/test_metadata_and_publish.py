"""Publishing is atomic, numbered without collisions, and tampering is detected."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from training.export import publish
from training.metadata import InputSpec, InvalidModelVersionError, list_versions, verify_version_dir


def _publish_dummy(models_dir: Path, tag: str) -> int:
    def write(tmp: Path) -> list[str]:
        (tmp / "saved_model.pb").write_bytes(os.urandom(256))
        (tmp / "variables").mkdir()
        (tmp / "variables" / "variables.index").write_text(tag)
        return ["serve"]

    version, _ = publish(
        models_dir=models_dir,
        name="m",
        write_artifacts=write,
        input_spec=InputSpec(height=8, width=8, channels=1, color_mode="grayscale"),
        class_names=["a", "b"],
        arch="simple",
        parameter_count=1,
        training={"tag": tag},
        data_fingerprint="x",
        metrics={"test_accuracy": 0.5},
    )
    return version


def _worker(
    models_dir: str,
    tag: str,
    count: int,
    barrier: multiprocessing.synchronize.Barrier,
    out: multiprocessing.Queue[list[int]],
) -> None:
    barrier.wait()
    out.put([_publish_dummy(Path(models_dir), f"{tag}-{i}") for i in range(count)])


def test_two_publishers_at_once_never_take_the_same_version(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out: multiprocessing.Queue[list[int]] = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), tag, 10, barrier, out)) for tag in "ab"
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


def test_tampered_or_incomplete_versions_are_rejected(tmp_path: Path) -> None:
    version = _publish_dummy(tmp_path, "t")
    vdir = tmp_path / "m" / str(version)
    verify_version_dir(vdir, repository_root=tmp_path)
    (vdir / "variables" / "variables.index").write_text("tampered")
    with pytest.raises(InvalidModelVersionError, match="checksum mismatch"):
        verify_version_dir(vdir)

    vdir2 = tmp_path / "m" / str(_publish_dummy(tmp_path, "u"))
    (vdir2 / "extra.bin").write_bytes(b"x")
    with pytest.raises(InvalidModelVersionError, match="unlisted"):
        verify_version_dir(vdir2)

    vdir3 = tmp_path / "m" / str(_publish_dummy(tmp_path, "v"))
    (vdir3 / "metadata.json").unlink()
    with pytest.raises(InvalidModelVersionError, match=r"no metadata\.json"):
        verify_version_dir(vdir3)

    vdir4 = tmp_path / "m" / str(_publish_dummy(tmp_path, "w"))
    meta = json.loads((vdir4 / "metadata.json").read_text())
    meta["version"] = 99
    (vdir4 / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidModelVersionError, match="holds version 99"):
        verify_version_dir(vdir4)


def test_symlinked_files_and_folders_outside_the_repository_are_refused(tmp_path: Path) -> None:
    vdir = tmp_path / "repo" / "m" / str(_publish_dummy(tmp_path / "repo", "s"))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (vdir / "link.bin").symlink_to(outside)
    with pytest.raises(InvalidModelVersionError, match="symbolic link"):
        verify_version_dir(vdir)
    (vdir / "link.bin").unlink()
    escaped = tmp_path / "repo" / "m" / "77"
    escaped.symlink_to(vdir)
    with pytest.raises(InvalidModelVersionError, match="outside the model repository"):
        verify_version_dir(escaped, repository_root=tmp_path / "repo")
