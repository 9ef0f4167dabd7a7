"""The model repository: every model under ``models/``, each with its versions and its batcher.

One :class:`ServedModel` per model folder: a :class:`ModelStore` (which versions are served, by
the model's version policy) and its own :class:`Batcher` (own queue bound, own model thread), so a
slow or overloaded model cannot starve another. The repository's poller finds models that appear
or disappear, re-reads ``serving.yaml`` (policies, labels with traffic weights, per-model limits)
when it changes, and lets each store apply its policy.

Requests name a model (or get the default one, ``Settings.model_name``) and optionally pin a
version or a label; :meth:`ModelRepository.resolve` turns that into the served version to run,
choosing a weighted label (a canary) for its share of the unpinned requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.metadata import ModelMetadata
from service.serving.batching import Batcher, BatchObserver
from service.serving.config import (
    CONFIG_FILE,
    ConfigWatcher,
    ModelConfig,
    ServingConfig,
)
from service.serving.errors import ModelNotFound, ModelNotReady
from service.serving.inference import InferenceItem, Prediction, make_batch_fn
from service.serving.model_store import LoadedModel, ModelStore, load_saved_model
from service.settings import Settings

logger = logging.getLogger(__name__)

#: Folder names that can be models (the same rule as the ``model_name`` setting).
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: The label that, when it names a served version, takes the unpinned traffic no canary takes.
STABLE_LABEL = "stable"


@dataclass(frozen=True)
class Limits:
    """One model's batching limits: the service-wide settings, overridden per model."""

    max_batch_size: int
    max_queue_size: int
    batch_timeout_s: float
    request_timeout_s: float

    @classmethod
    def of(cls, settings: Settings, config: ModelConfig) -> Limits:
        own = config.limits
        max_batch_size = own.max_batch_size or settings.max_batch_size
        return cls(
            max_batch_size=max_batch_size,
            # A per-model batch larger than the global queue would never fit: grow the queue.
            max_queue_size=own.max_queue_size or max(settings.max_queue_size, max_batch_size),
            batch_timeout_s=(
                settings.batch_timeout_s if own.batch_timeout_s is None else own.batch_timeout_s
            ),
            request_timeout_s=own.request_timeout_s or settings.request_timeout_s,
        )


@dataclass
class ServedModel:
    """One model of the repository: its versions, its batcher, its configuration."""

    name: str
    store: ModelStore
    batcher: Batcher[InferenceItem, Prediction]
    limits: Limits
    config: ModelConfig

    @property
    def ready(self) -> bool:
        return bool(self.store.served) and self.batcher.running

    def labels(self) -> dict[str, int]:
        """Label -> version, as configured (whether or not that version is served)."""
        return {name: target.version for name, target in self.config.labels.items()}

    def label_problems(self) -> dict[str, str]:
        """Label -> why the version it names is not served (absent, loading, failed)."""
        served = self.store.served
        unserved = {
            label: target
            for label, target in sorted(self.config.labels.items())
            if target.version not in served
        }
        if not unserved:
            return {}  # the usual case: no look at the disk (statuses() lists the folder)
        rows = {row.version: row for row in self.store.statuses()}
        problems = {}
        for label, target in unserved.items():
            row = rows.get(target.version)
            if row is None:
                problems[label] = f"version {target.version} is not in {self.store.model_dir}"
            else:
                reason = f": {row.reason}" if row.reason else ""
                problems[label] = f"version {target.version} is {row.state}{reason}"
        return problems

    def default_version(self) -> LoadedModel | None:
        """The version for unpinned requests that no weighted label takes: the one the
        ``stable`` label names when it is served (so a canary's weight set to 0, or its label
        removed, sends everything back to stable); else the newest served version that the
        evaluation gate blessed and no weighted label points at; else the newest blessed one;
        else the newest served."""
        served = self.store.served
        if not served:
            return None
        stable = self.config.labels.get(STABLE_LABEL)
        if stable is not None and stable.version in served:
            return served[stable.version]
        weighted = {t.version for t in self.config.labels.values() if t.weight > 0}
        blessed = [v for v in served if served[v].metadata.blessed]
        plain = [v for v in blessed if v not in weighted]
        # An unblessed version takes unpinned traffic only when nothing blessed is served.
        return served[max(plain or blessed or served)]

    def pick_unpinned(self, draw: Callable[[], float] = random.random) -> LoadedModel | None:
        """A version for an unpinned request: each weighted label with its probability (when its
        version is served), the default version otherwise."""
        served = self.store.served
        point = draw()
        for target in self.config.labels.values():
            if target.weight <= 0:
                continue
            if point < target.weight:
                model = served.get(target.version)
                if model is not None:
                    return model
                break  # its version is not served: the share goes to the default
            point -= target.weight
        return self.default_version()


ObserverFactory = Callable[[str], BatchObserver]


