"""Which runtime computes a version: its SavedModel, or a compiled artifact beside it.

``IMGCLS_RUNTIME`` (or a model's ``runtime`` in serving.yaml) asks for ``auto`` (the default:
the fastest artifact that passed the equivalence rule, takes pixels and measured faster than
the SavedModel when it was published, see :func:`contract.runtimes.ranked_candidates`),
``savedmodel``, or an artifact by name
(``openvino-int8``) or by runtime (``openvino``: its fastest passed artifact). An artifact is
served only when it passed the rule, runs on this CPU, its files match their checksums and it
loads and answers a test batch; otherwise the SavedModel serves, the reason is logged and shown
as ``fallback`` (``/models``, ``imgcls_model_info``). A batch whose images are not at the
model's input size (pixel tensors sent as they are) always runs on the SavedModel, which
resizes.
"""

from __future__ import annotations

import bisect
import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.metadata import ModelMetadata
from contract.runtimes import (
    AUTO,
    OPENVINO_COMPILE_CONFIG,
    PREPROCESS_ENDPOINT,
    RUNTIMES_DIR,
    SAVEDMODEL,
    RuntimeArtifact,
    RuntimeReport,
    artifact_problem,
    cpu_flags,
    ranked_candidates,
    runnable_fastest_first,
)

logger = logging.getLogger(__name__)

#: ``fallback`` values: why a version asked to run elsewhere runs on its SavedModel.
NOT_COMPILED = "not_compiled"  # no artifact (published before, or --runtimes none)
NOT_FOUND = "not_found"  # the requested artifact or runtime is not among the version's
NOT_PASSED = "not_passed"  # it failed the equivalence rule when published
CPU_UNSUPPORTED = "cpu_unsupported"  # it needs instructions this CPU lacks
NOT_INSTALLED = "not_installed"  # the runtime's package is not installed here
CHECKSUM = "checksum"  # a file is missing, changed or added
LOAD_FAILED = "load_failed"  # the runtime could not load it, or its answers were wrong
#: ``detail`` of a version published without artifacts.
NO_ARTIFACT = "the version has no artifact"


class CompiledNetwork(Protocol):
    """A version's network on another runtime; ``predict`` must be thread-safe."""

    #: The batch sizes it is compiled for with static shapes, ascending (empty: any size).
    batch_sizes: tuple[int, ...]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 pixels 0..255 at the input size -> (N, classes) float32."""
        ...


@dataclass(frozen=True)
class RuntimeChoice:
    """What serves a version: ``name`` ("savedmodel" or an artifact), its network (None for
    the SavedModel), and why not what was asked (``fallback``: '' when it got it)."""

    name: str
    network: CompiledNetwork | None = None
    fallback: str = ""
    detail: str = ""


SAVEDMODEL_CHOICE = RuntimeChoice(SAVEDMODEL)


#: Batch sizes a small network is compiled for with a static shape: a batch runs on the
#: smallest that holds it, padded with blank images, so padding is under a third of a call (from
#: 4 on, each step is at most 1.5x the one before).
_STATIC_BATCH_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

#: The largest static batch size: a larger batch runs in chunks of it. The copies' memory grows
#: with the sum of their sizes, while a convolutional network's cost per image hardly falls past
#: 32 (int8, one thread, static, µs per image at 32 / 64 / 128: digits 83 / 81 / 81, photos
#: 396 / 374 / 378).
STATIC_BATCH_SIZE_CAP = 32

#: Networks up to this many parameters get one compiled copy per static batch size. On a dynamic
#: batch dimension OpenVINO's CPU plugin re-plans the graph whenever the batch size changes, as it
#: does from one batch to the next under load: digits (0.4 M parameters, int8, one thread) cost
#: 1,036 µs per call at a steady batch of 8 and 1,555 µs at sizes 5..11, against 875 µs with
#: static shapes; photos' calls (4.7 M) were 16-24% cheaper static, vgg16-48's (33.6 M) no
#: cheaper. Each copy holds its own activation buffers (ten copies: +144 MB for digits, +397 MB
#: for vgg16-48), so the large networks, where it does not pay, keep one dynamic copy.
STATIC_SHAPES_MAX_PARAMETERS = 10_000_000


def static_batch_sizes(metadata: ModelMetadata, max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes to compile ``metadata``'s artifact for with static shapes (empty: one
    compiled network with a dynamic batch dimension); ``max_batch_size`` is the batcher's."""
    if max_batch_size < 1 or metadata.parameter_count > STATIC_SHAPES_MAX_PARAMETERS:
        return ()
    largest = min(max_batch_size, STATIC_BATCH_SIZE_CAP)
    return (*(size for size in _STATIC_BATCH_LADDER if size < largest), largest)


