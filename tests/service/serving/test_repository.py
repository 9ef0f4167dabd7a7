"""Tests for service.serving.repository: every model folder served with its own policy, labels
and limits, and which version a request gets (the stores' version policies:
test_model_store.py).

Version folders are published by the real publishing code with a tiny stand-in file instead of a
SavedModel; a fake loader returns a model whose ``predict`` is numpy, so no TensorFlow runs (see
:mod:`tests.helpers.models`). A refusal is checked as the HTTP answer the service gives it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from contract.metadata import ModelMetadata
from service.http.errors import ClientError
from service.serving.config import LabelTarget, ModelConfig, ModelLimits
from service.serving.errors import ModelNotFound, ModelNotReady
from service.serving.model_store import LoadedModel
from service.serving.repository import Limits, ModelRepository, ServedModel
from service.settings import Settings
from tests.helpers.answers import http_answer
from tests.helpers.models import FakeLoader, publish_fake

pytestmark = pytest.mark.timeout(60)

_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run one async test body on a fresh event loop (no pytest-asyncio in this project)."""
    return asyncio.run(coro)


# --- ServedModel: which version an unpinned request gets --------------------------------------


def served_model(
    served: set[int], labels: dict[str, LabelTarget], unblessed: frozenset[int] = frozenset()
) -> ServedModel:
    """A model serving ``served``; the evaluation gate blessed all but ``unblessed``."""
    models = {
        v: SimpleNamespace(version=v, metadata=SimpleNamespace(blessed=v not in unblessed))
        for v in served
    }
    return ServedModel(
        name="digits",
        store=SimpleNamespace(served=models),  # type: ignore[arg-type]
        batcher=None,  # type: ignore[arg-type]
        limits=None,  # type: ignore[arg-type]
        config=ModelConfig(labels=labels),
    )


def picked(model: ServedModel, point: float) -> int | None:
    chosen = model.pick_unpinned(lambda: point)
    return None if chosen is None else chosen.version


def test_a_weighted_label_takes_its_share_of_the_draws() -> None:
    model = served_model(
        {3, 4}, {"stable": LabelTarget(version=3), "canary": LabelTarget(version=4, weight=0.3)}
    )
    assert [picked(model, p) for p in (0.0, 0.1, 0.2999)] == [4, 4, 4]
    assert [picked(model, p) for p in (0.3, 0.5, 0.9999)] == [3, 3, 3]


def test_several_weighted_labels_split_the_draws_in_order() -> None:
    model = served_model(
        {2, 4, 5},
        {"a": LabelTarget(version=4, weight=0.2), "b": LabelTarget(version=5, weight=0.3)},
    )
    assert [picked(model, p) for p in (0.05, 0.19)] == [4, 4]
    assert [picked(model, p) for p in (0.2, 0.49)] == [5, 5]
    assert [picked(model, p) for p in (0.5, 0.99)] == [2, 2]  # the newest version no label takes


def test_an_unserved_canary_gives_its_share_to_the_default_version() -> None:
    model = served_model(
        {2, 3}, {"stable": LabelTarget(version=3), "canary": LabelTarget(version=7, weight=0.5)}
    )
    assert [picked(model, p) for p in (0.0, 0.4, 0.6)] == [3, 3, 3]


def test_weight_one_sends_every_unpinned_request_to_the_label() -> None:
    model = served_model({1, 2}, {"canary": LabelTarget(version=1, weight=1.0)})
    assert [picked(model, p) for p in (0.0, 0.5, 0.9999)] == [1, 1, 1]


def test_a_random_draw_respects_the_weight() -> None:
    model = served_model({3, 4}, {"canary": LabelTarget(version=4, weight=0.3)})
    rng = random.Random(7)
    n = 20_000
    canary = sum(picked(model, rng.random()) == 4 for _ in range(n))
    # 5 standard deviations of Binomial(n, 0.3): a seeded draw, but the bound is honest.
    assert abs(canary - 0.3 * n) <= 5 * (n * 0.3 * 0.7) ** 0.5


