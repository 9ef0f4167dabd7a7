"""``POST /explain`` end to end: a real server, the session's trained model, real PNGs."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import gray_png
from tests.helpers.servers import Server, metric_value
from training.data import load_digits_data

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONV_GRID = 14  # the "simple" model's last conv layer on 28x28


@pytest.fixture(scope="module")
def digits() -> dict[int, bytes]:
    """One held-out digit per class as PNG bytes (28x28, grey)."""
    test = load_digits_data(0.1).test
    images, labels = test.images[..., 0], test.labels
    return {d: gray_png(images[int(np.flatnonzero(labels == d)[0])]) for d in range(10)}


def decode_png(data_b64: str) -> Image.Image:
    raw = base64.b64decode(data_b64, validate=True)
    assert raw.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def explain(client: httpx.Client, data: bytes, **params: Any) -> httpx.Response:
    return client.post("/explain", files={"file": ("digit.png", data, "image/png")}, params=params)


def test_explain_answers_top_k_a_gradcam_overlay_and_grid_and_feature_maps(
    server: Server, digits: dict[int, bytes]
) -> None:
    with server.client() as client:
        response = explain(client, digits[7], top_k=3)
        predicted = client.post("/predict", files={"file": ("d.png", digits[7], "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "model",
        "filename",
        "predictions",
        "explained",
        "gradcam",
        "feature_maps",
        "duration_s",
    }
    assert body["model"] == {"name": "digits", "version": 1}
    assert body["filename"] == "digit.png"
    # The same answer /predict gives, from the explanation's own forward pass.
    assert body["predictions"][0]["label"] == "7"
    assert len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    top = predicted.json()["results"][0]["predictions"][0]
    assert top["label"] == "7" and abs(top["score"] - scores[0]) < 1e-4
    assert body["explained"] == {"label": "7", "index": 7, "score": scores[0]}

    grid = np.array(body["gradcam"]["values"])
    assert (body["gradcam"]["height"], body["gradcam"]["width"]) == (CONV_GRID, CONV_GRID)
    assert grid.shape == (CONV_GRID, CONV_GRID)
    assert grid.min() >= 0.0 and grid.max() == 1.0
    overlay = decode_png(body["gradcam"]["overlay_png"])
    assert overlay.size == (224, 224) and overlay.mode == "RGB"  # 28 px scaled up 8x
    crop = body["gradcam"]["crop"]  # the part of the image the network saw, as fractions
    assert all(0.0 <= crop[side] <= 1.0 for side in ("top", "left", "bottom", "right")), crop
    assert crop["top"] < crop["bottom"] and crop["left"] < crop["right"]

    layers = {layer["layer"]: layer for layer in body["feature_maps"]}
    assert list(layers) == ["conv1", "conv2"]
    assert (layers["conv1"]["height"], layers["conv1"]["channels"]) == (28, 32)
    assert (layers["conv2"]["height"], layers["conv2"]["channels"]) == (14, 64)
    assert len(layers["conv1"]["tiles"]) == 32
    assert len(layers["conv2"]["tiles"]) == 32  # capped: the 32 most active of 64
    channels = [tile["channel"] for tile in layers["conv2"]["tiles"]]
    assert channels == sorted(channels) and len(set(channels)) == 32
    tile = decode_png(layers["conv1"]["tiles"][0]["png"])
    assert tile.size == (28, 28) and tile.mode == "L"


def test_label_explains_another_class_and_raw_bodies_work(
    server: Server, digits: dict[int, bytes]
) -> None:
    with server.client() as client:
        top = explain(client, digits[3]).json()
        other = client.post(
            "/explain",
            content=digits[3],
            headers={"Content-Type": "image/png"},
            params={"label": "8", "filename": "three.png"},
        )
    assert other.status_code == 200, other.text
    body = other.json()
    assert body["filename"] == "three.png"
    assert body["explained"]["label"] == "8" and body["explained"]["index"] == 8
    assert body["predictions"][0]["label"] == top["explained"]["label"] == "3"
    assert body["explained"]["score"] < 0.5
    assert not np.allclose(body["gradcam"]["values"], top["gradcam"]["values"], atol=0.05)


@pytest.mark.parametrize(
    ("files", "params", "status", "needle"),
    [
        ("two", {}, 400, "exactly one image"),
        ("one", {"label": "cat"}, 400, "not a class of this model"),
        ("one", {"top_k": "0"}, 400, "top_k"),
        ("text", {}, 415, "not a supported image"),
        ("none", {}, 422, "'file'"),
        ("one", {"version": "1", "version_label": "stable"}, 400, "not both"),
    ],
)
def test_client_mistakes_get_a_4xx_that_says_what_to_fix(
    server: Server,
    digits: dict[int, bytes],
    files: str,
    params: dict[str, str],
    status: int,
    needle: str,
) -> None:
    payloads: dict[str, list[tuple[str, tuple[str, bytes, str]]]] = {
        "one": [("file", ("a.png", digits[1], "image/png"))],
        "two": [
            ("file", ("a.png", digits[1], "image/png")),
            ("file", ("b.png", digits[2], "image/png")),
        ],
        "text": [("file", ("a.png", b"hello, not an image", "image/png"))],
        "none": [("other", ("a.png", digits[1], "image/png"))],
    }
    with server.client() as client:
        response = client.post("/explain", files=payloads[files], params=params)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


def test_heatmap_peak_follows_a_digit_in_the_top_left_corner_through_the_service(
    server: Server,
) -> None:
    """The service resizes the 56x56 canvas to the model's 28x28 (the digit then covers the
    top-left 7x7 of the 14x14 conv grid); the peak must be there, give or take the one cell
    a conv2 receptive field reaches past the ink."""
    test = load_digits_data(0.1).test
    images, labels = test.images[..., 0], test.labels
    half = CONV_GRID // 2
    with server.client() as client:
        for digit in (0, 4, 7):
            canvas = np.zeros((56, 56), dtype=np.uint8)
            canvas[:28, :28] = images[int(np.flatnonzero(labels == digit)[0])]
            response = explain(client, gray_png(canvas))
            assert response.status_code == 200, response.text
            grid = np.array(response.json()["gradcam"]["values"])
            row, col = np.unravel_index(int(grid.argmax()), grid.shape)
            assert row <= half and col <= half, f"digit {digit}: peak at {(row, col)}\n{grid}"
            assert grid[:half, :half].sum() > grid[half:, half:].sum()


def publish_without_explanations(models_dir: Path) -> int:
    """Publish digits version 2 the way releases before explanations did: ``serve`` only
    (an untrained model: only the endpoints matter here)."""
    from contract.metadata import read_metadata
    from training.architectures import build
    from training.export import export_saved_model, publish

    meta = read_metadata(models_dir / "digits" / "1")
    model = build("simple", (28, 28, 1), 10)
    version, _ = publish(
        models_dir=models_dir,
        name="digits",
        write_artifacts=lambda tmp: export_saved_model(model, tmp),
        input_spec=meta.input,
        class_names=meta.class_names,
        arch=meta.arch,
        parameter_count=meta.parameter_count,
        training={},
        data_fingerprint=meta.data_fingerprint,
        metrics={},
    )
    return version


def test_a_version_published_without_explanations_answers_409_and_still_predicts(
    repo_copy: Path, server_factory: Any, digits: dict[int, bytes]
) -> None:
    assert publish_without_explanations(repo_copy) == 2
    srv: Server = server_factory(repo_copy)
    with srv.client() as client:
        models = client.get("/models").json()
        assert models["serving"]["version"] == 2
        assert models["serving"]["endpoints"] == ["serve"]
        response = explain(client, digits[5])
        assert response.status_code == 409, response.text
        detail = response.json()["detail"]
        assert "version 2" in detail and "without explanations" in detail and "retrain" in detail
        assert client.post("/predict", files={"file": ("a.png", digits[5], "image/png")}).is_success


def test_explanations_beyond_the_wait_list_get_503_and_do_not_block_predict(
    trained_repo: Path, server_factory: Any, digits: dict[int, bytes]
) -> None:
    """With no wait list (IMGCLS_EXPLAIN_MAX_WAITING=0) a burst of explanations runs one at a
    time: the rest are refused at once with Retry-After and counted; /predict in the same burst
    is served."""
    srv: Server = server_factory(trained_repo, explain_max_waiting="0")
    statuses: list[int] = []
    predict_statuses: list[int] = []
    with srv.client() as client:
        for _round in range(5):  # a burst almost always overlaps; retry a few if not
            start = threading.Barrier(12)

            def fire(
                index: int, client: httpx.Client = client, start: Any = start
            ) -> httpx.Response:
                start.wait()
                if index % 4 == 3:
                    return client.post(
                        "/predict", files={"file": ("p.png", digits[index % 10], "image/png")}
                    )
                return explain(client, digits[index % 10])

            with ThreadPoolExecutor(12) as pool:
                responses = list(pool.map(fire, range(12)))
            for index, response in enumerate(responses):
                if index % 4 == 3:
                    predict_statuses.append(response.status_code)
                    continue
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "1"
                    assert "one at a time" in response.json()["detail"]
            if 503 in statuses:
                break
        metrics = client.get("/metrics").text
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert set(predict_statuses) == {200}
    rejected = metric_value(metrics, "imgcls_rejected_requests_total", {"reason": "explain_busy"})
    assert rejected == statuses.count(503)
