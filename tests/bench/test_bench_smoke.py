"""Smoke tests of the benchmark harness (``bench/``): it runs and writes well-formed results.

No timing is asserted (the machine is shared and slow); only that every part produced numbers:
positive counts, percentiles in order, no errors at low concurrency, the report and the plot.
wrk is required: missing, these tests are skipped, or FAILED in CI (``CI=true``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import budget, loadgen, photos, report
from bench.loadgen import LevelResult
from tests.helpers.processes import missing_tool

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def require_wrk() -> None:
    if loadgen.wrk_path() is None:
        missing_tool("wrk is not installed (apt-get install wrk, or `make system-deps`)")


def test_multipart_body_holds_every_image() -> None:
    body = loadgen.multipart_body([("a.png", b"\x89PNGaaa"), ("b.png", b"\x89PNGbbb")])
    assert body.count(b'name="file"') == 2
    assert b'filename="b.png"' in body
    assert body.endswith(f"--{loadgen.BOUNDARY}--\r\n".encode())


def test_budget_rows_go_to_the_innermost_known_frame() -> None:
    def frame(function: str, path: str) -> str:
        return f"{function} ({path}:1)"

    loop_root = [frame("<module>", "/r/service/__main__.py"), frame("run", "/a/asyncio/runners.py")]
    app = [*loop_root, frame("run_asgi", "/s/uvicorn/protocols/http/httptools_impl.py")]
    route = [
        *app,
        frame("app", "/s/fastapi/routing.py"),
        frame("predict", "/r/service/routes/p.py"),
    ]
    assert budget.classify(loop_root) == budget.LOOP
    assert budget.classify(app) == budget.FRAMEWORK
    assert budget.classify([*route, frame("load", "/s/PIL/ImageFile.py")]) == budget.DECODE
    top_k = frame("top_k.<locals>.<listcomp>", "/r/service/serving/inference.py")
    assert budget.classify([*route, top_k]) == budget.JSON
    submit = [
        *route,
        frame("submit", "/r/service/serving/batching.py"),
        frame("x", "/a/asyncio/q.py"),
    ]
    assert budget.classify(submit) == budget.QUEUE
    watcher = [*loop_root, frame("_wait_for_disconnect", "/r/service/http/disconnect.py")]
    receive = frame("receive", "/s/uvicorn/protocols/http/httptools_impl.py")
    assert budget.classify([*watcher, receive]) == budget.DISCONNECT
    assert budget.classify([*route, frame("inc", "/s/prometheus_client/m.py")]) == budget.METRICS


def test_multipart_parts_say_what_the_file_is() -> None:
    body = loadgen.multipart_body([("a.jpg", b"\xff\xd8"), ("b.png", b"\x89PNG")])
    assert b'filename="a.jpg"\r\nContent-Type: image/jpeg' in body
    assert b'filename="b.png"\r\nContent-Type: image/png' in body


def test_a_rotating_script_sends_every_body_in_turn(tmp_path: Path) -> None:
    requests = [[(f"p{i}.jpg", bytes([i]) * 10)] for i in range(3)]
    script = loadgen.write_rotating_script(tmp_path, requests, "photos")
    text = script.read_text()
    bodies = sorted(tmp_path.glob("photos-*.body"))
    assert [path.name for path in bodies] == ["photos-0.body", "photos-1.body", "photos-2.body"]
    for index, path in enumerate(bodies):
        assert bytes([index]) * 10 in path.read_bytes()
        assert json.dumps(str(path)) in text
    assert "request = function()" in text and "done = function" in text


def test_the_photo_workload_is_real_varied_jpeg_photos() -> None:
    from PIL import Image

    made = photos.make_photos(4, seed=3)
    assert [name for name, _ in made] == ["china", "flower", "china", "flower"]
    blobs = [data for _, data in made]
    assert len(set(blobs)) == 4  # varied crops, not one photo four times
    for data in blobs:
        assert photos.MIN_JPEG_BYTES <= len(data) <= photos.MAX_JPEG_BYTES
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.size == (640, 480) and image.mode == "RGB"


def check_level(level: dict[str, Any] | LevelResult, *, concurrency: int, images: int) -> None:
    """A level's numbers are present and sane; no errors (the levels tested here are low)."""
    data = level.to_dict() if isinstance(level, LevelResult) else level
    assert data["concurrency"] == concurrency
    assert data["images_per_request"] == images
    assert data["requests"] > 0 and data["rps"] > 0 and data["duration_s"] > 0
    assert data["images_per_s"] == pytest.approx(data["rps"] * images, rel=0.01)
    assert 0 < data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"] <= data["max_ms"]
    assert data["errors"] == {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    assert data["loadgen_cpu_s"] >= 0


def test_wrk_drives_a_real_service(
    trained_repo: Path, server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """The load generator against ``python -m service``: single- and multi-image requests."""
    from PIL import Image

    server = server_factory(trained_repo)
    image = tmp_path / "seven.png"
    Image.new("L", (28, 28), 40).save(image)
    files = [("seven.png", image.read_bytes())]
    for images in (1, 3):
        script = loadgen.write_script(tmp_path, files * images, f"x{images}")
        result = loadgen.run_wrk(
            server.url + "/predict", script, concurrency=2, duration_s=1, images_per_request=images
        )
        check_level(result, concurrency=2, images=images)
    with server.client() as client:
        metrics = client.get("/metrics").text
    counts = {
        line.split('code="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("imgcls_requests_total{") and 'route="/predict"' in line
    }
    assert counts.get("200", 0) > 0  # the service answered what wrk sent
    # Only 499 besides: the requests in flight when wrk hung up at the end of its run.
    assert set(counts) <= {"200", "499"}, counts


@pytest.mark.slow
def test_quick_run_writes_results_report_and_plot(trained_repo: Path, tmp_path: Path) -> None:
    """``python -m bench --quick``: every reference runs and the outputs are well formed."""
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--models-dir",
            str(trained_repo),
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    assert {"machine", "plan", "loadgen_probe", "models", "command"} <= results.keys()
    assert results["machine"]["cores"] >= 1 and results["machine"]["tensorflow"]
    assert results["loadgen_probe"][0]["rps"] > 0

    digits = results["models"]["digits"]
    assert Path(digits["version_dir"]).parent.parent == trained_repo  # reused, not retrained
    assert digits["compute"]["images_per_s"] > 0
    assert digits["compute"]["best_batch_size"] in {1, 8, 16, 32, 64}
    references = {"ceiling", "unbatched", "bare_ceiling", "bare_unbatched"}
    assert set(digits["runs"]) == {"service"} | references
    for name, levels in digits["runs"].items():
        points = [(level["concurrency"], level["images_per_request"]) for level in levels]
        # The bare apps take one UploadFile: single-image requests only.
        assert points == ([(1, 1), (8, 1)] if name.startswith("bare") else [(1, 1), (8, 1), (8, 8)])
        for level in levels:
            check_level(level, concurrency=level["concurrency"], images=level["images_per_request"])
            assert level["server_cpu_s"] > 0
    service = digits["runs"]["service"]
    assert all(level["mean_batch_size"] >= 1 for level in service)
    assert all(level["mean_batch_size"] == 1 for level in digits["runs"]["unbatched"])

    # The photo workload: a model trained on photos, every reference, the decode rate.
    photo = results["models"]["photos"]
    assert Path(photo["version_dir"]).parent.name == "photos"
    assert photo["compute"]["input"] == [96, 96, 3]
    assert set(photo["runs"]) == {"service"} | references
    for levels in photo["runs"].values():
        assert [(level["concurrency"], level["images_per_request"]) for level in levels] == [(8, 1)]
        check_level(levels[0], concurrency=8, images=1)
    assert photo["workload"]["size"] == [640, 480]
    assert all(
        photos.MIN_JPEG_BYTES <= size <= photos.MAX_JPEG_BYTES
        for size in photo["workload"]["jpeg_bytes"]
    )
    assert photo["decode"]["decode_per_s_one_core"] > 0
    assert photo["decode"]["decode_resize_per_s_one_core"] > 0

    # The CPU budget: py-spy's samples of the event loop split into rows, in µs per request.
    cpu_budget = results["budget"]
    if budget.py_spy_path() is None:
        assert cpu_budget == {"skipped": "py-spy is not installed (pip install py-spy)"}
    elif "skipped" in cpu_budget:  # installed, but this machine does not let it trace
        assert cpu_budget["skipped"].startswith("py-spy failed")
    else:
        rows = {row["row"]: row["us_per_request"] for row in cpu_budget["rows"]}
        assert set(budget.ROWS) <= rows.keys()
        assert all(value >= 0 for value in rows.values())
        assert cpu_budget["requests"] > 0 and cpu_budget["py_spy_samples_on_loop"] > 0
        assert sum(rows.values()) == pytest.approx(
            cpu_budget["server_cpu_us_per_request"], rel=0.02
        )
        assert rows[budget.DECODE] > 0  # the PNGs are decoded on the loop

    summary = (out / "summary.md").read_text()
    assert summary == report.summary_markdown(results)
    assert "| goal | measured | target | met |" in summary
    assert "### photos: simple [96, 96, 3]" in summary
    assert "JPEG decode rate on one core" in summary
    for column in ("bare ceiling req/s", "bare unbatched req/s", "own-stack ceiling req/s"):
        assert column in summary
    goal_names = [row["goal"] for row in report.goals(results)]
    assert "digits c=32: service / bare ceiling" in goal_names
    assert "photos c=32: service / bare ceiling" in goal_names
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
