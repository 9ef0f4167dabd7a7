"""serving.yaml edits keep the user's file: comments, order, other models; the result is
validated before it replaces the file, and replaced atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.rollout.serving_file import locked, set_labels, write_labels
from service.serving.config import ServingConfigError, parse_config

ORIGINAL = """\
# The team's serving configuration: edit with care.
models:
  digits:
    version_policy: {latest: 2}   # two newest loaded
    labels:
      stable: 1
    rollout: {step_weight: 0.25, max_weight: 0.5, interval_s: 30}
  photos:
    # photos never roll out automatically
    labels: {stable: 4, beta: {version: 5, weight: 0.2}}
"""


def test_a_canary_is_added_and_everything_else_is_kept() -> None:
    text = set_labels(ORIGINAL, "digits", set_to={"stable": (1, 0.0), "canary": (2, 0.25)})
    assert "# The team's serving configuration: edit with care." in text
    assert "# two newest loaded" in text and "# photos never roll out automatically" in text
    assert "canary: {version: 2, weight: 0.25}" in text
    config = parse_config(text)
    labels = config.models["digits"].labels
    assert (labels["canary"].version, labels["canary"].weight) == (2, 0.25)
    assert config.models["photos"] == parse_config(ORIGINAL).models["photos"]
    # Only the labels changed: the text differs by the canary line alone.
    assert [line for line in text.splitlines() if line not in ORIGINAL.splitlines()] == [
        "      canary: {version: 2, weight: 0.25}"
    ]


def test_promotion_moves_stable_and_removes_the_canary() -> None:
    with_canary = set_labels(ORIGINAL, "digits", set_to={"canary": (2, 0.5)})
    text = set_labels(
        with_canary, "digits", set_to={"stable": (2, 0.0), "previous": (1, 0.0)}, remove=("canary",)
    )
    labels = parse_config(text).models["digits"].labels
    assert {name: target.version for name, target in labels.items()} == {"stable": 2, "previous": 1}
    assert "canary" not in text


def test_a_file_without_the_model_gets_a_section(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    config = write_labels(path, "digits", set_to={"stable": (3, 0.0)})
    assert config.models["digits"].labels["stable"].version == 3
    assert parse_config(path.read_text()) == config


def test_an_edit_that_would_not_validate_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text(ORIGINAL)
    with pytest.raises(ServingConfigError, match=r"weights add up to 1\.1"), locked(path):
        # photos' beta already takes 0.2: a canary at 0.9 would exceed 1 in all.
        write_labels(path, "photos", set_to={"canary": (6, 0.9)})
    assert path.read_text() == ORIGINAL
    assert [p.name for p in tmp_path.iterdir() if p.name != "serving.yaml.lock"] == [
        "serving.yaml"
    ]  # no temporary file left behind


def test_a_torn_journal_line_does_not_swallow_the_next(tmp_path: Path) -> None:
    from service.rollout import journal

    path = tmp_path / "rollout.log"
    journal.append(path, {"model": "digits", "decision": "start"})
    with path.open("ab") as handle:
        handle.write(b'{"model": "digits", "decisi')  # a crash mid-write
    follower = journal.Follower(path)
    assert [e["decision"] for e in follower.new_entries()] == ["start"]
    journal.append(path, {"model": "digits", "decision": "rollback"})
    assert [e["decision"] for e in journal.entries(path)] == ["start", "rollback"]
    assert [e["decision"] for e in follower.new_entries()] == ["rollback"]
