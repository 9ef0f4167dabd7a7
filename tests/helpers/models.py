"""Model versions without training: stand-in versions published by the real publishing code
(``training.export.publish``: temp folder, checksums, metadata.json last, rename), loaded models
whose ``predict`` is numpy, and new versions that copy a trained one."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from contract.evaluation import Evaluation, ExamplesSummary, GateRule, scores
from contract.metadata import InputSpec, ModelMetadata
from service.serving.model_store import LoadedModel
from training.export import publish

#: The classes of :func:`publish_fake`'s versions.
FAKE_CLASSES = ["a", "b", "c"]


def publish_fake(models_dir: Path, name: str = "digits", *, blessed: bool | None = None) -> int:
    """Publish a version of ``name`` holding a stand-in SavedModel file; returns its number.
    ``blessed``: the evaluation gate's verdict to record (None: no evaluation, as before the
    gate)."""

    def write(tmp: Path) -> list[str]:
        (tmp / "saved_model.pb").write_bytes(b"not really a graph")
        return ["serve"]

    version, _ = publish(
        models_dir=models_dir,
        name=name,
        write_artifacts=write,
        input_spec=InputSpec(height=4, width=4, channels=1, color_mode="grayscale"),
        class_names=FAKE_CLASSES,
        arch="simple",
        parameter_count=1,
        training={},
        data_fingerprint="",
        metrics={},
        evaluation=None if blessed is None else fake_evaluation(blessed),
    )
    return version


def fake_evaluation(blessed: bool) -> Evaluation:
    """An evaluation gate verdict on no examples (stand-in versions are never scored)."""
    candidate = scores(np.zeros(0), np.zeros(0), FAKE_CLASSES, version=None)
    return Evaluation(
        blessed=blessed,
        reason="blessed by the test" if blessed else "refused by the test",
        baseline_label=None,
        rule=GateRule(),
        examples=ExamplesSummary(count=0, fingerprint="", source="none"),
        candidate=candidate,
        baseline=None,
    )


def publish_dummy(models_dir: Path, tag: str) -> int:
    """Publish a version of model ``m`` with random stand-in files whose training info holds
    ``tag``; returns its number."""

    def write(tmp: Path) -> list[str]:
        (tmp / "saved_model.pb").write_bytes(os.urandom(256))
        (tmp / "variables").mkdir()
        (tmp / "variables" / "variables.index").write_text(tag)
        return ["serve"]

    version, _ = publish(
        models_dir=models_dir,
        name="m",
        write_artifacts=write,
        input_spec=InputSpec(height=8, width=8, channels=1, color_mode="grayscale"),
        class_names=["a", "b"],
        arch="simple",
        parameter_count=1,
        training={"tag": tag},
        data_fingerprint="x",
        metrics={"test_accuracy": 0.5},
    )
    return version


def publish_dummies(
    models_dir: str,
    tag: str,
    count: int,
    barrier: multiprocessing.synchronize.Barrier,
    out: multiprocessing.Queue[list[int]],
) -> None:
    """A publishing process: waits at ``barrier``, publishes ``count`` dummies, reports their
    numbers on ``out``."""
    barrier.wait()
    out.put([publish_dummy(Path(models_dir), f"{tag}-{i}") for i in range(count)])


def republish(
    models_dir: Path,
    source_version: int = 1,
    name: str = "digits",
    *,
    as_name: str | None = None,
    class_names: list[str] | None = None,
) -> int:
    """Publish a new version of ``as_name`` (default: ``name`` itself) whose SavedModel is a copy
    of ``name``'s ``source_version``, through the real publishing code (temp folder, checksums,
    metadata last, rename); ``class_names`` renames the classes (another model, same network)."""
    from contract.metadata import read_metadata

    source = models_dir / name / str(source_version)
    meta = read_metadata(source)

    def write(tmp: Path) -> list[str]:
        for item in source.iterdir():
            if item.name == "metadata.json":
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        return list(meta.endpoints)

    version, _ = publish(
        models_dir=models_dir,
        name=as_name or name,
        write_artifacts=write,
        input_spec=meta.input,
        class_names=class_names or meta.class_names,
        arch=meta.arch,
        parameter_count=meta.parameter_count,
        training={**meta.training, "republished_from": f"{name}/{source_version}"},
        data_fingerprint=meta.data_fingerprint,
        metrics=meta.metrics,
        # The same network predicts the same: its baseline holds, unless the classes are renamed.
        drift_baseline=meta.drift_baseline if class_names is None else None,
        # ... and its compiled artifacts (copied with the rest) are checked as they were.
        compile_runtimes=lambda tmp: meta.runtimes,
    )
    return version


def auto_runtime(version_dir: Path) -> dict[str, str]:
    """``/models``' ``runtime`` of a version served with ``IMGCLS_RUNTIME=auto`` on this
    machine: the first of :func:`contract.runtimes.ranked_candidates`, else the SavedModel
    with auto's reason (``detail``)."""
    from contract.metadata import read_metadata
    from contract.runtimes import SAVEDMODEL, cpu_flags, ranked_candidates
    from service.serving.runtimes import NO_ARTIFACT, why_savedmodel

    report = read_metadata(version_dir).runtimes
    ranked = ranked_candidates(report, cpu_flags()) if report is not None else []
    if ranked:
        return {"name": ranked[0].name, "asked": "auto"}
    has_artifacts = report is not None and bool(report.artifacts)
    detail = why_savedmodel(report) if has_artifacts else NO_ARTIFACT
    return {"name": SAVEDMODEL, "asked": "auto", "detail": detail}


class FakeModel(LoadedModel):
    """A loaded "model" that answers one-hot on its own version (mod the class count)."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), self.metadata.num_classes), dtype=np.float32)
        out[:, self.version % self.metadata.num_classes] = 1.0
        return out


class FakeLoader:
    """Stands in for ``load_saved_model``; counts loads and fails the versions it is told to."""

    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing or set()
        self.loads: list[tuple[str, int]] = []

    def __call__(self, path: Path, metadata: ModelMetadata) -> LoadedModel:
        self.loads.append((metadata.name, metadata.version))
        if metadata.version in self.failing:
            raise RuntimeError(f"cannot load version {metadata.version}: broken graph")
        return FakeModel(metadata=metadata, path=path, module=None)


def loaded_model(
    version: int = 3, class_names: list[str] | None = None, size: int = 8
) -> LoadedModel:
    """A :class:`LoadedModel` of ``digits`` with metadata only (no module: never called)."""
    metadata = ModelMetadata(
        name="digits",
        version=version,
        created_at=datetime.now(timezone.utc),
        class_names=class_names or ["zero", "one", "two", "three"],
        input=InputSpec(height=size, width=size, channels=1, color_mode="grayscale"),
        arch="simple",
        parameter_count=1,
        files={"saved_model.pb": "0" * 64},
    )
    return LoadedModel(metadata=metadata, path=Path("/nowhere"), module=None)