@pytest.mark.parametrize(
    ("served", "labels", "expected"),
    [
        ({1, 2, 3}, {}, 3),
        ({2, 3, 4}, {"canary": LabelTarget(version=4, weight=0.1)}, 3),
        ({2, 3}, {"beta": LabelTarget(version=2)}, 3),  # other weightless labels pin nothing
        ({2, 3}, {"stable": LabelTarget(version=2)}, 2),  # ... but "stable" does
        ({2, 3, 4}, {"stable": LabelTarget(version=2), "c": LabelTarget(version=4, weight=0.2)}, 2),
        ({3, 4}, {"stable": LabelTarget(version=2)}, 4),  # stable not served: the rule above
        ({2, 3}, {"stable": LabelTarget(version=3, weight=0.5)}, 3),
        ({4}, {"canary": LabelTarget(version=4, weight=0.1)}, 4),  # only weighted: newest
        (
            {3, 4},
            {"c": LabelTarget(version=4, weight=0.5), "d": LabelTarget(version=3, weight=0.5)},
            4,
        ),
        (set(), {}, None),
    ],
    ids=[
        "newest",
        "skip-canary",
        "weightless-label",
        "stable",
        "stable-beside-canary",
        "stable-unserved",
        "weighted-stable",
        "only-canary",
        "all-weighted",
        "none",
    ],
)
def test_default_version_is_stable_else_the_newest_that_no_weighted_label_takes(
    served: set[int], labels: dict[str, LabelTarget], expected: int | None
) -> None:
    default = served_model(served, labels).default_version()
    assert (default.version if default is not None else None) == expected


@pytest.mark.parametrize(
    ("served", "labels", "unblessed", "expected"),
    [
        ({1, 2}, {}, {2}, 1),  # the new version failed the gate: the old one keeps serving
        ({1, 2, 3}, {}, {3}, 2),
        ({1, 2}, {"stable": LabelTarget(version=2)}, {2}, 2),  # a person pinned it: it serves
        ({1, 2}, {"canary": LabelTarget(version=2, weight=0.5)}, {1}, 2),  # only 2 is blessed
        ({2}, {}, {2}, 2),  # nothing blessed is served: better than no answer
    ],
    ids=["newest-unblessed", "skips-to-newest-blessed", "stable-wins", "weighted-blessed", "none"],
)
def test_an_unblessed_version_gets_unpinned_traffic_only_when_a_label_sends_it(
    served: set[int], labels: dict[str, LabelTarget], unblessed: set[int], expected: int
) -> None:
    model = served_model(served, labels, frozenset(unblessed))
    default = model.default_version()
    assert default is not None and default.version == expected


def test_limits_are_the_settings_overridden_per_model(tmp_path: Path) -> None:
    settings = Settings(
        models_dir=tmp_path, max_batch_size=8, max_queue_size=32, request_timeout_s=5
    )
    assert Limits.of(settings, ModelConfig()) == Limits(8, 32, settings.batch_timeout_s, 5.0)
    own = ModelConfig(limits=ModelLimits(max_batch_size=64, batch_timeout_s=0.0))
    limits = Limits.of(settings, own)
    assert limits.max_batch_size == 64 and limits.batch_timeout_s == 0.0
    assert limits.max_queue_size == 64  # grown to hold one batch
    assert (
        Limits.of(settings, ModelConfig(limits=ModelLimits(max_queue_size=4))).max_queue_size == 4
    )


# --- ModelRepository --------------------------------------------------------------------------

CONFIG = """
models:
  digits:
    version_policy: {latest: 2}
    labels:
      stable: 2
      canary: {version: 3, weight: 0.3}
      old: 9  # not on disk: the label names a version that cannot be served
"""


@pytest.fixture()
def repository_dir(three_versions: Path) -> Path:
    publish_fake(three_versions, "other")
    (three_versions / "serving.yaml").write_text(CONFIG)
    return three_versions


def make_repository(models_dir: Path, **settings: Any) -> ModelRepository:
    return ModelRepository(
        Settings(models_dir=models_dir, max_batch_size=2, **settings), loader=FakeLoader()
    )


async def polled(repository: ModelRepository) -> ModelRepository:
    await repository.poll_once()
    return repository


def resolve_error(repository: ModelRepository, *args: Any, **kwargs: Any) -> ClientError:
    """The refusal of ``resolve``, as the HTTP answer the service gives it (the edge table)."""
    with pytest.raises((ModelNotFound, ModelNotReady)) as caught:
        repository.resolve(*args, **kwargs)
    return http_answer(caught.value, retry_after_s=repository.settings.retry_after_s)


