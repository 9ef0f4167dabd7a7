"""The model store: finds, verifies, loads, warms up and hot-swaps the versions of one model.

Each poll of ``models/<name>/`` applies the model's version policy (``latest: N`` by default 1,
``specific``, ``all``) to the complete versions on disk (metadata.json present, checksums
matching, inside the repository). A newly selected version is loaded *beside* the served ones on
a loader thread, warmed up at the batch sizes it will see, then added with one reference
assignment; versions no longer selected are retired after that, and batches already running
finish on them. A version that fails is marked failed with its reason and the others keep
serving; it is retried only if its files change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contract.metadata import (
    METADATA_FILE,
    InvalidModelVersionError,
    ModelMetadata,
    list_versions,
    read_metadata,
    verify_version_dir,
)
from contract.names import SERVE_ENDPOINT
from contract.runtimes import AUTO
from contract.tf_log import import_filtered
from service.serving import runtimes
from service.serving.config import LatestPolicy, VersionPolicy, select_versions
from service.serving.runtimes import LOAD_FAILED, SAVEDMODEL_CHOICE, RuntimeChoice

logger = logging.getLogger(__name__)

#: Exhaustive warm-up (every batch size) stops after this long; then only powers of two.
WARMUP_BUDGET_S = 10.0

VersionState = Literal["serving", "available", "failed", "loading", "invalid"]


def freeze_heap() -> None:
    """Collect garbage, then move every live object into the GC's permanent generation.

    TensorFlow, Keras and a loaded SavedModel leave about a million long-lived Python objects;
    every full (generation 2) collection walks all of them, which stopped the event loop for
    100-200 ms every few seconds under load: most of the service's p99. Frozen objects are never
    scanned again, but reference counting still frees them (see BENCHMARKS.md).
    """
    gc.collect()
    gc.freeze()


@dataclass
class LoadedModel:
    """One SavedModel in memory with its metadata; ``predict`` is thread-safe."""

    metadata: ModelMetadata
    path: Path
    module: Any  # the object tf.saved_model.load returned; keeps the variables alive
    loaded_at: float = field(default_factory=time.time)
    #: What computes its batches: the SavedModel or a compiled artifact (:mod:`.runtimes`).
    runtime: RuntimeChoice = SAVEDMODEL_CHOICE

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the service resizes uploads to."""
        return self.metadata.input.height, self.metadata.input.width

    def has_endpoint(self, name: str) -> bool:
        return hasattr(self.module, name)

    def endpoint(self, name: str) -> Any:
        return getattr(self.module, name)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 pixels 0..255 -> (N, num_classes) float32 probabilities, on
        the compiled network when one serves and the images are at the input size (else on
        the SavedModel, which resizes)."""
        network = self.runtime.network
        if network is not None and images.shape[1:3] == self.input_size:
            return network.predict(images)
        return self.predict_savedmodel(images)

    def predict_savedmodel(self, images: np.ndarray) -> np.ndarray:
        """``predict`` on the SavedModel's ``serve`` endpoint, whatever runtime serves."""
        import tensorflow as tf

        return np.asarray(self.module.serve(tf.convert_to_tensor(images, dtype=tf.float32)))


def load_saved_model(path: Path, metadata: ModelMetadata) -> LoadedModel:
    """Load a verified version folder with ``tf.saved_model.load`` (no Keras code needed)."""
    import_filtered("tensorflow")  # the first import in a process filters its start-up lines
    import tensorflow as tf

    module = tf.saved_model.load(str(path))
    if not hasattr(module, SERVE_ENDPOINT):
        raise InvalidModelVersionError(f"the SavedModel has no {SERVE_ENDPOINT!r} endpoint")
    return LoadedModel(metadata=metadata, path=path, module=module)


