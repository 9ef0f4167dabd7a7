"""Compiled runtimes of a version: the artifacts beside its SavedModel, their checks, the rule.

A published version may carry, under ``runtimes/<artifact>/``, its network compiled for a CPU
runtime (OpenVINO IR today) in one precision each. Training measures every artifact against
the SavedModel on the version's own held-out test split and records the result in
``metadata.json``'s ``runtimes``; the service serves an artifact only when it passed
:data:`EQUIVALENCE_RULE`, its files match their checksums and it loads, and otherwise serves the
SavedModel. The artifacts are checked on their own (not with the version's ``files``), so a
damaged artifact costs its speed, never the version.

Imports neither TensorFlow nor a runtime: training and the service both read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.checksums import sha256_file

#: The folder of a version that holds its compiled artifacts, one sub-folder each.
RUNTIMES_DIR: Final = "runtimes"
#: ``IMGCLS_RUNTIME`` / serving.yaml ``runtime``: the SavedModel itself.
SAVEDMODEL: Final = "savedmodel"
#: ... or the fastest artifact that passed the rule and takes pixels (:func:`ranked_candidates`).
AUTO: Final = "auto"
#: The batch sizes at which publishing measures images/s (and ranks the artifacts).
MEASURED_BATCH_SIZES: Final = (1, 8, 32)
#: The artifact's own SavedModel endpoint that runs its preprocessing, for artifacts whose network
#: starts after it (``network_input`` "preprocessed": versions published while the digit
#: normalisation did not convert; publishing now converts whole models, "pixels").
PREPROCESS_ENDPOINT: Final = "preprocess"

#: How every OpenVINO artifact is compiled, when publishing times it and when the service runs
#: it (the artifact's own settings, e.g. its precision, go on top). No CPU pinning: pinned,
#: OpenVINO put the inference thread of every worker process on the same core (two processes
#: calling int8 at batch 6: 437 and 442 calls/s pinned, 1,158 and 1,100 unpinned).
OPENVINO_COMPILE_CONFIG: Final = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}

Precision = Literal["fp32", "bf16", "int8"]


class EquivalenceRule(BaseModel):
    """When an artifact may replace the SavedModel, judged on the version's test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_top1_agreement: float = Field(
        description="share of test images whose top-1 class equals the SavedModel's, 0..1"
    )
    max_accuracy_drop: float = Field(
        description="test accuracy may be at most this much (absolute, 0..1) below the SavedModel's"
    )

    def judge(self, top1_agreement: float, accuracy: float, savedmodel_accuracy: float) -> str:
        """'' when the artifact passes, else why not (one sentence)."""
        if top1_agreement < self.min_top1_agreement:
            return (
                f"top-1 agreement {top1_agreement:.4f} with the SavedModel is below "
                f"{self.min_top1_agreement}"
            )
        if savedmodel_accuracy - accuracy > self.max_accuracy_drop + 1e-12:
            return (
                f"test accuracy {accuracy:.4f} is more than {self.max_accuracy_drop} below the "
                f"SavedModel's {savedmodel_accuracy:.4f}"
            )
        return ""


#: The documented rule (README, "Compiled runtimes").
EQUIVALENCE_RULE: Final = EquivalenceRule(min_top1_agreement=0.995, max_accuracy_drop=0.002)