def test_every_model_folder_is_served_with_its_own_policy(repository_dir: Path) -> None:
    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            assert repository.names() == ["digits", "other"]
            assert sorted(repository.models["digits"].store.served) == [2, 3]
            assert sorted(repository.models["other"].store.served) == [1]
            assert repository.ready
            served, model = repository.resolve()
            assert served.name == "digits" and model.version in (2, 3)
            assert repository.resolve("digits", version="3")[1].version == 3
            assert repository.resolve("digits", version=2)[1].version == 2
            assert repository.resolve("digits", label="stable")[1].version == 2
            assert repository.resolve("digits", label="canary")[1].version == 3
            assert repository.resolve("other")[1].version == 1
            assert repository.models["digits"].batcher is not repository.models["other"].batcher
        finally:
            await repository.stop()

    run(body())


def test_unknown_model_version_or_label_is_a_404_naming_what_exists(repository_dir: Path) -> None:
    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            error = resolve_error(repository, "nope")
            assert error.status_code == 404
            assert "'nope'" in error.detail and "'digits', 'other'" in error.detail

            error = resolve_error(repository, "digits", version="9")
            assert error.status_code == 404
            assert "version '9' of 'digits' is not served" in error.detail
            assert "served: 3, 2 (latest 2)" in error.detail

            error = resolve_error(repository, "digits", version="three")
            assert error.status_code == 404 and "served: 3, 2" in error.detail

            error = resolve_error(repository, "digits", label="beta")
            assert error.status_code == 404
            assert "no label 'beta'" in error.detail
            assert "canary -> 3, old -> 9, stable -> 2" in error.detail

            error = resolve_error(repository, "digits", label="old")
            assert error.status_code == 404
            assert "points to version 9, which is not served" in error.detail

            error = resolve_error(repository, "other", label="stable")
            assert error.status_code == 404 and "labels: none" in error.detail
        finally:
            await repository.stop()

    run(body())


def test_unpinned_requests_follow_the_label_weights(repository_dir: Path) -> None:
    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            random.seed(11)
            n = 4000
            versions = [repository.resolve("digits")[1].version for _ in range(n)]
            assert set(versions) == {2, 3}
            canary = versions.count(3)
            assert abs(canary - 0.3 * n) <= 5 * (n * 0.3 * 0.7) ** 0.5
        finally:
            await repository.stop()

    run(body())


def test_before_the_first_scan_and_without_the_default_model_it_is_503(
    repository_dir: Path,
) -> None:
    async def body() -> None:
        repository = make_repository(repository_dir)
        error = resolve_error(repository)
        assert error.status_code == 503 and error.headers == {"Retry-After": "1"}
        missing = await polled(make_repository(repository_dir, model_name="cats"))
        try:
            error = resolve_error(missing)
            assert error.status_code == 503
            assert "--model-name cats" in error.detail
            assert not missing.ready
            assert missing.resolve("digits")[1].version in (2, 3)  # the others still serve
        finally:
            await missing.stop()

    run(body())


def test_config_changes_move_labels_and_invalid_files_keep_the_last_good(
    repository_dir: Path,
) -> None:
    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            config_path = repository_dir / "serving.yaml"
            config_path.write_text(CONFIG.replace("stable: 2", "stable: 3"))
            await repository.poll_once()
            assert repository.resolve("digits", label="stable")[1].version == 3

            config_path.write_text(CONFIG + "    colour: blue\n")
            await repository.poll_once()
            assert repository.config_watcher.problem is not None
            assert "colour" in repository.config_watcher.problem
            assert repository.resolve("digits", label="stable")[1].version == 3
            assert sorted(repository.models["digits"].store.served) == [2, 3]

            config_path.unlink()  # no file: the latest version of each model, no labels
            await repository.poll_once()
            assert repository.config_watcher.problem is None
            assert sorted(repository.models["digits"].store.served) == [3]
            assert resolve_error(repository, "digits", label="stable").status_code == 404
        finally:
            await repository.stop()

    run(body())


