"""The evaluation gate at publish, with real training runs: a new version is scored against the
model's stable version on the same examples, and blessed only when it is not worse than the rule
allows. The verdict and both versions' scores land in metadata.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.metadata import read_metadata, verify_version_dir
from tests.helpers.processes import run_train

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def train_one_epoch(models: Path, run_dir: Path, *flags: str) -> str:
    done = run_train(
        "--models-dir",
        str(models),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
        "--verbose",
        "0",
        *flags,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_worse_version_is_published_unblessed_and_a_looser_rule_blesses_it(
    repo_copy: Path, tmp_path: Path
) -> None:
    first = read_metadata(repo_copy / "digits" / "1")
    assert first.evaluation is not None and first.evaluation.blessed  # nothing to compare with
    assert first.evaluation.baseline is None

    # One epoch against the default run: clearly worse, so not blessed; still published.
    out = train_one_epoch(repo_copy, tmp_path / "run2")
    assert "(version 2)" in out and "NOT blessed" in out
    second = verify_version_dir(repo_copy / "digits" / "2")
    gate = second.evaluation
    assert gate is not None and not gate.blessed and not second.blessed
    assert gate.baseline is not None and gate.baseline.version == 1
    assert gate.baseline_label == "newest"
    assert "below version 1's" in gate.reason
    # The same examples: version 1 scored through its SavedModel on version 2's test split gets
    # exactly the test accuracy its own run measured, on the same number of examples.
    assert gate.baseline.accuracy == pytest.approx(first.metrics["test_accuracy"], abs=1e-6)
    assert gate.examples.count == first.training["examples"]["test"]
    assert gate.candidate.accuracy == pytest.approx(second.metrics["test_accuracy"], abs=1e-6)
    assert set(gate.candidate.per_class) == set(first.class_names)
    assert gate.examples.fingerprint == first.evaluation.examples.fingerprint

    # serving.yaml names the stable version and a looser gate for the model.
    (repo_copy / "serving.yaml").write_text(
        "models:\n  digits:\n    labels: {stable: 1}\n"
        "    gate: {max_accuracy_drop: 1.0, max_class_recall_drop: 1.0}\n"
    )
    out = train_one_epoch(repo_copy, tmp_path / "run3")
    third = read_metadata(repo_copy / "digits" / "3").evaluation
    assert third is not None and third.blessed, out
    assert third.baseline_label == "stable" and third.baseline is not None
    assert third.baseline.version == 1  # not the unblessed version 2
    assert third.rule.max_accuracy_drop == 1.0

    # A flag wins over serving.yaml.
    train_one_epoch(repo_copy, tmp_path / "run4", "--gate-max-accuracy-drop", "0")
    fourth = read_metadata(repo_copy / "digits" / "4").evaluation
    assert fourth is not None and fourth.rule.max_accuracy_drop == 0.0
    assert fourth.rule.max_class_recall_drop == 1.0


def test_init_from_starts_at_the_published_weights_and_refuses_what_cannot_match(
    repo_copy: Path, tmp_path: Path
) -> None:
    first = read_metadata(repo_copy / "digits" / "1")
    assert (repo_copy / "digits" / "1" / "model.weights.h5").is_file()
    out = train_one_epoch(repo_copy, tmp_path / "run2", "--init-from", "1")
    warm = read_metadata(repo_copy / "digits" / "2")
    assert warm.training["init_from"] == 1
    # One epoch from version 1's weights keeps (about) version 1's accuracy; one epoch from
    # scratch (the test above) does not come close.
    assert warm.metrics["test_accuracy"] >= first.metrics["test_accuracy"] - 0.03, out

    for flags, says in [
        (("--init-from", "9"), "--init-from 9"),
        (("--init-from", "1", "--arch", "lenet5"), "this run builds a lenet5"),
    ]:
        done = run_train(
            "--models-dir",
            str(repo_copy),
            "--run-dir",
            str(tmp_path / "bad"),
            "--epochs",
            "1",
            *flags,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert says in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (repo_copy / "digits").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]