class RuntimeArtifact(BaseModel):
    """One compiled artifact of a version, as measured when it was made."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="the folder under runtimes/ and the name a setting picks")
    runtime: str = Field(description="the engine that runs it, e.g. 'openvino'")
    precision: Precision
    network_input: Literal["pixels", "preprocessed"] = Field(
        description="'pixels': the artifact takes the service's (N, H, W, 3) float32 0..255 "
        "images; 'preprocessed' (versions published before whole models converted): the "
        "artifact's preprocess endpoint runs first"
    )
    entry: str = Field(description="the file the runtime opens, relative to the artifact folder")
    files: dict[str, str] = Field(description="relative path (to the version) -> sha256 hex")
    converter: dict[str, str] = Field(description="package -> version that made the artifact")
    settings: dict[str, str] = Field(
        default_factory=dict, description="runtime settings it must be compiled with"
    )
    cpu_flags: list[str] = Field(
        default_factory=list, description="CPU features it needs (/proc/cpuinfo flags)"
    )
    max_abs_difference: float = Field(
        ge=0, description="largest |probability - SavedModel's| over the test split"
    )
    top1_agreement: float = Field(ge=0, le=1, description="share of test images, 0..1")
    test_accuracy: float = Field(ge=0, le=1)
    test_images: int = Field(ge=0, description="images the three figures above were taken on")
    images_per_s: dict[str, float] = Field(
        description="batch size -> images/s on the publishing machine, its default threads "
        "(every core), measured interleaved with the SavedModel's"
    )
    passed: bool = Field(description="whether it met the rule (and may be served)")
    reason: str = Field(default="", description="why it did not pass ('' when it did)")


class RuntimeReport(BaseModel):
    """``metadata.json``'s ``runtimes``: the SavedModel's own figures and every artifact."""

    model_config = ConfigDict(extra="allow")

    rule: EquivalenceRule = EQUIVALENCE_RULE
    savedmodel_test_accuracy: float = Field(ge=0, le=1)
    savedmodel_images_per_s: dict[str, float] = Field(
        description="batch size -> images/s of the SavedModel, measured beside the artifacts"
    )
    machine: str = Field(default="", description="the CPU the figures were measured on")
    artifacts: list[RuntimeArtifact] = Field(default_factory=list)

    def artifact(self, name: str) -> RuntimeArtifact | None:
        return next((a for a in self.artifacts if a.name == name), None)


def speed_score(images_per_s: dict[str, float]) -> float:
    """One figure to rank runtimes by: the geometric mean of images/s over
    :data:`MEASURED_BATCH_SIZES` (0 when one is missing), so that neither batch size 1 nor 32
    alone decides."""
    values = [images_per_s.get(str(size), 0.0) for size in MEASURED_BATCH_SIZES]
    if min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def runnable_fastest_first(
    artifacts: Iterable[RuntimeArtifact], cpu_flags: set[str]
) -> list[RuntimeArtifact]:
    """Those of ``artifacts`` that passed the rule and can run on a CPU with ``cpu_flags``,
    fastest first (:func:`speed_score`): what a request by runtime tries, in order."""
    usable = [a for a in artifacts if a.passed and set(a.cpu_flags) <= cpu_flags]
    return sorted(usable, key=lambda a: speed_score(a.images_per_s), reverse=True)


def ranked_candidates(report: RuntimeReport, cpu_flags: set[str]) -> list[RuntimeArtifact]:
    """The artifacts that passed the rule, can run on a CPU with ``cpu_flags``, take the
    service's pixels and measured faster than the SavedModel, fastest first: what ``auto``
    tries, in order.

    An artifact whose network starts after a TensorFlow preprocess (``network_input``
    "preprocessed", only in versions published before whole models converted) is left to a
    request by name or runtime: each of its calls runs TensorFlow and then the compiled
    network, and on digits (two workers on two cores) it answered no more V2 HTTP requests
    per second under load than the SavedModel (BENCHMARKS.md, "Issue 23, lever 4")."""
    floor = speed_score(report.savedmodel_images_per_s)
    return [
        a
        for a in runnable_fastest_first(report.artifacts, cpu_flags)
        if a.network_input == "pixels" and speed_score(a.images_per_s) > floor
    ]


def artifact_problem(version_dir: Path, artifact: RuntimeArtifact) -> str:
    """'' when every file of ``artifact`` is present with its checksum and its folder holds no
    other file; else what is wrong (one sentence). Blocking file I/O."""
    folder = version_dir / RUNTIMES_DIR / artifact.name
    if (version_dir / RUNTIMES_DIR).is_symlink() or folder.is_symlink():
        return f"{RUNTIMES_DIR}/{artifact.name} is a symbolic link; versions must be self-contained"
    if not folder.is_dir():
        return f"{RUNTIMES_DIR}/{artifact.name} is missing"
    entries = list(folder.rglob("*"))
    linked = next((path for path in entries if path.is_symlink()), None)
    if linked is not None:
        return f"{linked.relative_to(version_dir).as_posix()} is a symbolic link"
    for rel, expected in artifact.files.items():
        path = version_dir / rel
        if path.is_symlink() or not path.is_file():
            return f"{rel} is missing"
        if sha256_file(path) != expected:
            return f"checksum mismatch for {rel}"
    present = {path.relative_to(version_dir).as_posix() for path in entries if path.is_file()}
    extra = sorted(present - set(artifact.files))
    if extra:
        return f"unlisted file(s) in the artifact: {', '.join(extra[:3])}"
    return ""


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name, for the record ('' when unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return ""