class _RequestPool:
    """One compiled network and its infer requests, lent one per concurrent caller (OpenVINO's
    infer requests are not thread-safe), made on demand."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_outputs=False: the result outlives the request's buffers.
            return np.asarray(request.infer({0: inputs})[0], dtype=np.float32)
        finally:
            self._requests.put(request)


class OpenVINONetwork:
    """An OpenVINO IR compiled for this CPU, with its TensorFlow preprocessing when it has one
    (artifacts of versions published before whole models converted).

    With ``batch_sizes`` (see :func:`static_batch_sizes`) the IR is compiled once per size with
    a static batch dimension, and a batch runs on the smallest size that holds it, padded with
    blank images (each image's answer depends on that image alone); a batch above the largest
    runs in chunks of it. Without, one compilation takes any batch size. ``predict`` is
    thread-safe.
    """

    def __init__(
        self,
        folder: Path,
        artifact: RuntimeArtifact,
        threads: int,
        batch_sizes: Sequence[int] = (),
    ) -> None:
        import openvino as ov

        config: dict[str, Any] = {**OPENVINO_COMPILE_CONFIG, **artifact.settings}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        model = core.read_model(str(folder / artifact.entry))
        input_shape = model.inputs[0].get_partial_shape()
        # Static copies only where the batch is the one dynamic dimension.
        if input_shape.rank.is_dynamic or not all(d.is_static for d in list(input_shape)[1:]):
            batch_sizes = ()
        self._pools: dict[int, _RequestPool] = {}
        for size in sorted(set(batch_sizes)):
            static = model.clone()
            static.reshape({static.inputs[0]: ov.PartialShape([size, *list(input_shape)[1:]])})
            self._pools[size] = _RequestPool(core.compile_model(static, "CPU", config))
        #: The static batch sizes, ascending (empty: any size, on one dynamic compilation).
        self.batch_sizes: tuple[int, ...] = tuple(self._pools)
        self._any_size = (
            None if self._pools else _RequestPool(core.compile_model(model, "CPU", config))
        )
        self._preprocess: Any = None
        if artifact.network_input == "preprocessed":
            import tensorflow as tf

            module = tf.saved_model.load(str(folder / PREPROCESS_ENDPOINT))
            self._preprocess = getattr(module, PREPROCESS_ENDPOINT)
            self._module = module  # keeps the endpoint's variables alive

    def predict(self, images: np.ndarray) -> np.ndarray:
        inputs = images
        if self._preprocess is not None:
            import tensorflow as tf

            inputs = self._preprocess(tf.convert_to_tensor(images, dtype=tf.float32)).numpy()
        return self._infer(np.asarray(inputs, dtype=np.float32))

    def _infer(self, inputs: np.ndarray) -> np.ndarray:
        if self._any_size is not None:
            return self._any_size.infer(inputs)
        count = len(inputs)
        index = bisect.bisect_left(self.batch_sizes, count)
        if index == len(self.batch_sizes):
            largest = self.batch_sizes[-1]
            return np.concatenate(
                [self._infer(inputs[start : start + largest]) for start in range(0, count, largest)]
            )
        size = self.batch_sizes[index]
        if size != count:
            padded = np.zeros((size, *inputs.shape[1:]), dtype=np.float32)
            padded[:count] = inputs
            inputs = padded
        return self._pools[size].infer(inputs)[:count]


def _open(
    version_dir: Path, artifact: RuntimeArtifact, threads: int, batch_sizes: Sequence[int]
) -> CompiledNetwork:
    if artifact.runtime != "openvino":
        raise ValueError(f"unknown runtime {artifact.runtime!r}")
    folder = version_dir / RUNTIMES_DIR / artifact.name
    return OpenVINONetwork(folder, artifact, threads, batch_sizes)


def _installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def choose(
    version_dir: Path,
    metadata: ModelMetadata,
    asked: str,
    *,
    threads: int,
    max_batch_size: int = 0,
) -> RuntimeChoice:
    """The runtime that serves the version in ``version_dir`` when ``asked`` is requested.

    Args:
        asked: ``auto``, ``savedmodel``, an artifact name or a runtime name.
        threads: the compiled runtime's threads (0: its default, every core).
        max_batch_size: the batcher's largest batch (images), for the static batch sizes a
            small network is compiled for (:func:`static_batch_sizes`); 0: a dynamic one.
    """
    if asked == SAVEDMODEL:
        return SAVEDMODEL_CHOICE
    report = metadata.runtimes
    if report is None or not report.artifacts:
        fallback = "" if asked == AUTO else NOT_COMPILED
        return RuntimeChoice(SAVEDMODEL, fallback=fallback, detail=NO_ARTIFACT)
    flags = cpu_flags()
    if asked == AUTO:
        candidates = ranked_candidates(report, flags)
        # not a fallback: the SavedModel measured fastest, nothing passed, or every passed
        # artifact runs after a TensorFlow preprocess
        if not candidates:
            return RuntimeChoice(SAVEDMODEL, detail=why_savedmodel(report))
    else:
        named = [a for a in report.artifacts if asked in (a.name, a.runtime)]
        if not named:
            known = ", ".join(a.name for a in report.artifacts)
            return RuntimeChoice(
                SAVEDMODEL, fallback=NOT_FOUND, detail=f"no artifact {asked!r} (it has: {known})"
            )
        passed = [a for a in named if a.passed]
        if not passed:
            return RuntimeChoice(SAVEDMODEL, fallback=NOT_PASSED, detail=named[0].reason)
        candidates = runnable_fastest_first(passed, flags)
        if not candidates:
            needs = ", ".join(sorted({f for a in passed for f in a.cpu_flags}))
            return RuntimeChoice(
                SAVEDMODEL, fallback=CPU_UNSUPPORTED, detail=f"this CPU lacks {needs}"
            )
    # Try the candidates in order (never none); what the last one failed with is the
    # fallback's reason.
    for artifact in candidates:
        fallback, detail, network = _try_open(
            version_dir, metadata, artifact, threads, static_batch_sizes(metadata, max_batch_size)
        )
        if network is not None:
            return RuntimeChoice(artifact.name, network)
        logger.warning(
            "%s version %d: %s cannot serve (%s)",
            metadata.name,
            metadata.version,
            artifact.name,
            detail,
        )
    return RuntimeChoice(SAVEDMODEL, fallback=fallback, detail=f"{candidates[-1].name}: {detail}")


def _try_open(
    version_dir: Path,
    metadata: ModelMetadata,
    artifact: RuntimeArtifact,
    threads: int,
    batch_sizes: Sequence[int],
) -> tuple[str, str, CompiledNetwork | None]:
    """(fallback, detail, None) when ``artifact`` cannot serve here, else ('', '', network)."""
    if not _installed(artifact.runtime):
        return NOT_INSTALLED, f"the {artifact.runtime} package is not installed", None
    problem = artifact_problem(version_dir, artifact)
    if problem:
        return CHECKSUM, problem, None
    try:
        network = _open(version_dir, artifact, threads, batch_sizes)
        wrong = answers_problem(network, metadata)
    except Exception as exc:
        return LOAD_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}", None
    if wrong:
        return LOAD_FAILED, wrong, None
    return "", "", network


def answers_problem(network: CompiledNetwork, metadata: ModelMetadata) -> str:
    """'' when ``network`` answers a test batch with one probability row per image (finite,
    summing to 1); else what is wrong. Its answers were compared with the SavedModel's when it
    was published, and its checksums hold: this catches a runtime that runs it wrongly here."""
    height, width = metadata.input.height, metadata.input.width
    ramp = np.linspace(0, 255, height * width * 3, dtype=np.float32).reshape(height, width, 3)
    images = np.stack([np.zeros_like(ramp), ramp, 255 - ramp])
    out = network.predict(images)
    if out.shape != (len(images), metadata.num_classes):
        return f"answered shape {out.shape}, not {(len(images), metadata.num_classes)}"
    if not np.all(np.isfinite(out)) or not np.allclose(out.sum(axis=1), 1.0, atol=1e-2):
        return "answered probabilities that are not finite or do not sum to 1"
    # The same images in a batch of another size (padded, on another static copy) answer alike:
    # within reduced precisions' rounding, which differs per batch size (bf16 digits: 3e-3).
    again = network.predict(np.concatenate([images, images[:2]]))
    if again.shape != (5, metadata.num_classes) or not np.allclose(
        again, np.concatenate([out, out[:2]]), atol=2e-2
    ):
        return "answered the same images differently in a batch of 5 than in a batch of 3"
    return ""


def why_savedmodel(report: RuntimeReport) -> str:
    """Why ``auto`` chose the SavedModel of a version that has artifacts (``runtime.detail``)."""
    if not any(a.passed for a in report.artifacts):
        return "no artifact passed the equivalence rule"
    if all(a.network_input == "preprocessed" for a in report.artifacts if a.passed):
        return (
            "its artifacts run after a TensorFlow preprocess (published before whole models "
            "converted), which auto leaves to a request by name or runtime "
            "(IMGCLS_RUNTIME=openvino); python -m training.compile converts the version whole"
        )
    return "no passed artifact measured faster than the SavedModel on this CPU"
