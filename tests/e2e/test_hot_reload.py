"""Hot reload under a steady request stream, and versions that must never be served."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.images import digit_png
from tests.helpers.models import auto_runtime, republish
from tests.helpers.servers import metric_value

pytestmark = pytest.mark.e2e
POLL_INTERVAL_S = 0.5


class Stream:
    """Sends /predict requests back to back from two threads; records every outcome."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.payload = digit_png()
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.versions: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(
                        "/predict", files={"file": ("d.png", self.payload, "image/png")}
                    )
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append((time.monotonic(), response.json()["model"]["version"]))

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait_for(predicate: object, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_new_version_is_served_without_failing_a_request(
    server_factory: object, repo_copy: Path
) -> None:
    srv = server_factory(repo_copy, poll_interval_s=str(POLL_INTERVAL_S))  # type: ignore[operator]
    with Stream(srv.url) as stream:
        wait_for(lambda: len(stream.versions) >= 20, 60)
        published_at = time.monotonic()
        version = republish(repo_copy)
        assert version == 2
        took = wait_for(lambda: any(v == 2 for _, v in stream.versions[-5:]), 60)
        first_new = min(t for t, v in stream.versions if v == 2)
        wait_for(lambda: sum(t > first_new + 0.5 for t, _ in stream.versions[-20:]) >= 20, 60)
    assert not stream.errors and set(stream.statuses) == {200}, (
        stream.errors[:3],
        set(stream.statuses),
    )
    # Served within the poll interval plus load and warm-up (generous: 2 shared CPU cores).
    assert first_new - published_at < POLL_INTERVAL_S + 20, took
    # Once swapped, never back to the old version.
    after = [v for t, v in stream.versions if t > first_new + 0.5]
    assert after and set(after) == {2}
    models = httpx.get(srv.url + "/models").json()
    assert models["versions"] == [
        {"version": 2, "state": "serving", "runtime": auto_runtime(repo_copy / "digits" / "2")},
        {"version": 1, "state": "available"},
    ]
    text = httpx.get(srv.url + "/metrics").text
    assert metric_value(text, "imgcls_model_info", {"version": "2"}) == 1
    assert metric_value(text, "imgcls_model_info", {"version": "1"}) == 0
    assert metric_value(text, "imgcls_model_reloads_total", {"result": "success"}) == 2


def test_corrupt_and_half_written_versions_are_never_served(
    server_factory: object, repo_copy: Path
) -> None:
    srv = server_factory(repo_copy, poll_interval_s=str(POLL_INTERVAL_S))  # type: ignore[operator]
    model_dir = repo_copy / "digits"
    # Version 2: half-written (no metadata.json yet). Version 3: a variables file altered after
    # publishing (checksum mismatch). Version 4: metadata.json that is not JSON.
    half = model_dir / "2"
    shutil.copytree(model_dir / "1", half)
    (half / "metadata.json").unlink()
    tampered = model_dir / str(republish(repo_copy))
    assert tampered.name == "3"
    data_file = next((tampered / "variables").glob("variables.data-*"))
    blob = bytearray(data_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data_file.write_bytes(bytes(blob))
    garbled = model_dir / "4"
    shutil.copytree(model_dir / "1", garbled)
    (garbled / "metadata.json").write_text("{ not json")

    def states() -> dict[int, dict[str, str]]:
        rows = httpx.get(srv.url + "/models").json()["versions"]
        return {row["version"]: row for row in rows}

    wait_for(
        lambda: {2, 3, 4} <= {v for v, row in states().items() if row["state"] == "failed"}, 30
    )
    rows = states()
    assert rows[1]["state"] == "serving"
    assert "metadata.json" in rows[2]["reason"]
    assert "checksum mismatch" in rows[3]["reason"]
    assert "not valid JSON" in rows[4]["reason"]
    response = httpx.post(srv.url + "/predict", files={"file": ("d.png", digit_png(), "image/png")})
    assert response.status_code == 200 and response.json()["model"]["version"] == 1
    text = httpx.get(srv.url + "/metrics").text
    assert metric_value(text, "imgcls_model_reloads_total", {"result": "failure"}) == 2  # 3 and 4
    assert metric_value(text, "imgcls_model_info", {"version": "1"}) == 1

    # Completing the half-written version makes it eligible: it is loaded once its files check out.
    meta = json.loads((model_dir / "1" / "metadata.json").read_text())
    meta["version"] = 2
    (half / "metadata.json").write_text(json.dumps(meta))
    wait_for(lambda: states()[2]["state"] == "serving", 60)
