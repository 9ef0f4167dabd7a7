"""Production talks back, end to end: a real service captures every input, clients send the true
labels back, the live-accuracy counters match the clients' own count of right and wrong answers,
the labelled files are where ``train.py --data`` reads them, and a training run on the bundled
digits plus that feedback folder publishes a version."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.feedback import captured
from tests.helpers.processes import run_module, run_train
from tests.helpers.servers import Server, metric_value
from training.data import load_digits_data

pytestmark = pytest.mark.e2e

#: Predictions sent: held-out digits, and digits made hard on purpose (so some answers are wrong).
N_HELD_OUT = 160
N_HARD = 40
#: Feedback items per POST /feedback (the default IMGCLS_FEEDBACK_MAX_ITEMS is 100).
FEEDBACK_BATCH = 100


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def examples() -> list[tuple[bytes, str]]:
    """(PNG, true label): held-out digits as they are, then digits inverted and turned a
    quarter (dark ink on light, sideways: a digits model gets many of these wrong)."""
    test = load_digits_data(0.1, 0.2).test
    images, labels = test.images[..., 0], test.labels
    normal = [(png(images[i]), str(labels[i])) for i in range(N_HELD_OUT)]
    hard = [
        (png(np.rot90(255 - images[i]).copy()), str(labels[i]))
        for i in range(N_HELD_OUT, N_HELD_OUT + N_HARD)
    ]
    return normal + hard


@pytest.fixture()
def capturing(trained_repo: Path, tmp_path: Path, server_factory: object) -> tuple[Server, Path]:
    data = tmp_path / "data"
    server = server_factory(  # type: ignore[operator]
        trained_repo,
        capture_rate="1",
        capture_dir=str(data / "captured"),
        feedback_dir=str(data / "feedback"),
    )
    return server, data


def test_feedback_counts_match_the_clients_and_the_files_train_a_version(
    capturing: tuple[Server, Path], tmp_path: Path
) -> None:
    server, data = capturing
    answers: list[tuple[str, str, str]] = []  # (prediction id, true label, answered label)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for image, truth in examples():
            response = client.post("/predict", files={"file": ("digit.png", image, "image/png")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["id"] == response.headers["x-request-id"] == body["results"][0]["id"]
            answers.append((body["id"], truth, body["results"][0]["predictions"][0]["label"]))
        right = sum(truth == answered for _, truth, answered in answers)
        wrong = len(answers) - right
        assert wrong >= 5, "the hard digits must give some wrong answers for this test to mean much"
        assert right >= N_HELD_OUT * 0.9

        # Capture is asynchronous: every id must be on disk before its feedback is sent.
        deadline_ok = _wait_for(lambda: len(captured(data / "captured")) == len(answers))
        assert deadline_ok, f"{len(captured(data / 'captured'))} of {len(answers)} captured"

        stored = 0
        for start in range(0, len(answers), FEEDBACK_BATCH):
            batch = answers[start : start + FEEDBACK_BATCH]
            response = client.post(
                "/feedback", json=[{"id": pid, "label": truth} for pid, truth, _ in batch]
            )
            assert response.status_code == 200, response.text
            assert response.json()["failed"] == 0, response.json()
            stored += response.json()["stored"]
            outcomes = [result["outcome"] for result in response.json()["results"]]
            expected = ["correct" if t == a else "wrong" for _, t, a in batch]
            assert outcomes == expected
        assert stored == len(answers)

        # The same feedback twice is refused: a prediction is labelled once.
        again = client.post("/feedback", json={"id": answers[0][0], "label": answers[0][1]})
        assert again.status_code == 409, again.text
        metrics = client.get("/metrics").text

    version = {"model": "digits", "version": "1"}
    counted = {
        outcome: metric_value(metrics, "imgcls_feedback_total", {**version, "outcome": outcome})
        for outcome in ("correct", "wrong", "new_class")
    }
    assert counted == {"correct": right, "wrong": wrong, "new_class": 0}
    assert metric_value(metrics, "imgcls_captured_total", {"model": "digits"}) == len(answers)

    # Files: one image per answer under its true label (the bytes sent), one record each.
    feedback = data / "feedback" / "digits"
    per_label = Counter(path.parent.name for path in feedback.glob("[0-9]/*.png"))
    assert per_label == Counter(truth for _, truth, _ in answers)
    records = {path.stem: json.loads(path.read_text()) for path in feedback.glob(".records/*.json")}
    assert set(records) == {pid for pid, _, _ in answers}
    assert {r["outcome"] for r in records.values()} == {"correct", "wrong"}
    sent = dict(
        zip((pid for pid, _, _ in answers), (image for image, _ in examples()), strict=True)
    )
    for pid, truth, _ in answers:
        assert (feedback / truth / f"{pid}.png").read_bytes() == sent[pid]

    # Training reads them: the bundled digits as a folder, plus the feedback folder.
    bundled = tmp_path / "digits-bundled"
    exported = run_module("training.digits_folder", str(bundled), timeout=300)
    assert exported.returncode == 0, exported.stderr
    models = tmp_path / "models"
    trained = run_train(
        "--data", str(bundled), "--data", str(feedback), "--model-name", "digits",
        "--models-dir", str(models), "--run-dir", str(tmp_path / "runs"),
        "--epochs", "1", "--verbose", "0",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    metadata = json.loads((models / "digits" / "1" / "metadata.json").read_text())
    sources = metadata["training"]["data"]["sources"]
    assert [Path(source["path"]).resolve() for source in sources] == [
        bundled.resolve(),
        feedback.resolve(),
    ]
    assert sources[1]["files"] == len(answers)
    assert sum(metadata["training"]["data"]["class_counts"].values()) == 1797 + len(answers)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
