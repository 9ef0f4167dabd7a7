"""Tests for contract.metadata: a published version that was tampered with, is incomplete or
reaches outside the repository is refused (publishing itself: tests/training/test_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.metadata import InvalidModelVersionError, verify_version_dir
from tests.helpers.models import publish_dummy


def test_tampered_or_incomplete_versions_are_rejected(tmp_path: Path) -> None:
    version = publish_dummy(tmp_path, "t")
    vdir = tmp_path / "m" / str(version)
    verify_version_dir(vdir, repository_root=tmp_path)
    (vdir / "variables" / "variables.index").write_text("tampered")
    with pytest.raises(InvalidModelVersionError, match="checksum mismatch"):
        verify_version_dir(vdir)

    vdir2 = tmp_path / "m" / str(publish_dummy(tmp_path, "u"))
    (vdir2 / "extra.bin").write_bytes(b"x")
    with pytest.raises(InvalidModelVersionError, match="unlisted"):
        verify_version_dir(vdir2)

    vdir3 = tmp_path / "m" / str(publish_dummy(tmp_path, "v"))
    (vdir3 / "metadata.json").unlink()
    with pytest.raises(InvalidModelVersionError, match=r"no metadata\.json"):
        verify_version_dir(vdir3)

    vdir4 = tmp_path / "m" / str(publish_dummy(tmp_path, "w"))
    meta = json.loads((vdir4 / "metadata.json").read_text())
    meta["version"] = 99
    (vdir4 / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidModelVersionError, match="holds version 99"):
        verify_version_dir(vdir4)


def test_symlinked_files_and_folders_outside_the_repository_are_refused(tmp_path: Path) -> None:
    vdir = tmp_path / "repo" / "m" / str(publish_dummy(tmp_path / "repo", "s"))
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
