"""Smoke tests of the benchmark harness (``bench/``): it runs and writes well-formed results.

No timing is asserted (the machine is shared and slow); only that every part produced numbers:
positive counts, percentiles in order, no errors at low concurrency, the report and the plot.
wrk is required: missing, these tests are skipped, or FAILED in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen, report
from bench.loadgen import LevelResult

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(autouse=True)
def require_wrk() -> None:
    if loadgen.wrk_path() is None:
        reason = "wrk is not installed (apt-get install wrk, or `make system-deps`)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must provide it", pytrace=False)
        pytest.skip(reason)


def test_multipart_body_holds_every_image() -> None:
    body = loadgen.multipart_body([("a.png", b"\x89PNGaaa"), ("b.png", b"\x89PNGbbb")])
    assert body.count(b'name="file"') == 2
    assert b'filename="b.png"' in body
    assert body.endswith(f"--{loadgen.BOUNDARY}--\r\n".encode())


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
    assert set(digits["runs"]) == {"ceiling", "service", "unbatched"}
    for levels in digits["runs"].values():
        points = [(level["concurrency"], level["images_per_request"]) for level in levels]
        assert points == [(1, 1), (8, 1), (8, 8)]
        for level in levels:
            check_level(level, concurrency=level["concurrency"], images=level["images_per_request"])
    service = digits["runs"]["service"]
    assert all(level["mean_batch_size"] >= 1 for level in service)
    assert all(level["mean_batch_size"] == 1 for level in digits["runs"]["unbatched"])

    summary = (out / "summary.md").read_text()
    assert summary == report.summary_markdown(results)
    assert "| goal | measured | target | met |" in summary
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
