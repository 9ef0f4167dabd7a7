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

import logging
import queue
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


class OpenVINONetwork:
    """An OpenVINO IR compiled for this CPU, with its TensorFlow preprocessing when it has one
    (artifacts of versions published before whole models converted).

    OpenVINO's infer requests are not thread-safe; each call borrows one from a pool (one per
    concurrent caller, made on demand), so the batcher's threads never share one.
    """

    def __init__(self, folder: Path, artifact: RuntimeArtifact, threads: int) -> None:
        import openvino as ov

        config: dict[str, Any] = {**OPENVINO_COMPILE_CONFIG, **artifact.settings}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(folder / artifact.entry), "CPU", config)
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
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
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_outputs=False: the result outlives the request's buffers.
            return np.asarray(request.infer({0: inputs})[0], dtype=np.float32)
        finally:
            self._requests.put(request)


def _open(version_dir: Path, artifact: RuntimeArtifact, threads: int) -> CompiledNetwork:
    if artifact.runtime != "openvino":
        raise ValueError(f"unknown runtime {artifact.runtime!r}")
    return OpenVINONetwork(version_dir / RUNTIMES_DIR / artifact.name, artifact, threads)


def _installed(runtime: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(runtime) is not None


def choose(
    version_dir: Path,
    metadata: ModelMetadata,
    asked: str,
    *,
    threads: int,
) -> RuntimeChoice:
    """The runtime that serves the version in ``version_dir`` when ``asked`` is requested.

    Args:
        asked: ``auto``, ``savedmodel``, an artifact name or a runtime name.
        threads: the compiled runtime's threads (0: its default, every core).
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
        fallback, detail, network = _try_open(version_dir, metadata, artifact, threads)
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
    version_dir: Path, metadata: ModelMetadata, artifact: RuntimeArtifact, threads: int
) -> tuple[str, str, CompiledNetwork | None]:
    """(fallback, detail, None) when ``artifact`` cannot serve here, else ('', '', network)."""
    if not _installed(artifact.runtime):
        return NOT_INSTALLED, f"the {artifact.runtime} package is not installed", None
    problem = artifact_problem(version_dir, artifact)
    if problem:
        return CHECKSUM, problem, None
    try:
        network = _open(version_dir, artifact, threads)
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