def warm_up(model: LoadedModel, max_batch_size: int, budget_s: float = WARMUP_BUDGET_S) -> int:
    """Run the model once per batch size it will see, so the first requests don't pay for
    kernel selection and memory planning. Checks the output shape and that it is finite on the
    way. Past ``budget_s`` seconds only the powers of two, the largest size and a compiled
    network's static batch sizes still run. Returns calls."""
    height, width = model.input_size
    started = time.monotonic()
    always = {1 << i for i in range(max_batch_size.bit_length())} | {max_batch_size}
    if model.runtime.network is not None:
        always |= set(model.runtime.network.batch_sizes)
    calls = 0
    for size in range(1, max_batch_size + 1):
        if time.monotonic() - started > budget_s and size not in always:
            continue
        out = model.predict(np.zeros((size, height, width, 3), dtype=np.float32))
        calls += 1
        if out.shape != (size, model.metadata.num_classes):
            raise InvalidModelVersionError(
                f"serve returned shape {out.shape} for a batch of {size}; expected "
                f"({size}, {model.metadata.num_classes}) from metadata.json"
            )
        if not np.all(np.isfinite(out)):
            raise InvalidModelVersionError(f"serve answered non-finite values for {size} images")
    return calls


@dataclass
class VersionStatus:
    version: int
    state: VersionState
    reason: str | None = None


