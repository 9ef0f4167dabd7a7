"""Tests for service.serving.model_store: which versions a model's store serves under each
version policy (on real version folders with fake models, see :mod:`tests.helpers.models`), and
the heap freeze around a model swap (one of the /predict hot-path changes, see BENCHMARKS.md):
frozen once a model is served, unfrozen on a swap, refrozen once the old one is gone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from contract.metadata import InvalidModelVersionError
from service.serving import runtimes
from service.serving.config import LatestPolicy, SpecificPolicy
from service.serving.model_store import LoadedModel, ModelStore, warm_up
from service.serving.runtimes import SAVEDMODEL_CHOICE, RuntimeChoice
from tests.helpers.models import FakeLoader, loaded_model, publish_fake

pytestmark = pytest.mark.timeout(60)

_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run one async test body on a fresh event loop (no pytest-asyncio in this project)."""
    return asyncio.run(coro)


# --- version policies on real version folders -------------------------------------------------


def make_store(models_dir: Path, loader: FakeLoader, policy: Any = None) -> ModelStore:
    return ModelStore(
        models_dir / "digits",
        repository_root=models_dir,
        max_batch_size=2,
        loader=loader,
        policy=policy,
    )


def states(store: ModelStore) -> dict[int, str]:
    return {row.version: row.state for row in store.statuses()}


def test_latest_two_serves_the_two_newest(three_versions: Path) -> None:
    loader = FakeLoader()
    store = make_store(three_versions, loader, LatestPolicy(latest=2))
    current = run(store.poll_once())
    assert current is not None and current.version == 3
    assert sorted(store.served) == [2, 3]
    assert states(store) == {3: "serving", 2: "serving", 1: "available"}
    assert sorted(loader.loads) == [("digits", 2), ("digits", 3)]


def test_the_default_policy_serves_only_the_newest(three_versions: Path) -> None:
    store = make_store(three_versions, FakeLoader())
    run(store.poll_once())
    assert sorted(store.served) == [3]


def test_an_unblessed_newest_version_is_served_beside_the_newest_blessed(tmp_path: Path) -> None:
    for blessed in (None, True, False):  # before the gate, blessed, refused by the gate
        publish_fake(tmp_path, blessed=blessed)
    store = make_store(tmp_path, FakeLoader())
    run(store.poll_once())
    assert sorted(store.served) == [2, 3]  # 3 for pinned requests, 2 for the rest
    assert [store.is_blessed(v) for v in (1, 2, 3)] == [True, True, False]
    publish_fake(tmp_path, blessed=True)  # a blessed version 4 retires both
    run(store.poll_once())
    assert sorted(store.served) == [4]


def test_a_policy_that_selects_a_blessed_version_adds_nothing(tmp_path: Path) -> None:
    for blessed in (True, True, False):
        publish_fake(tmp_path, blessed=blessed)
    store = make_store(tmp_path, FakeLoader(), SpecificPolicy(specific=[1]))
    run(store.poll_once())
    assert sorted(store.served) == [1]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (SpecificPolicy(specific=[1, 3]), [1, 3]),
        ("all", [1, 2, 3]),
        (SpecificPolicy(specific=[2]), [2]),
    ],
)
def test_specific_and_all_policies(three_versions: Path, policy: Any, expected: list[int]) -> None:
    store = make_store(three_versions, FakeLoader(), policy)
    run(store.poll_once())
    assert sorted(store.served) == expected


def test_a_newest_version_that_fails_to_load_is_skipped(three_versions: Path) -> None:
    loader = FakeLoader(failing={3})
    store = make_store(three_versions, loader, LatestPolicy(latest=2))
    run(store.poll_once())
    assert sorted(store.served) == [1, 2]  # the policy reaches past the broken one
    rows = {row.version: row for row in store.statuses()}
    assert rows[3].state == "failed" and rows[3].reason is not None
    assert "broken graph" in rows[3].reason
    loads = len(loader.loads)
    run(store.poll_once())  # same files: not retried
    assert len(loader.loads) == loads and sorted(store.served) == [1, 2]


def test_a_tampered_newest_version_is_never_loaded(three_versions: Path) -> None:
    (three_versions / "digits" / "3" / "saved_model.pb").write_bytes(b"tampered")
    loader = FakeLoader()
    store = make_store(three_versions, loader)
    run(store.poll_once())
    assert sorted(store.served) == [2]
    assert ("digits", 3) not in loader.loads
    row = next(r for r in store.statuses() if r.version == 3)
    assert row.state == "failed" and row.reason is not None and "checksum mismatch" in row.reason


