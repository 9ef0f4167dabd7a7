"""Tests for service.serving.config: parsing ``serving.yaml`` and watching it for changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.serving.config import (
    DEFAULT_CONFIG,
    DEFAULT_MODEL_CONFIG,
    MAX_CONFIG_BYTES,
    ConfigWatcher,
    LabelTarget,
    LatestPolicy,
    ModelLimits,
    ServingConfigError,
    SpecificPolicy,
    parse_config,
    select_versions,
)

FULL = """
models:
  digits:
    version_policy: {latest: 2}
    labels:
      stable: 3
      canary: {version: 4, weight: 0.1}
    limits: {max_batch_size: 16, max_queue_size: 64, batch_timeout_s: 0.002}
  other:
    version_policy: {specific: [1, 3]}
  third:
    version_policy: all
"""


def test_parse_config_example_of_the_module_docstring_is_valid() -> None:
    import service.serving.config as module

    assert module.__doc__ is not None
    example = module.__doc__.split("```yaml")[1].split("```")[0]
    config = parse_config(example)
    assert config.for_model("digits").labels["canary"] == LabelTarget(version=4, weight=0.1)


def test_a_full_file_parses_into_policies_labels_and_limits() -> None:
    config = parse_config(FULL)
    digits = config.for_model("digits")
    assert digits.version_policy == LatestPolicy(latest=2)
    assert digits.labels == {
        "stable": LabelTarget(version=3, weight=0.0),
        "canary": LabelTarget(version=4, weight=0.1),
    }
    assert digits.limits == ModelLimits(max_batch_size=16, max_queue_size=64, batch_timeout_s=0.002)
    assert digits.describe_policy() == "latest 2"
    assert config.for_model("other").version_policy == SpecificPolicy(specific=[1, 3])
    assert config.for_model("other").describe_policy() == "specific [1, 3]"
    assert config.for_model("third").version_policy == "all"
    assert config.for_model("third").describe_policy() == "all"


def test_models_not_in_the_file_and_an_empty_file_get_the_defaults() -> None:
    assert parse_config(FULL).for_model("nobody") is DEFAULT_MODEL_CONFIG
    assert parse_config("") is DEFAULT_CONFIG
    assert parse_config("# only a comment\n") is DEFAULT_CONFIG
    assert DEFAULT_MODEL_CONFIG.version_policy == LatestPolicy(latest=1)
    assert DEFAULT_MODEL_CONFIG.labels == {}
    assert parse_config("models: {digits: {}}").for_model("digits") == DEFAULT_MODEL_CONFIG


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: [digits", ["serving.yaml", "line 1"]),
        ("- just\n- a list\n", ["expected a mapping", "'models'"]),
        ("modles: {}", ["modles", "Extra inputs are not permitted"]),
        ("models: {digits: {version_polcy: all}}", ["version_polcy"]),
        ("models: {digits: {labels: {stable: {version: 3, wieght: 0.1}}}}", ["wieght"]),
        ("models: {digits: {limits: {max_batch: 4}}}", ["max_batch"]),
        ("models: {digits: {version_policy: {latest: 0}}}", ["latest"]),
        ("models: {digits: {version_policy: {specific: []}}}", ["specific"]),
        ("models: {digits: {version_policy: {specific: [0]}}}", ["specific"]),
        ("models: {digits: {version_policy: newest}}", ["version_policy"]),
        ("models: {digits: {labels: {stable: 0}}}", ["labels.stable"]),
        ("models: {digits: {labels: {'9lives': 1}}}", ["'9lives'", "starting with a letter"]),
        ("models: {digits: {labels: {canary: {version: 2, weight: 1.5}}}}", ["weight"]),
        ("models: {digits: {labels: {canary: {version: 2, weight: -0.1}}}}", ["weight"]),
        (
            "models: {digits: {labels: "
            "{a: {version: 2, weight: 0.6}, b: {version: 3, weight: 0.5}}}}",
            ["add up to 1.1", "at most 1"],
        ),
        (
            "models: {digits: {limits: {max_batch_size: 8, max_queue_size: 4}}}",
            ["max_queue_size (4)", "max_batch_size (8)"],
        ),
        ("models: {digits: {limits: {batch_timeout_s: -1}}}", ["batch_timeout_s"]),
        (
            "models: {digits: {rollout: {step_weight: 0.6, max_weight: 0.5}}}",
            ["step_weight (0.6) must be <= rollout.max_weight (0.5)"],
        ),
        ("models: {digits: {rollout: {threshold: 0}}}", ["rollout.threshold"]),
        (
            "models: {digits: {labels: {beta: {version: 2, weight: 0.6}}, rollout: {}}}",
            ["rollout.max_weight (0.5) and the other labels' weights (0.6)"],
        ),
        (
            "models: {digits: {rollout: {checks: {error_ratio_max_delta: 2}}}}",
            ["rollout.checks.error_ratio_max_delta"],
        ),
    ],
    ids=[
        "bad-yaml",
        "not-a-mapping",
        "unknown-top-key",
        "unknown-model-key",
        "unknown-label-key",
        "unknown-limit",
        "latest-zero",
        "specific-empty",
        "specific-zero",
        "unknown-policy",
        "label-version-zero",
        "label-name",
        "weight-above-one",
        "weight-negative",
        "weights-sum-above-one",
        "queue-smaller-than-batch",
        "negative-timeout",
        "rollout-step-above-max",
        "rollout-threshold-zero",
        "rollout-beside-other-weights",
        "rollout-check-out-of-range",
    ],
)
def test_invalid_files_are_rejected_with_a_message_naming_the_problem(
    text: str, words: list[str]
) -> None:
    with pytest.raises(ServingConfigError) as caught:
        parse_config(text)
    for word in words:
        assert word in str(caught.value)
    assert str(caught.value).startswith("serving.yaml")


def test_weights_summing_to_exactly_one_are_accepted() -> None:
    config = parse_config(
        "models: {digits: {labels: {a: {version: 2, weight: 0.7}, b: {version: 3, weight: 0.3}}}}"
    )
    assert sum(t.weight for t in config.for_model("digits").labels.values()) == pytest.approx(1)


def test_labels_with_plain_versions_are_shorthand_for_a_version_without_weight() -> None:
    config = parse_config("models: {digits: {labels: {stable: 3, canary: {version: 4}}}}")
    assert config.for_model("digits").labels == {
        "stable": LabelTarget(version=3),
        "canary": LabelTarget(version=4),
    }


@pytest.mark.parametrize(
    ("policy", "candidates", "expected"),
    [
        (LatestPolicy(), [1, 2, 3], [3]),
        (LatestPolicy(latest=2), [3, 1, 2], [3, 2]),
        (LatestPolicy(latest=5), [1, 2], [2, 1]),
        (LatestPolicy(latest=2), [], []),
        (SpecificPolicy(specific=[1, 3]), [1, 2, 3, 4], [3, 1]),
        (SpecificPolicy(specific=[7]), [1, 2], []),
        ("all", [2, 1, 2, 5], [5, 2, 1]),
    ],
)
def test_select_versions_applies_the_policy_newest_first(
    policy: LatestPolicy | SpecificPolicy | str, candidates: list[int], expected: list[int]
) -> None:
    assert select_versions(policy, candidates) == expected  # type: ignore[arg-type]


# --- ConfigWatcher ---------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as an editor or a deploy tool would: temp file, rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_no_file_means_the_defaults_and_no_change(tmp_path: Path) -> None:
    watcher = ConfigWatcher(tmp_path / "serving.yaml")
    state = watcher.refresh()
    assert state.config is DEFAULT_CONFIG
    assert not state.changed and state.problem is None and state.digest is None


def test_the_watcher_reports_a_change_only_when_the_content_changes(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    watcher = ConfigWatcher(path)
    write_atomically(path, "models: {digits: {labels: {stable: 1}}}")
    first = watcher.refresh()
    assert first.changed
    assert watcher.config.for_model("digits").labels == {"stable": LabelTarget(version=1)}

    assert not watcher.refresh().changed  # same content
    write_atomically(path, "models: {digits: {labels: {stable: 1}}}")
    assert not watcher.refresh().changed  # rewritten, same bytes

    write_atomically(path, "models: {digits: {labels: {stable: 2}}}")
    assert watcher.refresh().changed
    assert watcher.config.for_model("digits").labels == {"stable": LabelTarget(version=2)}
    assert watcher.problem is None


def test_an_invalid_file_keeps_the_last_good_config_and_reports_the_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "serving.yaml"
    watcher = ConfigWatcher(path)
    write_atomically(path, "models: {digits: {version_policy: {latest: 2}}}")
    watcher.refresh()
    good = watcher.config

    write_atomically(path, "models: {digits: {version_policy: {latest: 2}, labelz: {}}}")
    with caplog.at_level("WARNING", logger="service.serving.config"):
        state = watcher.refresh()
    assert not state.changed
    assert watcher.config is good
    assert watcher.problem is not None and "labelz" in watcher.problem
    assert "keeping the last good serving configuration" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="service.serving.config"):
        assert not watcher.refresh().changed  # the same bad file: not logged again
    assert caplog.text == ""
    assert watcher.problem is not None

    write_atomically(path, "models: {digits: {version_policy: all}}")
    state = watcher.refresh()
    assert state.changed and watcher.problem is None
    assert watcher.config.for_model("digits").version_policy == "all"


def test_an_invalid_file_at_start_serves_the_defaults_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text("models: {digits: {version_policy: {latest: -1}}}")
    watcher = ConfigWatcher(path)
    state = watcher.refresh()
    assert state.config is DEFAULT_CONFIG
    assert watcher.problem is not None and "latest" in watcher.problem


def test_removing_the_file_returns_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    watcher = ConfigWatcher(path)
    write_atomically(path, "models: {digits: {version_policy: all}}")
    watcher.refresh()
    path.unlink()
    state = watcher.refresh()
    assert state.changed and state.config is DEFAULT_CONFIG and state.problem is None
    assert not watcher.refresh().changed


def test_removing_an_invalid_file_clears_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    watcher = ConfigWatcher(path)
    path.write_text("models: [")
    watcher.refresh()
    assert watcher.problem is not None
    path.unlink()
    watcher.refresh()
    assert watcher.problem is None and watcher.config is DEFAULT_CONFIG


def test_an_oversized_file_is_refused_not_read(tmp_path: Path) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    watcher = ConfigWatcher(path)
    watcher.refresh()
    assert (
        watcher.problem is not None and f"larger than {MAX_CONFIG_BYTES} bytes" in watcher.problem
    )
    assert watcher.config is DEFAULT_CONFIG


def test_removing_an_unreadable_file_clears_the_problem_and_returns_to_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "serving.yaml"
    watcher = ConfigWatcher(path)
    write_atomically(path, "models: {digits: {version_policy: all}}")
    watcher.refresh()
    write_atomically(path, "# " + "x" * MAX_CONFIG_BYTES + "\n")  # unreadable: too large
    watcher.refresh()
    assert watcher.problem is not None and watcher.state.digest is not None  # still present
    assert watcher.config.for_model("digits").version_policy == "all"  # last good
    path.unlink()
    state = watcher.refresh()
    assert state.changed and watcher.problem is None and watcher.config is DEFAULT_CONFIG


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "models: {digits: {version_policy: {latst: 2}}}",
            "serving.yaml: models.digits.version_policy: "
            "must be {latest: N}, {specific: [versions]} or all",
        ),
        (
            "models: {digits: {version_policy: {latest: 0}}}",
            "serving.yaml: models.digits.version_policy.latest: "
            "Input should be greater than or equal to 1",
        ),
        (
            "models: {digits: {labels: {a: {version: 2, weight: 0.6}, b: {version: 3, "
            "weight: 0.5}}}, other: {lables: {}}}",
            "serving.yaml: 2 problems: models.digits.labels: label weights add up to 1.1; "
            "at most 1 in all; models.other.lables: Extra inputs are not permitted",
        ),
    ],
    ids=["policy-typo", "policy-value", "two-typos"],
)
def test_an_invalid_file_is_described_in_its_own_terms_each_problem_once(
    text: str, message: str
) -> None:
    """No class names of ours, no pydantic prefixes, one problem per mistake, every one."""
    with pytest.raises(ServingConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == message


def test_an_invalid_file_at_start_says_the_defaults_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "serving.yaml"
    path.write_text("models: {digits: {version_policy: {latest: -1}}}")
    with caplog.at_level("WARNING", logger="service.serving.config"):
        ConfigWatcher(path).refresh()
    assert "no good configuration yet: every model serves its latest version" in caplog.text
    assert "keeping the last good" not in caplog.text