def test_models_that_appear_or_disappear_are_picked_up(repository_dir: Path) -> None:
    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            publish_fake(repository_dir, "third")
            await repository.poll_once()
            assert repository.names() == ["digits", "other", "third"]
            assert repository.resolve("third")[1].version == 1

            for path in sorted((repository_dir / "other").rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            (repository_dir / "other").rmdir()
            await repository.poll_once()
            assert repository.names() == ["digits", "third"]
            assert resolve_error(repository, "other").status_code == 404
        finally:
            await repository.stop()

    run(body())


def test_per_model_limits_give_a_model_its_own_batcher_settings(repository_dir: Path) -> None:
    async def body() -> None:
        (repository_dir / "serving.yaml").write_text(
            "models: {other: {limits: {max_batch_size: 4, max_queue_size: 8}}}"
        )
        repository = await polled(make_repository(repository_dir, max_queue_size=16))
        try:
            assert repository.models["other"].limits.max_batch_size == 4
            assert repository.models["other"].limits.max_queue_size == 8
            assert repository.models["digits"].limits.max_batch_size == 2
            assert repository.models["digits"].limits.max_queue_size == 16
            old = repository.models["other"].batcher
            (repository_dir / "serving.yaml").write_text("models: {}")
            await repository.poll_once()
            assert repository.models["other"].limits.max_batch_size == 2
            assert repository.models["other"].batcher is not old  # new limits, new batcher
        finally:
            await repository.stop()

    run(body())


def test_a_label_moves_only_once_its_new_version_is_loaded(repository_dir: Path) -> None:
    """One edit that both starts serving version 1 and points ``stable`` at it: while version 1
    loads, ``stable`` must still answer with its old version, not 404."""
    seen_while_loading: list[int] = []

    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        loader = repository._loader
        assert isinstance(loader, FakeLoader)

        def spying(path: Path, metadata: ModelMetadata) -> LoadedModel:
            if metadata.version == 1:
                seen_while_loading.append(repository.resolve("digits", label="stable")[1].version)
            return loader(path, metadata)

        repository._loader = spying
        repository.models["digits"].store._loader = spying
        try:
            (repository_dir / "serving.yaml").write_text(
                CONFIG.replace("latest: 2", "latest: 3").replace("stable: 2", "stable: 1")
            )
            await repository.poll_once()
            assert seen_while_loading == [2]
            assert repository.resolve("digits", label="stable")[1].version == 1
        finally:
            await repository.stop()

    run(body())


def test_a_new_publish_keeps_labelled_versions_and_their_traffic(repository_dir: Path) -> None:
    """``latest: 2`` with ``stable: 2`` and a canary on 3: publishing version 4 must not retire
    ``stable`` (versions labels name are always served) nor send it unreviewed traffic."""

    async def body() -> None:
        repository = await polled(make_repository(repository_dir))
        try:
            assert publish_fake(repository_dir) == 4
            await repository.poll_once()
            assert sorted(repository.models["digits"].store.served) == [2, 3, 4]
            assert repository.resolve("digits", label="stable")[1].version == 2
            assert repository.resolve("digits", version=4)[1].version == 4  # pinned: reachable
            random.seed(5)
            unpinned = {repository.resolve("digits")[1].version for _ in range(500)}
            assert unpinned == {2, 3}  # stable and the canary; never the new version
        finally:
            await repository.stop()

    run(body())


def test_a_label_naming_a_missing_version_is_logged_once_and_explained(
    repository_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``old: 9`` names a version that is not on disk: accepted (the file is valid), logged
    once (not at every poll) and explained by ``label_problems`` (shown on GET /models)."""

    async def body() -> dict[str, str]:
        repository = make_repository(repository_dir)
        try:
            with caplog.at_level("WARNING", logger="service.serving.repository"):
                await repository.poll_once()
                await repository.poll_once()
            return repository.models["digits"].label_problems()
        finally:
            await repository.stop()

    problems = run(body())
    assert problems == {"old": f"version 9 is not in {repository_dir / 'digits'}"}
    assert caplog.text.count("label 'old' of 'digits' is not served") == 1


def test_without_split_an_unpinned_request_gets_the_default_version(repository_dir: Path) -> None:
    """``/explain`` resolves without the canary split: always the version ``stable`` names."""

    async def body() -> set[int]:
        repository = await polled(make_repository(repository_dir))
        try:
            return {repository.resolve("digits", split=False)[1].version for _ in range(50)}
        finally:
            await repository.stop()

    assert run(body()) == {2}
