"""Faults: a model call that raises, a model repository that disappears or turns into a file,
and versions that must never be served (symlinked out of the repository). The loaded version
keeps serving through all of it, and each fault is reported where an operator looks."""

from __future__ import annotations

import io
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import digit_png, noise_png
from tests.helpers.models import auto_runtime
from tests.helpers.servers import Server, metric_value, metrics_text
from tests.helpers.stress_model import POISON_MESSAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

POLL_INTERVAL_S = 0.3


def white_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 255, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def scores(response: httpx.Response) -> dict[str, float]:
    return {p["label"]: p["score"] for p in response.json()["results"][0]["predictions"]}


def post(server: Server, data: bytes, name: str = "x.png") -> httpx.Response:
    return httpx.post(
        server.url + "/predict", files={"file": (name, data, "image/png")}, timeout=30
    )


def test_a_failing_model_call_fails_its_batch_only_and_is_counted(stress_server: Server) -> None:
    good = noise_png((64, 64), 5)
    reference = scores(post(stress_server, good))
    before = metrics_text(stress_server)

    failed = post(stress_server, white_png(), "white.png")
    assert failed.status_code == 500
    assert failed.json()["detail"] == (
        "the model failed on this batch (InvalidArgumentError); retry"
    )
    after_failure = post(stress_server, good)  # the next batch works
    assert after_failure.status_code == 200
    assert scores(after_failure) == pytest.approx(reference, abs=1e-3)

    # Concurrently: the poisoned batch fails, the others are answered correctly.
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, stress_server, white_png())]
        futures += [pool.submit(post, stress_server, good) for _ in range(7)]
        responses = [future.result() for future in futures]
    assert responses[0].status_code == 500
    statuses = [r.status_code for r in responses[1:]]
    assert set(statuses) <= {200, 500}
    assert statuses.count(500) <= 3  # only batch-mates of the poisoned image (batches of 4)
    for response in responses[1:]:
        if response.status_code == 200:
            assert scores(response) == pytest.approx(reference, abs=1e-3)

    after = metrics_text(stress_server)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert delta("imgcls_inference_errors_total") == 2  # one failed model call per poisoning
    assert delta("imgcls_requests_total", route="/predict", code="500") == 2 + statuses.count(500)
    log = stress_server.log()
    assert "model call failed" in log and POISON_MESSAGE in log
    assert httpx.get(stress_server.url + "/readyz", timeout=10).status_code == 200


def wait_for(predicate: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s")


def test_repository_faults_keep_the_loaded_version_serving(
    server_factory: object, repo_copy: Path, tmp_path: Path
) -> None:
    srv: Server = server_factory(repo_copy, poll_interval_s=str(POLL_INTERVAL_S))  # type: ignore[operator]
    model_dir = repo_copy / "digits"
    runtime = auto_runtime(model_dir / "1")

    def models() -> dict[str, object]:
        return dict(httpx.get(srv.url + "/models", timeout=10).json())

    def served() -> int:
        response = post(srv, digit_png())
        assert response.status_code == 200, response.text
        return int(response.json()["model"]["version"])

    # 1. Versions that reach outside the repository are refused and shown failed.
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copytree(model_dir / "1", outside / "2")
    meta = (outside / "2" / "metadata.json").read_text().replace('"version": 1', '"version": 2')
    (outside / "2" / "metadata.json").write_text(meta)
    os.symlink(outside / "2", model_dir / "2")  # the whole version folder is a link
    shutil.copytree(model_dir / "1", model_dir / "3")
    meta3 = (model_dir / "3" / "metadata.json").read_text().replace('"version": 1', '"version": 3')
    (model_dir / "3" / "metadata.json").write_text(meta3)
    shutil.rmtree(model_dir / "3" / "variables")
    os.symlink(outside / "2" / "variables", model_dir / "3" / "variables")  # a link inside

    def failed() -> dict[int, str]:
        rows = models()["versions"]
        assert isinstance(rows, list)
        return {row["version"]: row.get("reason", "") for row in rows if row["state"] == "failed"}

    wait_for(lambda: {2, 3} <= failed().keys())
    reasons = failed()
    assert "outside the model repository" in reasons[2]
    assert "symbolic link" in reasons[3]
    assert served() == 1

    # 2. The model folder disappears: still serving, reported on /readyz, /models and the log.
    gone = repo_copy / "digits-moved-away"
    model_dir.rename(gone)
    wait_for(lambda: models()["repository_problem"] is not None)
    problem = str(models()["repository_problem"])
    assert "does not exist" in problem
    ready = httpx.get(srv.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and "serving the loaded version" in ready.json()["warning"]
    assert served() == 1
    assert models()["versions"] == [{"version": 1, "state": "serving", "runtime": runtime}]

    # 3. A file where the folder was: the same.
    model_dir.write_text("not a folder")
    wait_for(lambda: "not a folder" in str(models()["repository_problem"]))
    assert served() == 1

    # 4. Put back: the problem clears by itself.
    model_dir.unlink()
    gone.rename(model_dir)
    wait_for(lambda: models()["repository_problem"] is None)
    assert "warning" not in httpx.get(srv.url + "/readyz", timeout=10).json()
    assert served() == 1
    log = srv.log()
    assert "cannot read the model repository" in log and "still serving version 1" in log
    assert "is readable" in log