class ModelStore:
    """The versions of ONE model: which are on disk, which are served, and their states.

    ``policy`` (TF Serving's and Triton's version policy) picks the served versions among the
    loadable ones on disk; each poll loads what the policy newly selects *beside* what is served,
    then retires what it no longer selects, so a request always finds a warmed-up version. A
    version that fails to load is marked failed and skipped (the policy then reaches past it),
    and is retried only when its files change.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        repository_root: Path,
        max_batch_size: int,
        on_swap: Callable[[LoadedModel], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
        on_change: Callable[[ModelStore], None] | None = None,
        loader: Callable[[Path, ModelMetadata], LoadedModel] = load_saved_model,
        policy: VersionPolicy | None = None,
        runtime: str = AUTO,
        runtime_threads: int = 0,
        static_batch_shapes: bool = False,
    ) -> None:
        self.model_dir = model_dir
        #: What new versions should run on (IMGCLS_RUNTIME or serving.yaml's ``runtime``).
        self.runtime = runtime
        #: The compiled runtime's threads (0: its default); the worker's model threads.
        self.runtime_threads = runtime_threads
        #: Whether small compiled networks get one static copy per batch size
        #: (IMGCLS_STATIC_BATCH_SHAPES; see ``runtimes.static_batch_sizes``).
        self.static_batch_shapes = static_batch_shapes
        self.repository_root = repository_root
        self.max_batch_size = max_batch_size
        self.policy: VersionPolicy = policy if policy is not None else LatestPolicy()
        #: Versions served beside the policy's when loadable: the ones labels name, so that a
        #: new publish cannot retire ``stable`` and take its traffic unreviewed.
        self.keep: frozenset[int] = frozenset()
        self._on_swap = on_swap
        self._on_reload = on_reload
        self._on_change = on_change
        self._loader = loader
        #: version -> the loaded model; replaced (never mutated) so readers see a consistent dict.
        self._served: dict[int, LoadedModel] = {}
        # version -> (reason, fingerprint of the files when it failed)
        self._failed: dict[int, tuple[str, tuple[int, int] | None]] = {}
        self._loading: int | None = None
        # version -> (fingerprint of its metadata.json, whether the evaluation gate blessed it)
        self._blessed: dict[int, tuple[tuple[int, int] | None, bool]] = {}
        # Versions retired, until they are released and the heap can be frozen again.
        self._retired: list[weakref.ref[LoadedModel]] = []
        self._lock = asyncio.Lock()
        self.repository_problem: str | None = None
        #: True once the first scan has finished (whatever it found).
        self.scanned = False

    @property
    def name(self) -> str:
        return self.model_dir.name

    @property
    def current(self) -> LoadedModel | None:
        """The newest served version (the default for unpinned requests without labels)."""
        served = self._served
        return served[max(served)] if served else None

    @property
    def served(self) -> dict[int, LoadedModel]:
        """Served versions by number (a snapshot: do not mutate)."""
        return self._served

    def _fingerprint(self, version: int) -> tuple[int, int] | None:
        try:
            stat = (self.model_dir / str(version) / METADATA_FILE).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _scan(self) -> list[int] | None:
        try:
            if not self.model_dir.exists():
                raise FileNotFoundError(f"{self.model_dir} does not exist")
            if not self.model_dir.is_dir():  # e.g. a file put in its place
                raise NotADirectoryError(f"{self.model_dir} is not a folder")
            versions = list_versions(self.model_dir)
        except OSError as exc:
            self._set_problem(f"cannot read the model repository: {exc}")
            return None
        self._set_problem(None)
        return versions

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.repository_problem:
            if problem:
                logger.warning("%s; still serving %s", problem, self._describe_current())
            else:
                logger.info("model repository %s is readable", self.model_dir)
        self.repository_problem = problem

    def _describe_current(self) -> str:
        if not self._served:
            return "nothing"
        return "version " + ", ".join(str(v) for v in sorted(self._served, reverse=True))

    def is_blessed(self, version: int) -> bool:
        """Whether the evaluation gate blessed ``version`` (versions published before the gate,
        and unreadable metadata, count as blessed: loading will judge those). Cached per
        metadata.json; blocking file I/O."""
        fingerprint = self._fingerprint(version)
        cached = self._blessed.get(version)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            blessed = read_metadata(self.model_dir / str(version)).blessed
        except InvalidModelVersionError:
            blessed = True
        self._blessed[version] = (fingerprint, blessed)
        return blessed

    def _blessed_fallback(self, candidates: list[int], desired: list[int]) -> int | None:
        """The newest blessed candidate when ``desired`` holds no blessed version, else None."""
        if any(self.is_blessed(v) for v in desired):
            return None
        return next((v for v in sorted(candidates, reverse=True) if self.is_blessed(v)), None)

    def _skip(self, version: int) -> bool:
        """A version that failed with the same files as now: don't retry or recount it."""
        failed = self._failed.get(version)
        return failed is not None and failed[1] == self._fingerprint(version)

    async def poll_once(self) -> LoadedModel | None:
        """One scan: load what the policy selects, then serve it and retire what it no longer
        selects, in one step.

        Versions loaded by this scan are not served until the scan ends: routing changes once,
        from the old set of versions to the new one, so a configuration that adds several
        versions never sends traffic to the first one loaded while the others load (the labels
        that name them are applied right after, see ``ModelRepository.poll_once``).
        """
        async with self._lock:
            self._refreeze_when_retired_are_gone()
            versions = await asyncio.to_thread(self._scan)
            if versions is None:  # unreadable: keep serving what is loaded
                self.scanned = True
                return self.current
            desired: list[int] = []
            staged: dict[int, LoadedModel] = {}
            for _ in range(len(versions) + 1):  # each round marks at least one version failed
                loaded = {**self._served, **staged}
                candidates = [v for v in versions if not self._skip(v)]
                desired = select_versions(self.policy, candidates)
                desired += sorted((self.keep & set(candidates)) - set(desired), reverse=True)
                # An unblessed version is served when the policy selects it (it can be pinned
                # and inspected), but never alone: the newest blessed version stays for the
                # unpinned traffic (ServedModel.default_version).
                fallback = await asyncio.to_thread(self._blessed_fallback, candidates, desired)
                if fallback is not None:
                    desired.append(fallback)
                if not desired and loaded:
                    # Nothing on disk qualifies (deleted, broken, a policy naming absent
                    # versions): keep the newest loaded version rather than go dark.
                    desired = [max(loaded)]
                missing = [v for v in desired if v not in loaded]
                if not missing:
                    break
                for version in missing:  # newest first
                    model = await self._try_load(version, self._fingerprint(version))
                    if model is not None:
                        staged[version] = model
            for model in staged.values():
                self._install(model)
            for version in [v for v in self._served if v not in desired]:
                self._retire(version)
            self.scanned = True
            return self.current

    async def _try_load(
        self, version: int, fingerprint: tuple[int, int] | None
    ) -> LoadedModel | None:
        path = self.model_dir / str(version)
        self._loading = version
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(self._load_and_warm, path)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, InvalidModelVersionError) and fingerprint is None:
                # No metadata.json yet: most likely still being copied in; not (yet) a failure.
                logger.info("version %d is incomplete (%s); will look again", version, reason)
                self._failed[version] = (reason, fingerprint)
                return None
            logger.warning("%s version %d failed to load: %s", self.name, version, reason)
            self._failed[version] = (reason, fingerprint)
            if self._on_reload:
                self._on_reload("failure")
            return None
        finally:
            self._loading = None
        self._failed.pop(version, None)
        logger.info(
            "loaded and warmed up %s version %d in %.2f s, on %s",
            model.name,
            version,
            time.monotonic() - started,
            model.runtime.name,
        )
        return model

    def _load_and_warm(self, path: Path) -> LoadedModel:
        metadata = verify_version_dir(path, repository_root=self.repository_root)
        if metadata.name != self.model_dir.name:
            raise InvalidModelVersionError(
                f"metadata.json names model {metadata.name!r}, "
                f"but it sits under {self.model_dir.name!r}"
            )
        model = self._loader(path, metadata)
        model.runtime = runtimes.choose(
            path,
            metadata,
            self.runtime,
            threads=self.runtime_threads,
            max_batch_size=self.max_batch_size if self.static_batch_shapes else 0,
        )
        if model.runtime.network is not None:
            try:
                warm_up(model, self.max_batch_size)
                # The SavedModel still computes pixels at other sizes: its first call must not
                # pay TensorFlow's start-up either.
                height, width = model.input_size
                model.predict_savedmodel(np.zeros((1, height, width, 3), dtype=np.float32))
                return model
            except Exception as exc:  # the compiled network failed: the SavedModel serves
                model.runtime = RuntimeChoice(
                    runtimes.SAVEDMODEL, fallback=LOAD_FAILED, detail=f"warm-up: {exc}"
                )
        if model.runtime.fallback:
            logger.warning(
                "%s version %d runs on its SavedModel instead of %r: %s (%s)",
                metadata.name,
                metadata.version,
                self.runtime,
                model.runtime.fallback,
                model.runtime.detail,
            )
        warm_up(model, self.max_batch_size)
        return model

    def _install(self, model: LoadedModel) -> None:
        """Serve ``model`` beside what is served (one dict replacement: readers see either)."""
        self._served = {**self._served, model.version: model}
        if self._on_reload:
            self._on_reload("success")
        if self._on_swap:
            self._on_swap(model)
        if not self._retired:
            freeze_heap()  # the new version's objects join the frozen heap
        logger.info(
            "now serving %s version %d (also: %s)",
            model.name,
            model.version,
            ", ".join(str(v) for v in sorted(self._served) if v != model.version) or "none",
        )
        if self._on_change:
            self._on_change(self)

    def _retire(self, version: int) -> None:
        """Stop routing to ``version``; batches already holding it finish on it."""
        served = dict(self._served)
        model = served.pop(version, None)
        if model is None:
            return
        self._served = served
        # Frozen objects are never collected: unfreeze so that the old version's reference
        # cycles can go once its last batch has finished; a later poll refreezes.
        gc.unfreeze()
        self._retired.append(weakref.ref(model))
        logger.info("%s version %d is no longer served", self.name, version)
        if self._on_change:
            self._on_change(self)

    def _swap(self, model: LoadedModel) -> None:
        """Serve ``model`` instead of every served version (the ``latest: 1`` hot swap)."""
        others = [v for v in self._served if v != model.version]
        self._install(model)
        for version in others:
            self._retire(version)

    def _refreeze_when_retired_are_gone(self) -> None:
        if self._retired:
            self._retired = [ref for ref in self._retired if ref() is not None]
            if not self._retired:
                freeze_heap()  # the old versions are gone, their reference cycles collected

    def statuses(self) -> list[VersionStatus]:
        """Every version folder on disk (and every served one), newest first, with its state."""
        try:
            versions = list_versions(self.model_dir)
        except OSError:
            versions = []
        served = self._served
        rows = []
        for version in sorted(set(versions) | set(served), reverse=True):
            if version in served:
                rows.append(VersionStatus(version, "serving"))
            elif version == self._loading:
                rows.append(VersionStatus(version, "loading"))
            elif version in self._failed:
                rows.append(VersionStatus(version, "failed", self._failed[version][0]))
            else:
                rows.append(VersionStatus(version, "available"))
        return rows
