"""The service end to end: a real uvicorn process serving the model trained in this session."""

from __future__ import annotations

import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import png_declaring
from tests.helpers.models import auto_runtime
from tests.helpers.servers import Server, metric_value
from training.data import load_digits_data

pytestmark = pytest.mark.e2e


def encode(gray: np.ndarray, index: int) -> tuple[str, bytes, str]:
    """A held-out digit as a file a user might send: formats, modes and sizes vary with index."""
    fmt, ext, mime = [
        ("PNG", "png", "image/png"),
        ("JPEG", "jpg", "image/jpeg"),
        ("WEBP", "webp", "image/webp"),
    ][index % 3]
    size = (28, 20, 56, 100)[index % 4]
    img = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    if index % 2:
        img = img.convert("RGB")
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return f"digit-{index}.{ext}", buffer.getvalue(), mime


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The test split the trainer never saw, as grey uint8 images and labels."""
    test = load_digits_data(0.1).test
    return test.images[..., 0], test.labels


def metrics_text(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


def test_held_out_digits_in_many_formats_are_classified_accurately(
    server: Server, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_out
    count = 180
    correct = 0
    with server.client() as client:
        for start in range(0, count, 6):  # several images per request, order must be kept
            files = [("file", encode(images[i], i)) for i in range(start, start + 6)]
            response = client.post("/predict", files=files, params={"top_k": 3})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == {"name": "digits", "version": 1}
            assert [r["filename"] for r in body["results"]] == [f[1][0] for f in files]
            for i, result in zip(range(start, start + 6), body["results"], strict=True):
                scores = [p["score"] for p in result["predictions"]]
                assert len(scores) == 3 and scores == sorted(scores, reverse=True)
                correct += result["predictions"][0]["label"] == str(labels[i])
    assert correct / count >= 0.95


def test_raw_body_and_filename_query(
    server: Server, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_out
    name, data, mime = encode(images[0], 0)
    response = httpx.post(
        server.url + "/predict",
        content=data,
        headers={"Content-Type": mime},
        params={"filename": "../../etc/" + name, "top_k": 10},
    )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["filename"] == name  # path stripped: a label, never a path
    assert len(result["predictions"]) == 10
    assert sum(p["score"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-3)
    assert result["predictions"][0]["label"] == str(labels[0])


def test_concurrent_requests_are_batched_and_counted(
    server: Server, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = held_out
    before = metrics_text(server)
    payloads = [encode(images[i], i) for i in range(64)]

    def send(i: int) -> httpx.Response:
        name, data, mime = payloads[i]
        return httpx.post(server.url + "/predict", files={"file": (name, data, mime)}, timeout=60)

    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(pool.map(send, range(64)))
    assert [r.status_code for r in responses] == [200] * 64
    after = metrics_text(server)

    batches = metric_value(after, "imgcls_batch_size_count") - metric_value(
        before, "imgcls_batch_size_count"
    )
    images_run = metric_value(after, "imgcls_batch_size_sum") - metric_value(
        before, "imgcls_batch_size_sum"
    )
    assert images_run == 64
    assert images_run / batches > 1.0  # concurrent requests shared model calls
    ok = {"route": "/predict", "code": "200"}
    assert (
        metric_value(after, "imgcls_requests_total", ok)
        - metric_value(before, "imgcls_requests_total", ok)
        == 64
    )
    predicted = metric_value(after, "imgcls_predictions_total") - metric_value(
        before, "imgcls_predictions_total"
    )
    assert predicted == 64
    confident = metric_value(after, "imgcls_prediction_confidence_count") - metric_value(
        before, "imgcls_prediction_confidence_count"
    )
    assert confident == 64
    top_labels = [r.json()["results"][0]["predictions"][0]["label"] for r in responses]
    for label in set(top_labels):
        delta = metric_value(after, "imgcls_predictions_total", {"label": label}) - metric_value(
            before, "imgcls_predictions_total", {"label": label}
        )
        assert delta == top_labels.count(label)
    assert metric_value(after, "imgcls_model_info", {"name": "digits", "version": "1"}) == 1
    assert metric_value(after, "imgcls_model_ready") == 1
    assert metric_value(after, "imgcls_batch_queue_depth") == 0


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()[:200]


@pytest.mark.parametrize(
    ("files", "content", "headers", "status", "words"),
    [
        (
            {"file": ("a.png", b"hello, not an image", "image/png")},
            None,
            None,
            415,
            "not a supported image",
        ),
        (
            {"file": ("a.png", _truncated_png(), "image/png")},
            None,
            None,
            400,
            "truncated or corrupt",
        ),
        ({"file": ("a.png", b"", "image/png")}, None, None, 400, "empty"),
        (
            {"file": ("bomb.png", png_declaring(50_000, 50_000), "image/png")},
            None,
            None,
            413,
            "pixels",
        ),
        ({"other": ("a.png", b"x", "image/png")}, None, None, 422, "'file'"),
        (
            None,
            b"%PDF-1.4 not an image",
            {"Content-Type": "application/pdf"},
            415,
            "multipart/form-data",
        ),
        (None, b"{}", {"Content-Type": "application/json"}, 415, "multipart/form-data"),
        (None, b"%PDF-1.4\n", {"Content-Type": "image/png"}, 415, "PDF"),
    ],
)
def test_client_mistakes_get_a_4xx_that_says_what_to_fix(
    server: Server,
    files: dict | None,
    content: bytes | None,
    headers: dict | None,
    status: int,
    words: str,
) -> None:
    before = metrics_text(server)
    response = httpx.post(
        server.url + "/predict", files=files, content=content, headers=headers, timeout=30
    )
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    after = metrics_text(server)
    code = {"route": "/predict", "code": str(status)}
    assert (
        metric_value(after, "imgcls_requests_total", code)
        - metric_value(before, "imgcls_requests_total", code)
        == 1
    )
    assert (
        metric_value(after, "imgcls_rejected_requests_total")
        - metric_value(before, "imgcls_rejected_requests_total")
        == 1
    )


@pytest.mark.parametrize("top_k", ["0", "-3", "abc", "100000"])
def test_bad_top_k_is_a_400(server: Server, top_k: str) -> None:
    response = httpx.post(
        server.url + "/predict",
        params={"top_k": top_k},
        files={"file": ("a.png", _truncated_png(), "image/png")},
    )
    assert response.status_code == 400
    assert "top_k" in response.json()["detail"]


def test_oversize_upload_is_refused_before_reading_it(server: Server) -> None:
    big = b"\x89PNG" + b"\x00" * (10 * 1024 * 1024 + 10)
    response = httpx.post(
        server.url + "/predict", content=big, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_health_readiness_and_models_routes(server: Server, trained_repo: Path) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == {"name": "digits", "version": 1}
    models = httpx.get(server.url + "/models").json()
    runtime = auto_runtime(trained_repo / "digits" / "1")
    assert models["versions"] == [{"version": 1, "state": "serving", "runtime": runtime}]
    assert models["serving"]["class_names"] == [str(d) for d in range(10)]
    assert models["serving"]["metrics"]["test_accuracy"] >= 0.97


def test_no_model_yet_then_one_is_published(
    server_factory: object, tmp_path: Path, trained_repo: Path
) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    srv = server_factory(empty, wait_ready=False, poll_interval_s="0.3")  # type: ignore[operator]
    ready = httpx.get(srv.url + "/readyz")
    assert ready.status_code == 503 and "training/train.py" in ready.json()["detail"]
    refused = httpx.post(
        srv.url + "/predict", files={"file": ("a.png", _truncated_png(), "image/png")}
    )
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "training/train.py" in refused.json()["detail"]

    staging = tmp_path / "staging"
    shutil.copytree(trained_repo / "digits", staging)
    staging.rename(empty / "digits")  # the whole model folder appears at once
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and httpx.get(srv.url + "/readyz").status_code != 200:
        time.sleep(0.2)
    assert httpx.get(srv.url + "/readyz").json()["model"] == {"name": "digits", "version": 1}


def test_a_corrupt_image_among_a_full_batch_of_requests_fails_alone(
    server: Server, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """32 requests at once (a full batch): the one truncated PNG gets 400 naming it, the other
    31 their classes; images are checked before they are queued, so no batch carries it."""
    images, labels = held_out
    good = [encode(images[i], i * 3) for i in range(31)]  # PNGs, sizes vary
    broken = ("broken.png", good[0][1][: len(good[0][1]) // 2], "image/png")
    uploads = [*good[:15], broken, *good[15:]]

    def send(upload: tuple[str, bytes, str]) -> httpx.Response:
        return httpx.post(server.url + "/predict", files={"file": upload}, timeout=60)

    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = list(pool.map(send, uploads))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 15 + [400] + [200] * 16
    assert "broken.png" in responses[15].json()["detail"]
    top = [r.json()["results"][0]["predictions"][0]["label"] for r in responses if r.is_success]
    expected = [str(labels[i]) for i in range(31)]
    assert np.mean([a == b for a, b in zip(top, expected, strict=True)]) >= 0.9
