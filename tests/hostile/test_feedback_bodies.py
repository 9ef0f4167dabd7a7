"""Hostile feedback: ids that are not ours, too long or reused; labels that try to be paths;
models that do not exist; floods; and a capture folder that cannot be written. Every answer is a
4xx saying what to fix (a 503 only for a full feedback queue), nothing lands outside the
configured folders, and the service keeps classifying throughout."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.images import digit_png
from tests.helpers.servers import Server, healthy, metric_value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture()
def capturing(trained_repo: Path, tmp_path: Path, server_factory: Any) -> tuple[Server, Path]:
    """A service capturing every input into ``tmp_path/data``."""
    data = tmp_path / "data"
    server = server_factory(
        trained_repo,
        capture_rate="1",
        capture_dir=str(data / "captured"),
        feedback_dir=str(data / "feedback"),
        feedback_max_items="10",
    )
    return server, data


def files_under(root: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, _, names in os.walk(root) for name in names}


def predict(client: httpx.Client, **headers: str) -> httpx.Response:
    response = client.post(
        "/predict", files={"file": ("d.png", digit_png(), "image/png")}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"id": "0" * 65, "label": "0"}, 400, "prediction id"),
        ({"id": "../../etc/passwd", "label": "0"}, 400, "prediction id"),
        ({"id": "a/b", "label": "0"}, 400, "prediction id"),
        ({"id": "never-captured", "label": "0"}, 404, "not captured"),
        ({"id": 7, "label": "0"}, 400, '"id" must be'),
        ({"id": "x", "label": 3}, 400, '"label" must be'),
        ({"id": "x", "label": "0", "extra": 1}, 400, "unknown field"),
        ([], 400, "empty"),
        ([{"id": "x", "label": "0"}] * 11, 413, "at most 10"),
        ("not an object", 400, "not a JSON object"),
    ],
)
def test_bad_feedback_bodies_are_4xx_saying_what_to_fix(
    capturing: tuple[Server, Path], body: Any, status: int, says: str
) -> None:
    server, _ = capturing
    response = httpx.post(server.url + "/feedback", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert response.json()["id"] == response.headers["x-request-id"]


def test_labels_never_become_paths_and_ids_are_taken_once(
    capturing: tuple[Server, Path], tmp_path: Path
) -> None:
    server, data = capturing
    with server.client() as client:
        captured_id = predict(client, **{"X-Request-Id": "client-chosen-1"}).json()["id"]
        assert captured_id == "client-chosen-1"
        # A reused X-Request-Id: answered, but the first capture stays the one on record.
        assert predict(client, **{"X-Request-Id": "client-chosen-1"}).status_code == 200
        # A client id that is not sane is replaced by one of ours.
        odd = predict(client, **{"X-Request-Id": "has spaces and / slashes"})
        assert odd.headers["x-request-id"] != "has spaces and / slashes"
        for label in ["../x", "a/b", "a\\b", "", " 3", ".hidden", "x" * 300, "nul\x00"]:
            for new_class in (False, True):
                response = client.post(
                    "/feedback",
                    json={"id": captured_id, "label": label, "new_class": new_class},
                )
                assert response.status_code == 400, (label, response.text)
                assert "label" in response.json()["detail"]
        unknown = client.post("/feedback", json={"id": captured_id, "label": "cat"})
        assert unknown.status_code == 422
        assert "known labels: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in unknown.json()["detail"]
        new = client.post("/feedback", json={"id": captured_id, "label": "cat", "new_class": True})
        assert new.status_code == 200 and new.json()["results"][0]["outcome"] == "new_class"
        again = client.post("/feedback", json={"id": captured_id, "label": "0"})
        assert again.status_code == 409, again.text
        missing_model = client.post(
            "/models/nope/feedback",
            files={"file": ("d.png", digit_png(), "image/png")},
            data={"label": "0"},
        )
        assert missing_model.status_code == 404
        no_label = client.post(
            "/models/digits/feedback", files={"file": ("d.png", digit_png(), "image/png")}
        )
        assert no_label.status_code == 400 and "label" in no_label.json()["detail"]
        skipped = client.get("/metrics").text
    assert (
        metric_value(
            skipped, "imgcls_capture_skipped_total", {"model": "digits", "reason": "duplicate_id"}
        )
        == 1
    )
    # Everything written is inside the two configured folders.
    everything = files_under(tmp_path)
    inside = {path for path in everything if path.is_relative_to(data)}
    assert inside, "nothing was stored at all"
    logs = {path for path in everything - inside if path.suffix == ".log"}
    assert everything - inside - logs == set()
    assert (data / "feedback" / "digits" / "cat" / f"{captured_id}.png").is_file()


def test_a_flood_of_feedback_is_bounded_and_inference_keeps_answering(
    capturing: tuple[Server, Path],
) -> None:
    server, _ = capturing
    body = [{"id": f"unknown-{i}", "label": "0"} for i in range(10)]

    def flood(_: int) -> int:
        return httpx.post(server.url + "/feedback", json=body, timeout=60).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(flood, range(200)))
        with server.client() as client:
            during = predict(client)
    assert set(statuses) <= {200, 503}, set(statuses)
    assert statuses.count(200) > 0
    assert during.status_code == 200
    assert healthy(server)


def test_an_unwritable_capture_folder_stops_capture_not_serving(
    trained_repo: Path, tmp_path: Path, server_factory: Any
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the capture folder should be")
    server = server_factory(trained_repo, capture_rate="1", capture_dir=str(blocker / "captured"))
    with server.client() as client:
        for _ in range(20):
            predict(client)
        metrics = ""
        for _ in range(50):  # the writer thread reports within a moment
            metrics = client.get("/metrics").text
            if metric_value(metrics, "imgcls_capture_writable") == 0:
                break
    assert metric_value(metrics, "imgcls_capture_writable") == 0
    skipped = metric_value(
        metrics, "imgcls_capture_skipped_total", {"model": "digits", "reason": "write_error"}
    )
    assert skipped >= 1
    answered = {"route": "/predict", "code": "200", "model": "digits"}
    assert metric_value(metrics, "imgcls_requests_total", answered) == 20
    assert server.log().count("cannot write captured inputs") == 1  # one line per pause
