"""The compiled-runtime contract: the equivalence rule, how artifacts are ranked, and the
per-artifact checks that let a damaged artifact fall back without failing its version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.metadata import checksum_tree, sha256_file
from contract.runtimes import (
    EQUIVALENCE_RULE,
    RUNTIMES_DIR,
    RuntimeArtifact,
    RuntimeReport,
    artifact_problem,
    ranked_candidates,
    speed_score,
)


def artifact(
    name: str,
    speed: float,
    *,
    passed: bool = True,
    flags: list[str] | None = None,
    files: dict[str, str] | None = None,
) -> RuntimeArtifact:
    return RuntimeArtifact(
        name=name,
        runtime="openvino",
        precision="fp32",
        network_input="pixels",
        entry="model.xml",
        files=files or {},
        converter={"openvino": "2026.4.1"},
        cpu_flags=flags or [],
        max_abs_difference=1e-6,
        top1_agreement=1.0,
        test_accuracy=0.9,
        test_images=100,
        images_per_s={"1": speed, "8": speed * 4, "32": speed * 8},
        passed=passed,
        reason="" if passed else "failed",
    )


def report(*artifacts: RuntimeArtifact, savedmodel_speed: float = 100.0) -> RuntimeReport:
    return RuntimeReport(
        savedmodel_test_accuracy=0.9,
        savedmodel_images_per_s={
            "1": savedmodel_speed,
            "8": savedmodel_speed * 4,
            "32": savedmodel_speed * 8,
        },
        artifacts=list(artifacts),
    )


@pytest.mark.parametrize(
    ("agreement", "accuracy", "passes"),
    [
        (1.0, 0.9, True),
        (0.995, 0.898, True),  # both bounds are inclusive
        (0.994, 0.9, False),  # one flip too many
        (1.0, 0.897, False),  # accuracy fell by more than 0.002
        (0.996, 0.95, True),  # better than the SavedModel is fine
    ],
)
def test_the_equivalence_rule(agreement: float, accuracy: float, passes: bool) -> None:
    reason = EQUIVALENCE_RULE.judge(agreement, accuracy, savedmodel_accuracy=0.9)
    assert (reason == "") is passes
    if not passes:
        assert "agreement" in reason or "accuracy" in reason


def test_speed_score_is_the_geometric_mean_and_zero_when_a_size_is_missing() -> None:
    assert speed_score({"1": 10.0, "8": 100.0, "32": 1000.0}) == pytest.approx(100.0)
    assert speed_score({"1": 10.0, "8": 100.0}) == 0.0


def test_auto_ranks_passed_faster_runnable_artifacts_fastest_first() -> None:
    ranked = ranked_candidates(
        report(
            artifact("fast", 400),
            artifact("faster-but-failed", 900, passed=False),
            artifact("fastest-but-needs-amx", 1000, flags=["amx_bf16"]),
            artifact("slower-than-savedmodel", 90),
            artifact("medium", 200),
        ),
        cpu_flags={"avx2", "avx512_bf16"},
    )
    assert [a.name for a in ranked] == ["fast", "medium"]


def test_auto_leaves_an_artifact_behind_a_tensorflow_preprocess() -> None:
    behind = artifact("int8-after-preprocess", 900).model_copy(
        update={"network_input": "preprocessed"}
    )
    ranked = ranked_candidates(report(behind, artifact("fp32", 200)), cpu_flags={"avx2"})
    assert [a.name for a in ranked] == ["fp32"]


def write_artifact(version_dir: Path, name: str = "openvino-fp32") -> RuntimeArtifact:
    folder = version_dir / RUNTIMES_DIR / name
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"\x00" * 64)
    files = {
        p.relative_to(version_dir).as_posix(): sha256_file(p) for p in sorted(folder.iterdir())
    }
    return artifact(name, 300, files=files)


def test_an_intact_artifact_has_no_problem(tmp_path: Path) -> None:
    assert artifact_problem(tmp_path, write_artifact(tmp_path)) == ""


def test_a_changed_missing_or_added_file_is_named(tmp_path: Path) -> None:
    found = write_artifact(tmp_path)
    weights = tmp_path / RUNTIMES_DIR / "openvino-fp32" / "model.bin"
    weights.write_bytes(b"\x01" * 64)
    assert artifact_problem(tmp_path, found) == (
        f"checksum mismatch for {RUNTIMES_DIR}/openvino-fp32/model.bin"
    )
    weights.unlink()
    assert artifact_problem(tmp_path, found) == f"{RUNTIMES_DIR}/openvino-fp32/model.bin is missing"
    intact = write_artifact(tmp_path, "openvino-int8")
    (tmp_path / RUNTIMES_DIR / "openvino-int8" / "extra.so").write_bytes(b"x")
    assert "unlisted file(s)" in artifact_problem(tmp_path, intact)
    assert "is missing" in artifact_problem(tmp_path, artifact("openvino-bf16", 1))


def test_a_symbolic_link_in_an_artifact_is_refused(tmp_path: Path) -> None:
    found = write_artifact(tmp_path)
    os.symlink("/etc/passwd", tmp_path / RUNTIMES_DIR / "openvino-fp32" / "link")
    assert "symbolic link" in artifact_problem(tmp_path, found)


def test_the_version_checksums_leave_the_artifacts_out(tmp_path: Path) -> None:
    """A damaged artifact must cost its speed, not the version: the version's own checksums
    do not cover runtimes/ (each artifact lists its own)."""
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    write_artifact(tmp_path)
    assert list(checksum_tree(tmp_path)) == ["saved_model.pb"]
