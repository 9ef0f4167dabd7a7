"""Compiled runtimes served for real: ``python -m service`` on the shared trained digits, whose
version carries OpenVINO artifacts (fp32, bf16, int8) beside its SavedModel.

* ``auto`` serves what ranks first (the whole digits model is compiled, pixels in), an
  artifact asked for by name serves, and every surface says which (``/models``,
  ``imgcls_model_info``, V2 and TF Serving metadata, the V2 config);
* an artifact of a version published before (its network after a TensorFlow ``preprocess``)
  still serves when asked for, through that preprocess;
* a reduced-precision artifact answers held-out digits end to end like the SavedModel;
* a damaged artifact (changed bytes, or bytes a runtime cannot load) costs its speed, never
  the version: the SavedModel serves, and the log, ``/models`` and the metric say why;
* pixel tensors not at the input size run on the SavedModel, which resizes them;
* a small network compiled per static batch size answers every batch size (padded, or in
  chunks above the largest) as its dynamic compilation does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contract.metadata import read_metadata, sha256_file, write_metadata
from contract.runtimes import (
    PREPROCESS_ENDPOINT,
    RUNTIMES_DIR,
    SAVEDMODEL,
    cpu_flags,
    runnable_fastest_first,
)
from tests.helpers.images import gray_png
from tests.helpers.models import auto_runtime
from tests.helpers.protocol_digits import held_out, rgb_pixels
from tests.helpers.servers import Server, metric_value, metrics_text

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., Server]
REDUCED = ("openvino-int8", "openvino-bf16")


def runtime_row(http: httpx.Client, version: int = 1) -> dict[str, Any]:
    rows = http.get("/models").json()["versions"]
    row = next(r for r in rows if r["version"] == version)
    assert row["state"] == "serving", row
    return dict(row["runtime"])


def v2_probabilities(http: httpx.Client, pixels: np.ndarray) -> np.ndarray:
    """Probabilities of (N, H, W, 3) float pixels through the V2 REST route."""
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    response = http.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def predict_top1(http: httpx.Client, gray: np.ndarray) -> list[str]:
    files = [("file", (f"d{i}.png", gray_png(image), "image/png")) for i, image in enumerate(gray)]
    response = http.post("/predict", files=files, params={"top_k": 1})
    assert response.status_code == 200, response.text
    return [result["predictions"][0]["label"] for result in response.json()["results"]]


def test_auto_serves_what_ranks_first_and_every_surface_says_which(
    server: Server, trained_repo: Path
) -> None:
    row = auto_runtime(trained_repo / "digits" / "1")
    expected = row["name"]
    with server.client() as http:
        assert runtime_row(http) == row
        metadata = http.get("/v2/models/digits").json()
        assert metadata["parameters"]["runtime"] == expected
        config = http.get("/v2/models/digits/config").json()
        assert config["parameters"]["runtime"] == {"string_value": expected}
        tfs = http.get("/v1/models/digits/metadata").json()
        assert tfs["metadata"]["runtime"] == expected
    labels = {"name": "digits", "version": "1", "runtime": expected, "fallback": ""}
    assert metric_value(metrics_text(server), "imgcls_model_info", labels) == 1


def publish_as_before(version_dir: Path, artifact: str) -> None:
    """Rewrite ``artifact`` the way versions published before were compiled: everything up to
    the digit normalisation as a TensorFlow ``preprocess`` SavedModel inside the artifact, and
    only the network after it in OpenVINO (``network_input`` "preprocessed"). The layout and
    the service's path are the old ones; the preprocess is today's code (its resample is the
    einsums, where an old artifact holds ``ImageProjectiveTransformV3``)."""
    import keras
    import openvino as ov
    import tensorflow as tf

    from training.compile import rebuild_model
    from training.runtimes import artifact_checksums

    metadata = read_metadata(version_dir)
    model = rebuild_model(version_dir, metadata)
    prefix = keras.Model(model.input, model.get_layer("digit_jitter").output)
    network = keras.Model(model.get_layer("rescale").input, model.output)
    folder = version_dir / RUNTIMES_DIR / artifact
    shutil.rmtree(folder)
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        name=PREPROCESS_ENDPOINT,
        fn=lambda images: prefix(images, training=False),
        input_signature=[tf.TensorSpec((None, 28, 28, 3), tf.float32, name="images")],
    )
    archive.write_out(str(folder / PREPROCESS_ENDPOINT), verbose=False)
    spec = tf.TensorSpec((None, 28, 28, 1), tf.float32, name="images")
    graph = tf.function(lambda images: network(images, training=False))
    ov.save_model(ov.convert_model(graph.get_concrete_function(spec)), str(folder / "model.xml"))
    assert metadata.runtimes is not None
    found = metadata.runtimes.artifact(artifact)
    assert found is not None
    found.network_input = "preprocessed"
    found.files = artifact_checksums(version_dir, folder)
    write_metadata(version_dir, metadata)


def test_an_artifact_published_before_runs_through_its_tensorflow_preprocess(
    repo_copy: Path, server_factory: ServerFactory
) -> None:
    publish_as_before(repo_copy / "digits" / "1", "openvino-fp32")
    before = server_factory(repo_copy, runtime="openvino-fp32")
    reference = server_factory(repo_copy, runtime=SAVEDMODEL)
    gray, labels = held_out(32)
    pixels = rgb_pixels(gray)
    with before.client() as compiled, reference.client() as exact:
        assert runtime_row(compiled) == {"name": "openvino-fp32", "asked": "openvino-fp32"}
        got = v2_probabilities(compiled, pixels)
        np.testing.assert_allclose(got, v2_probabilities(exact, pixels), atol=1e-4)
        assert (got.argmax(1) == labels).mean() >= 0.9


def test_a_reduced_precision_artifact_answers_like_the_savedmodel(
    trained_repo: Path, server_factory: ServerFactory
) -> None:
    report = read_metadata(trained_repo / "digits" / "1").runtimes
    assert report is not None
    flags = cpu_flags()
    passed = [
        a
        for name in REDUCED
        if (a := report.artifact(name)) is not None and a.passed and set(a.cpu_flags) <= flags
    ]
    assert passed, f"no reduced-precision artifact passed the rule: {report.artifacts}"
    reduced = passed[0]
    compiled = server_factory(trained_repo, runtime=reduced.name)
    reference = server_factory(trained_repo, runtime=SAVEDMODEL)
    gray, labels = held_out()
    pixels = rgb_pixels(gray)
    with compiled.client() as fast, reference.client() as exact:
        assert runtime_row(fast) == {"name": reduced.name, "asked": reduced.name}
        assert runtime_row(exact) == {"name": SAVEDMODEL, "asked": SAVEDMODEL}
        # every surface names the artifact that computes
        metadata = fast.get("/v2/models/digits").json()
        assert metadata["parameters"]["runtime"] == reduced.name
        config = fast.get("/v2/models/digits/config").json()
        assert config["parameters"]["runtime"] == {"string_value": reduced.name}
        assert fast.get("/v1/models/digits/metadata").json()["metadata"]["runtime"] == reduced.name
        got, want = v2_probabilities(fast, pixels), v2_probabilities(exact, pixels)
        # Another precision computed them (not the SavedModel again) ...
        assert np.abs(got - want).max() > 1e-5
        # ... within what publishing measured, and with the same answers.
        assert np.abs(got - want).max() <= max(0.1, 2 * reduced.max_abs_difference)
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
        assert (got.argmax(1) == labels).mean() >= 0.9
        assert predict_top1(fast, gray[:16]) == predict_top1(exact, gray[:16])
        # Pixels not at the input size run on the SavedModel, which resizes them.
        small = pixels[:4, ::2, ::2]
        np.testing.assert_allclose(
            v2_probabilities(fast, small), v2_probabilities(exact, small), atol=1e-6
        )
    labels_info = {"name": "digits", "version": "1", "runtime": reduced.name, "fallback": ""}
    assert metric_value(metrics_text(compiled), "imgcls_model_info", labels_info) == 1


def damage_bytes(version_dir: Path, artifact: str) -> str:
    weights = version_dir / RUNTIMES_DIR / artifact / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return f"checksum mismatch for {RUNTIMES_DIR}/{artifact}/model.bin"


def unloadable_with_matching_checksums(version_dir: Path, artifact: str) -> str:
    """An IR no runtime can read, its new checksum recorded: only loading can tell."""
    ir = version_dir / RUNTIMES_DIR / artifact / "model.xml"
    ir.write_text("<net name='broken'><layers>")
    metadata = read_metadata(version_dir)
    assert metadata.runtimes is not None
    found = metadata.runtimes.artifact(artifact)
    assert found is not None
    found.files[ir.relative_to(version_dir).as_posix()] = sha256_file(ir)
    write_metadata(version_dir, metadata)
    return "RuntimeError"


@pytest.mark.parametrize(
    ("damage", "fallback"),
    [(damage_bytes, "checksum"), (unloadable_with_matching_checksums, "load_failed")],
)
def test_a_damaged_artifact_falls_back_to_the_savedmodel_and_says_so(
    repo_copy: Path,
    server_factory: ServerFactory,
    damage: Callable[[Path, str], str],
    fallback: str,
) -> None:
    version_dir = repo_copy / "digits" / "1"
    detail = damage(version_dir, "openvino-fp32")
    srv = server_factory(repo_copy, runtime="openvino-fp32")
    gray, labels = held_out(16)
    with srv.client() as http:
        row = runtime_row(http)
        assert row["name"] == SAVEDMODEL and row["fallback"] == fallback
        assert detail in row["detail"]
        # The version serves, right, on its SavedModel.
        top1 = predict_top1(http, gray)
        assert np.mean([int(label) for label in top1] == labels) >= 0.9
    info = {"name": "digits", "version": "1", "runtime": SAVEDMODEL, "fallback": fallback}
    assert metric_value(metrics_text(srv), "imgcls_model_info", info) == 1
    assert "runs on its SavedModel instead of 'openvino-fp32'" in srv.log()


def test_a_runtime_asked_by_name_passes_over_a_damaged_artifact_to_the_next(
    repo_copy: Path, server_factory: ServerFactory
) -> None:
    version_dir = repo_copy / "digits" / "1"
    report = read_metadata(version_dir).runtimes
    assert report is not None
    # "openvino" serves its fastest passed artifact this CPU runs, trying them in that order
    ranked = [a.name for a in runnable_fastest_first(report.artifacts, cpu_flags())]
    assert len(ranked) >= 2, f"fewer than two artifacts can serve here: {report}"
    damage_bytes(version_dir, ranked[0])
    srv = server_factory(repo_copy, runtime="openvino")
    with srv.client() as http:
        row = runtime_row(http)
    assert row == {"name": ranked[1], "asked": "openvino"}
    assert f"{ranked[0]} cannot serve (checksum mismatch" in srv.log()


def test_a_runtime_nobody_published_is_a_named_fallback(
    trained_repo: Path, server_factory: ServerFactory, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_repo, models)
    (models / "serving.yaml").write_text(
        json.dumps({"models": {"digits": {"runtime": "onnxruntime"}}})
    )
    srv = server_factory(models)
    with srv.client() as http:
        row = runtime_row(http)
    assert row["name"] == SAVEDMODEL and row["fallback"] == "not_found"
    assert row["asked"] == "onnxruntime" and "openvino-fp32" in row["detail"]


def test_static_batch_shapes_answer_every_batch_size_like_a_dynamic_one(trained_repo: Path) -> None:
    counts = (*range(1, 9), 19)  # every size up to the largest (exact or padded), and chunks
    # A child process: OpenVINO stays out of this one (see tests/helpers/static_shapes.py).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.static_shapes",
            str(trained_repo / "digits" / "1"),
            "8",
            ",".join(map(str, counts)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found, "no passed artifact runs on this CPU"
    for name, artifact in found.items():  # what auto serves (int8 here) and the others
        assert artifact["served"] == [name, name]
        # digits is small: one compilation per size up to the batcher's largest batch
        assert artifact["batch_sizes"] == [[1, 2, 3, 4, 6, 8], []]
        # Reduced precisions round differently in another compilation's kernels (bf16: up to
        # 3e-3 here): within what the publish measured against the SavedModel.
        atol = (
            1e-5
            if artifact["precision"] == "fp32"
            else 2 * artifact["published_max_abs_difference"]
        )
        for row in artifact["rows"]:
            assert row["shape"] == [row["count"], 10], (name, row)
            assert row["max_abs_difference"] <= atol, (name, row)
            assert row["same_top1"], (name, row)
        assert artifact["accuracy"] >= 0.9, name