class ModelRepository:
    """Every model under ``settings.models_dir``; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        observer_for: ObserverFactory | None = None,
        on_change: Callable[[ModelRepository], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
        loader: Callable[[Path, ModelMetadata], LoadedModel] = load_saved_model,
    ) -> None:
        self.settings = settings
        self.root = settings.models_dir
        self.default_name = settings.model_name
        self._observer_for = observer_for
        self._on_change = on_change
        self._on_reload = on_reload
        self._loader = loader
        self.config_watcher = ConfigWatcher(self.root / CONFIG_FILE)
        self.models: dict[str, ServedModel] = {}
        self._task: asyncio.Task[None] | None = None
        # Batchers replaced after a limits change, draining what they had queued.
        self._draining: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.scanned = False
        self.closing = False
        # (model, label, problem) already logged: a label problem is logged once, not per poll.
        self._label_problems_logged: set[tuple[str, str, str]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Scan at once and then every ``poll_interval_s``, in the background; ``/healthz``
        answers while the first versions load and ``/readyz`` says when they are served."""
        self._task = asyncio.create_task(self._poll_forever(), name="model-repository-poll")

    async def stop(self, *, timeout_s: float | None = None) -> None:
        """Stop polling, then drain every batcher (what is queued is still answered)."""
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(
            *(m.batcher.stop(drain=True, timeout_s=timeout_s) for m in self.models.values()),
            *self._draining,
            return_exceptions=True,
        )

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # the poller must survive anything the disk throws at it
                logger.exception("model repository scan failed; keeping the served versions")
            await asyncio.sleep(self.settings.poll_interval_s)

    # -- polling ------------------------------------------------------------------------------

    def _model_names(self) -> set[str] | None:
        """Model folders under the root (None when the root cannot be read)."""
        try:
            return {
                entry.name
                for entry in self.root.iterdir()
                if MODEL_NAME_PATTERN.match(entry.name) and entry.is_dir()
            }
        except OSError:
            return None

    async def poll_once(self) -> None:
        """One pass: configuration, models found or gone, then each model's versions."""
        async with self._lock:
            state = await asyncio.to_thread(self.config_watcher.refresh)
            config = state.config
            names = await asyncio.to_thread(self._model_names)
            if names is not None:
                for gone in [n for n in self.models if n not in names and n != self.default_name]:
                    await self._remove(gone)
            wanted = {self.default_name} | (names or set()) | set(self.models)
            for name in sorted(wanted, key=lambda n: (n != self.default_name, n)):
                await self._ensure(name, config)
            for name in sorted(self.models, key=lambda n: (n != self.default_name, n)):
                served = self.models.get(name)
                if served is not None:
                    await served.store.poll_once()
                    # Labels move only now, once the versions they name are loaded and warm.
                    served.config = config.for_model(name)
                    self._log_label_problems(served)
            self.scanned = True
            if self._on_change:
                self._on_change(self)

    def _log_label_problems(self, served: ServedModel) -> None:
        for label, problem in served.label_problems().items():
            key = (served.name, label, problem)
            if key not in self._label_problems_logged:
                self._label_problems_logged.add(key)
                logger.warning(
                    "label %r of %r is not served: %s (%s)",
                    label,
                    served.name,
                    problem,
                    CONFIG_FILE,
                )

    async def _ensure(self, name: str, config: ServingConfig) -> None:
        model_config = config.for_model(name)
        limits = Limits.of(self.settings, model_config)
        served = self.models.get(name)
        if served is None:
            store = ModelStore(
                self.root / name,
                repository_root=self.root,
                max_batch_size=limits.max_batch_size,
                on_reload=self._on_reload,
                loader=self._loader,
                policy=model_config.version_policy,
                runtime=model_config.runtime or self.settings.runtime,
                runtime_threads=self.settings.tf_intra_op_threads,
                static_batch_shapes=self.settings.static_batch_shapes,
            )
            store.keep = frozenset(t.version for t in model_config.labels.values())
            batcher = await self._start_batcher(name, limits)
            self.models[name] = ServedModel(name, store, batcher, limits, model_config)
            logger.info("model %r found: %s", name, model_config.describe_policy())
            return
        served.store.policy = model_config.version_policy
        served.store.runtime = model_config.runtime or self.settings.runtime
        served.store.keep = frozenset(t.version for t in model_config.labels.values())
        served.store.max_batch_size = limits.max_batch_size
        if limits != served.limits:
            # New limits, new batcher: requests already queued finish on the old one.
            old = served.batcher
            served.batcher = await self._start_batcher(name, limits)
            served.limits = limits
            task = asyncio.create_task(
                old.stop(drain=True, timeout_s=self.settings.shutdown_grace_s),
                name=f"drain-batcher-{name}",
            )
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
            logger.info("model %r: limits changed to %s", name, limits)

    async def _start_batcher(self, name: str, limits: Limits) -> Batcher[InferenceItem, Prediction]:
        batcher: Batcher[InferenceItem, Prediction] = Batcher(
            make_batch_fn(),
            max_batch_size=limits.max_batch_size,
            batch_timeout_s=limits.batch_timeout_s,
            max_queue_size=limits.max_queue_size,
            observer=self._observer_for(name) if self._observer_for else None,
            name=name,
            fill_wait_ratio=self.settings.batch_fill_wait_ratio,
        )
        await batcher.start()
        return batcher

    async def _remove(self, name: str) -> None:
        served = self.models.pop(name)
        logger.info("model %r is gone from %s; no longer served", name, self.root)
        await served.batcher.stop(drain=True, timeout_s=self.settings.shutdown_grace_s)

    # -- requests -----------------------------------------------------------------------------

    @property
    def default(self) -> ServedModel | None:
        return self.models.get(self.default_name)

    @property
    def ready(self) -> bool:
        """Every model found so far has had its first scan, and the default one is served."""
        default = self.default
        return (
            self.scanned
            and not self.closing
            and default is not None
            and default.ready
            and all(m.store.scanned for m in self.models.values())
        )

    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> ServedModel:
        """The model ``name``; :class:`ModelNotFound` naming the models there are."""
        served = self.models.get(name)
        if served is None:
            known = ", ".join(repr(n) for n in self.names()) or "none yet"
            raise ModelNotFound(
                f"no model {name[:128]!r} in the repository; models: {known} (GET /models)"
            )
        return served

    def resolve(
        self,
        name: str | None = None,
        *,
        version: int | str | None = None,
        label: str | None = None,
        split: bool = True,
    ) -> tuple[ServedModel, LoadedModel]:
        """The model and served version a request runs on.

        ``name`` None: the default model. ``version`` pins a version, ``label`` a labelled one;
        neither: a weighted label for its share (``split``), else the default version (the one
        ``stable`` names; :meth:`ServedModel.default_version`).

        Raises:
            ModelNotFound: an unknown model, version or label (naming what exists).
            ModelNotReady: the model has no served version yet. (Shutting down is the caller's
                check, ``service.dataplane.choose_model``, and the batcher's.)
        """
        wanted = self.default_name if name is None else name
        if wanted not in self.models and (wanted == self.default_name or not self.scanned):
            # Not a client mistake: the repository is still being read, or the default model
            # has not been published yet.
            raise ModelNotReady(self.no_model_help(wanted))
        served = self.get(wanted)
        if version is not None:
            return served, self._pinned(served, version)
        if label is not None:
            return served, self._labelled(served, label)
        model = served.pick_unpinned() if split else served.default_version()
        if model is None:
            raise ModelNotReady(self.no_version_help(served))
        return served, model

    def _pinned(self, served: ServedModel, version: int | str) -> LoadedModel:
        number = _version_number(version)
        model = served.store.served.get(number) if number is not None else None
        if model is None:
            raise ModelNotFound(
                f"version {str(version)[:20]!r} of {served.name!r} is not served; served: "
                f"{_versions_text(served)} ({served.config.describe_policy()}); "
                "GET /models lists every version and its state",
            )
        return model

    def _labelled(self, served: ServedModel, label: str) -> LoadedModel:
        labels = served.labels()
        if label not in labels:
            known = ", ".join(f"{k} -> {v}" for k, v in sorted(labels.items())) or "none"
            raise ModelNotFound(
                f"no label {label[:64]!r} for {served.name!r}; labels: {known} "
                f"(set them in {CONFIG_FILE})",
            )
        model = served.store.served.get(labels[label])
        if model is None:
            raise ModelNotFound(
                f"label {label!r} of {served.name!r} points to version {labels[label]}, which is "
                f"not served; served: {_versions_text(served)} ({served.config.describe_policy()})",
            )
        return model

    def no_model_help(self, name: str) -> str:
        """What to do when model ``name`` has nothing served: the exact command for this folder."""
        served = self.models.get(name)
        if served is not None:
            return self.no_version_help(served)
        if not self.scanned:
            return f"the model repository {self.root} is being read; retry shortly"
        command = f"python training/train.py --models-dir {self.root} --model-name {name}"
        return (
            f"no version of {name!r} is ready yet: publish one with `{command}` "
            "(the service loads it within its poll interval)"
        )

    def no_version_help(self, served: ServedModel) -> str:
        """What to do when a model has no served version: the exact command for this folder."""
        rows = served.store.statuses()
        failed = [f"{r.version}: {r.reason}" for r in rows if r.state == "failed"]
        loading = [str(r.version) for r in rows if r.state == "loading"]
        if loading:
            return f"model {served.name!r} is loading version {', '.join(loading)}; retry shortly"
        command = f"python training/train.py --models-dir {self.root} --model-name {served.name}"
        detail = f"no version of {served.name!r} is ready yet: publish one with `{command}`"
        if failed:
            detail += "; failed versions: " + "; ".join(failed[:3])
        problem = served.store.repository_problem
        if problem:
            detail += f"; {problem}"
        return detail + " (the service loads it within its poll interval)"


def _version_number(version: int | str) -> int | None:
    if isinstance(version, int):
        return version
    text = version.strip()
    return int(text) if text.isdigit() and len(text) < 12 else None


def _versions_text(served: ServedModel) -> str:
    versions = sorted(served.store.served, reverse=True)
    return ", ".join(str(v) for v in versions) or "none"
