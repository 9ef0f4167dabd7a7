"""Which runtime serves a version, and the named fallback when it cannot be the one asked for:
the branches decided from metadata.json alone (real artifacts: tests/e2e/test_runtimes.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from contract.metadata import InputSpec, ModelMetadata
from contract.runtimes import RuntimeArtifact, RuntimeReport
from service.serving import runtimes
from service.serving.runtimes import SAVEDMODEL, choose


def artifact(
    name: str, speed: float, *, passed: bool = True, flags: tuple[str, ...] = ()
) -> RuntimeArtifact:
    return RuntimeArtifact(
        name=name,
        runtime="openvino",
        precision="int8" if name.endswith("int8") else "fp32",
        network_input="pixels",
        entry="model.xml",
        files={f"runtimes/{name}/model.xml": "0" * 64},
        converter={"openvino": "2026.4.1"},
        cpu_flags=list(flags),
        max_abs_difference=0.01,
        top1_agreement=1.0 if passed else 0.9,
        test_accuracy=0.95,
        test_images=360,
        images_per_s={"1": speed, "8": 4 * speed, "32": 8 * speed},
        passed=passed,
        reason="" if passed else "top-1 agreement 0.9000 with the SavedModel is below 0.995",
    )


def metadata(*artifacts: RuntimeArtifact, savedmodel_speed: float = 100.0) -> ModelMetadata:
    report = (
        RuntimeReport(
            savedmodel_test_accuracy=0.95,
            savedmodel_images_per_s={
                "1": savedmodel_speed,
                "8": 4 * savedmodel_speed,
                "32": 8 * savedmodel_speed,
            },
            artifacts=list(artifacts),
        )
        if artifacts
        else None
    )
    return ModelMetadata(
        name="digits",
        version=1,
        created_at=datetime.now(timezone.utc),
        class_names=["a", "b"],
        input=InputSpec(height=8, width=8, channels=1, color_mode="grayscale"),
        arch="simple",
        parameter_count=1,
        runtimes=report,
        files={"saved_model.pb": "0" * 64},
    )


@pytest.fixture(autouse=True)
def avx2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: {"avx2"})


def test_savedmodel_asked_is_savedmodel_without_looking(tmp_path: Path) -> None:
    assert choose(tmp_path, metadata(artifact("openvino-fp32", 900)), SAVEDMODEL, threads=0) == (
        runtimes.SAVEDMODEL_CHOICE
    )


def test_a_version_without_artifacts_runs_on_its_savedmodel(tmp_path: Path) -> None:
    auto = choose(tmp_path, metadata(), "auto", threads=0)
    assert (auto.name, auto.fallback) == (SAVEDMODEL, "")  # nothing asked that it lacks
    named = choose(tmp_path, metadata(), "openvino-int8", threads=0)
    assert (named.name, named.fallback) == (SAVEDMODEL, "not_compiled")


def test_auto_keeps_the_savedmodel_when_nothing_passed_or_nothing_is_faster(tmp_path: Path) -> None:
    slower = choose(tmp_path, metadata(artifact("openvino-fp32", 90)), "auto", threads=0)
    assert (slower.name, slower.fallback) == (SAVEDMODEL, "")
    assert "faster" in slower.detail
    failed = choose(
        tmp_path, metadata(artifact("openvino-int8", 900, passed=False)), "auto", threads=0
    )
    assert (failed.name, failed.fallback) == (SAVEDMODEL, "")
    assert "passed" in failed.detail


def test_auto_keeps_the_savedmodel_when_every_artifact_runs_after_a_preprocess(
    tmp_path: Path,
) -> None:
    behind = artifact("openvino-bf16", 900).model_copy(update={"network_input": "preprocessed"})
    auto = choose(tmp_path, metadata(behind), "auto", threads=0)
    assert (auto.name, auto.fallback) == (SAVEDMODEL, "")  # auto's choice, not a fallback
    assert "preprocess" in auto.detail and "IMGCLS_RUNTIME=openvino" in auto.detail


@pytest.mark.parametrize(
    ("asked", "found", "fallback", "detail"),
    [
        ("onnxruntime", [artifact("openvino-fp32", 300)], "not_found", "no artifact 'onnxruntime'"),
        (
            "openvino-int8",
            [artifact("openvino-int8", 900, passed=False)],
            "not_passed",
            "top-1 agreement",
        ),
        (
            "openvino-bf16",
            [artifact("openvino-bf16", 900, flags=("avx512_bf16",))],
            "cpu_unsupported",
            "this CPU lacks avx512_bf16",
        ),
    ],
)
def test_an_artifact_that_cannot_serve_is_a_named_fallback(
    tmp_path: Path, asked: str, found: list[RuntimeArtifact], fallback: str, detail: str
) -> None:
    choice = choose(tmp_path, metadata(*found), asked, threads=0)
    assert (choice.name, choice.network, choice.fallback) == (SAVEDMODEL, None, fallback)
    assert detail in choice.detail


def test_a_runtime_that_is_not_installed_is_a_named_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtimes, "_installed", lambda runtime: False)
    choice = choose(tmp_path, metadata(artifact("openvino-fp32", 300)), "auto", threads=0)
    assert (choice.name, choice.fallback) == (SAVEDMODEL, "not_installed")
    assert "openvino package is not installed" in choice.detail


def test_auto_tries_the_fastest_first_then_the_next(tmp_path: Path) -> None:
    """Files of neither artifact exist here: each is refused for its files, fastest first, and
    the reason of the last one tried is the fallback's."""
    choice = choose(
        tmp_path,
        metadata(artifact("openvino-fp32", 300), artifact("openvino-int8", 900)),
        "openvino",
        threads=0,
    )
    assert (choice.name, choice.fallback) == (SAVEDMODEL, "checksum")
    assert choice.detail.startswith("openvino-fp32: runtimes/openvino-fp32 is missing")


