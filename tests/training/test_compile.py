"""Compiled runtimes at publish: every artifact checked against the SavedModel on the test
split and recorded in metadata.json; ``python -m training.compile`` for older versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.metadata import read_metadata, verify_version_dir
from contract.runtimes import (
    EQUIVALENCE_RULE,
    MEASURED_BATCH_SIZES,
    PREPROCESS_ENDPOINT,
    RUNTIMES_DIR,
    artifact_problem,
)
from tests.helpers.processes import run_module


@pytest.mark.e2e  # the shared trained model
def test_publish_compiles_checks_and_records_every_artifact(trained_repo: Path) -> None:
    version_dir = trained_repo / "digits" / "1"
    metadata = verify_version_dir(version_dir)
    report = metadata.runtimes
    assert report is not None
    assert report.rule == EQUIVALENCE_RULE
    assert report.savedmodel_test_accuracy == pytest.approx(
        metadata.metrics["test_accuracy"], abs=0.01
    )
    names = [a.name for a in report.artifacts]
    assert names[0] == "openvino-fp32" and "openvino-int8" in names
    for artifact in report.artifacts:
        assert artifact_problem(version_dir, artifact) == ""  # checksums cover its files
        assert set(artifact.images_per_s) == {str(size) for size in MEASURED_BATCH_SIZES}
        assert min(artifact.images_per_s.values()) > 0
        assert artifact.converter["openvino"] and artifact.test_images >= 300
        # The whole model converts, the digits' normalisation included: pixels in, no
        # TensorFlow preprocess beside the artifact.
        assert artifact.network_input == "pixels"
        assert not (version_dir / RUNTIMES_DIR / artifact.name / PREPROCESS_ENDPOINT).exists()
        verdict = EQUIVALENCE_RULE.judge(
            artifact.top1_agreement, artifact.test_accuracy, report.savedmodel_test_accuracy
        )
        assert artifact.passed is (verdict == "") and artifact.reason == verdict
    # Pixels in, probabilities out; int8 quantizes the network only: no FakeQuantize feeds an
    # operation of the grey conversion or the digit normalisation.
    import openvino as ov

    for artifact in report.artifacts:
        ir = ov.Core().read_model(str(version_dir / RUNTIMES_DIR / artifact.name / "model.xml"))
        assert [str(i.get_partial_shape()) for i in ir.inputs] == ["[?,28,28,3]"]
        assert str(ir.outputs[0].get_partial_shape()) == f"[?,{metadata.num_classes}]"
        fed = [
            target.get_node().get_friendly_name()
            for op in ir.get_ordered_ops()
            if op.get_type_name() == "FakeQuantize"
            for output in op.outputs()
            for target in output.get_target_inputs()
        ]
        assert bool(fed) is (artifact.precision == "int8")
        assert not [name for name in fed if "/grayscale" in name or "/normalize_digits" in name]
    fp32 = report.artifacts[0]
    # The same network in the same precision: the same answers.
    assert fp32.passed and fp32.top1_agreement == 1.0 and fp32.max_abs_difference < 1e-4
    int8 = report.artifact("openvino-int8")
    assert int8 is not None and (
        version_dir / RUNTIMES_DIR / int8.name / "model.bin"
    ).stat().st_size < ((version_dir / RUNTIMES_DIR / fp32.name / "model.bin").stat().st_size / 2)


@pytest.mark.e2e  # runs python -m training.compile
def test_compile_cli_compiles_a_version_published_without_runtimes(
    trained_repo: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_repo, models)
    version_dir = models / "digits" / "1"
    # As published before compiled runtimes: no runtimes/ and no report.
    shutil.rmtree(version_dir / RUNTIMES_DIR)
    raw = json.loads((version_dir / "metadata.json").read_text())
    del raw["runtimes"]
    (version_dir / "metadata.json").write_text(json.dumps(raw))
    assert verify_version_dir(version_dir).runtimes is None

    done = run_module("training.compile", str(version_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{RUNTIMES_DIR}/openvino-fp32: top-1 agreement 1.0000" in done.stdout
    metadata = verify_version_dir(version_dir)  # still whole: its own files untouched
    assert metadata.runtimes is not None
    fp32 = metadata.runtimes.artifact("openvino-fp32")
    assert fp32 is not None and fp32.passed
    assert artifact_problem(version_dir, fp32) == ""
    original = read_metadata(trained_repo / "digits" / "1").runtimes
    assert original is not None
    # The test split was made again from the recorded options: the same images.
    assert fp32.test_images == original.artifacts[0].test_images
    assert metadata.runtimes.savedmodel_test_accuracy == original.savedmodel_test_accuracy
    assert not list(models.glob("digits/.compile-*"))  # no staging folder left behind


@pytest.mark.e2e  # runs python -m training.compile
def test_compile_cli_refuses_a_damaged_version(trained_repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_repo, models)
    version_dir = models / "digits" / "1"
    weights = version_dir / "saved_model.pb"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    done = run_module("training.compile", str(version_dir))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {version_dir} cannot be compiled: checksum mismatch for saved_model.pb"
    )