def test_versions_the_policy_drops_are_retired_and_released(three_versions: Path) -> None:
    store = make_store(three_versions, FakeLoader(), LatestPolicy(latest=2))
    run(store.poll_once())
    old = weakref.ref(store.served[2])
    store.policy = LatestPolicy(latest=1)
    run(store.poll_once())
    assert sorted(store.served) == [3]
    assert states(store) == {3: "serving", 2: "available", 1: "available"}
    gc.collect()
    assert old() is None  # nothing keeps a retired version in memory

    publish_fake(three_versions)  # version 4 appears
    store.policy = LatestPolicy(latest=2)
    run(store.poll_once())
    assert sorted(store.served) == [3, 4]


def test_a_policy_naming_absent_versions_keeps_the_newest_loaded(three_versions: Path) -> None:
    store = make_store(three_versions, FakeLoader())
    run(store.poll_once())
    store.policy = SpecificPolicy(specific=[9])
    run(store.poll_once())
    assert sorted(store.served) == [3]  # never go dark on a typo


# --- heap freeze ------------------------------------------------------------------------------


class _Model:
    """Stands in for a LoadedModel: what ModelStore._swap reads, weakly referenceable."""

    def __init__(self, version: int) -> None:
        self.name = "digits"
        self.version = version


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_heap_frozen_after_first_model_and_refrozen_after_a_swap(
    tmp_path: Path, unfrozen: None
) -> None:
    store = ModelStore(tmp_path / "digits", repository_root=tmp_path, max_batch_size=4)
    store._swap(_Model(1))  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 0  # the first model's objects are out of the GC's reach

    store._swap(_Model(2))  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0  # version 1's cycles must stay collectable
    asyncio.run(store.poll_once())  # version 1 is gone (no batch holds it): freeze again
    assert gc.get_freeze_count() > 0


def test_heap_stays_unfrozen_while_the_old_model_is_in_use(tmp_path: Path, unfrozen: None) -> None:
    store = ModelStore(tmp_path / "digits", repository_root=tmp_path, max_batch_size=4)
    old = _Model(1)
    store._swap(old)  # type: ignore[arg-type]
    store._swap(_Model(2))  # type: ignore[arg-type]
    asyncio.run(store.poll_once())  # `old` is still referenced, like a batch in flight
    assert gc.get_freeze_count() == 0
    del old
    asyncio.run(store.poll_once())
    assert gc.get_freeze_count() > 0


# --- warm-up ----------------------------------------------------------------------------------


class RecordingNetwork:
    """A compiled network stand-in: uniform answers (or NaN), and the batch sizes it saw."""

    def __init__(self, batch_sizes: tuple[int, ...], classes: int, *, finite: bool = True):
        self.batch_sizes = batch_sizes
        self.classes = classes
        self.finite = finite
        self.sizes: list[int] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        value = 1.0 / self.classes if self.finite else float("nan")
        return np.full((len(images), self.classes), value, dtype=np.float32)


def served_on(network: RecordingNetwork) -> LoadedModel:
    model = loaded_model()
    model.runtime = RuntimeChoice("openvino-int8", network)
    return model


def test_warm_up_runs_every_static_batch_size_even_past_its_time_budget() -> None:
    network = RecordingNetwork((1, 2, 3, 4, 6, 8, 12), classes=4)
    calls = warm_up(served_on(network), max_batch_size=12, budget_s=-1.0)  # always past it
    # past the budget: powers of two, the largest batch and the compiled sizes, nothing else
    assert sorted(network.sizes) == [1, 2, 3, 4, 6, 8, 12]
    assert calls == 7


def test_warm_up_refuses_a_network_that_answers_non_finite_values() -> None:
    network = RecordingNetwork((), classes=4, finite=False)
    with pytest.raises(InvalidModelVersionError, match="non-finite"):
        warm_up(served_on(network), max_batch_size=4)


def test_the_store_asks_for_static_batch_shapes_only_when_the_setting_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_fake(tmp_path)
    asked: list[int] = []

    def choose(*args: Any, max_batch_size: int = 0, **kwargs: Any) -> RuntimeChoice:
        asked.append(max_batch_size)
        return SAVEDMODEL_CHOICE

    monkeypatch.setattr(runtimes, "choose", choose)
    for static in (True, False):
        store = ModelStore(
            tmp_path / "digits",
            repository_root=tmp_path,
            max_batch_size=16,
            loader=FakeLoader(),
            static_batch_shapes=static,
        )
        assert run(store.poll_once()) is not None
    assert asked == [16, 0]  # 0: one dynamic compilation