def test_small_networks_compile_static_batch_sizes_up_to_the_largest_batch() -> None:
    small = metadata()
    assert runtimes.static_batch_sizes(small, 32) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    assert runtimes.static_batch_sizes(small, 10) == (1, 2, 3, 4, 6, 8, 10)
    assert runtimes.static_batch_sizes(small, 1) == (1,)
    assert runtimes.static_batch_sizes(small, 0) == ()  # no batcher named: dynamic
    # larger batches run in chunks of the cap: the copies' memory stays bounded
    sizes = runtimes.static_batch_sizes(small, 1024)
    assert sizes == runtimes.static_batch_sizes(small, 32)
    assert sizes[-1] == runtimes.STATIC_BATCH_SIZE_CAP
    # a batch runs on the smallest size that holds it: padding is under a third of the call
    for count in range(1, sizes[-1] + 1):
        size = min(s for s in sizes if s >= count)
        assert (size - count) / size < 1 / 3, (count, size)
    large = small.model_copy(update={"parameter_count": runtimes.STATIC_SHAPES_MAX_PARAMETERS + 1})
    assert runtimes.static_batch_sizes(large, 32) == ()


class _Uniform:
    """A compiled network stand-in answering uniform probabilities, except at one batch size."""

    batch_sizes: tuple[int, ...] = ()

    def __init__(self, broken_size: int = 0) -> None:
        self.broken_size = broken_size

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = np.full((len(images), 2), 0.5, dtype=np.float32)
        if len(images) == self.broken_size:
            out[:, 0], out[:, 1] = 0.9, 0.1  # another compilation answering wrong
        return out


def test_a_network_answering_another_batch_size_differently_cannot_serve() -> None:
    assert runtimes.answers_problem(_Uniform(), metadata()) == ""
    problem = runtimes.answers_problem(_Uniform(broken_size=5), metadata())
    assert "differently in a batch of 5" in problem
