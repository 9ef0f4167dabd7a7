"""The model repository end to end: two models, three versions of digits, ``serving.yaml``.

One real ``python -m service`` for the module (poll interval 0.2 s). Each test writes the
configuration it needs (atomically: temp file + ``os.replace``, as a deploy tool would) and waits
until ``GET /models`` shows it in force, so the tests do not depend on their order.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.images import gray_png
from tests.helpers.models import republish
from tests.helpers.servers import Server, metric_value, start_server, stop_server
from training.data import load_digits_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

OTHER_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WAIT_S = 60.0

BASE_CONFIG = """\
models:
  digits:
    version_policy: {latest: 2}
    labels:
      stable: 2
      canary: {version: 3, weight: 0.3}
"""


def write_config(models_dir: Path, text: str) -> None:
    tmp = models_dir / ".serving.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, models_dir / "serving.yaml")


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s: {what}")
        time.sleep(0.1)


def model_entry(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in body["models"] if m["name"] == name)


def versions_in(body: dict[str, Any], name: str) -> dict[int, str]:
    return {v["version"]: v["state"] for v in model_entry(body, name)["versions"]}


@pytest.fixture(scope="module")
def repo(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits 1, 2, 3 (copies of the trained model) and other 1 (the same network, other class
    names), with BASE_CONFIG."""
    models = tmp_path_factory.mktemp("repository-e2e") / "models"
    shutil.copytree(trained_repo, models)
    assert republish(models, 1) == 2
    assert republish(models, 1) == 3
    assert republish(models, 1, as_name="other", class_names=OTHER_CLASSES) == 1
    write_config(models, BASE_CONFIG)
    return models


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(repo, tmp_path_factory.mktemp("repository-logs"), poll_interval_s="0.2")
    yield srv
    stop_server(srv)
    log = srv.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    test = load_digits_data(0.1).test
    return gray_png(test.images[int(np.flatnonzero(test.labels == 7)[0]), ..., 0])


def apply_config(
    http: httpx.Client,
    repo: Path,
    text: str,
    labels: dict[str, int],
    served: list[int],
) -> dict[str, Any]:
    """Write ``text`` and wait until digits has ``labels`` (label -> version) and serves exactly
    ``served``; returns GET /models."""
    write_config(repo, text)
    body: dict[str, Any] = {}

    def in_force() -> bool:
        nonlocal body
        body = http.get("/models").json()
        digits = model_entry(body, "digits")
        return (
            body["config"]["problem"] is None
            and {k: v["version"] for k, v in digits["labels"].items()} == labels
            and sorted(v for v, s in versions_in(body, "digits").items() if s == "serving")
            == served
        )

    wait_for(in_force, f"configuration in force: labels {labels}, serving {served}")
    return body


@pytest.fixture()
def base(http: httpx.Client, repo: Path) -> dict[str, Any]:
    return apply_config(http, repo, BASE_CONFIG, {"stable": 2, "canary": 3}, [2, 3])


def predict(http: httpx.Client, path: str, data: bytes) -> httpx.Response:
    return http.post(path, files={"file": ("seven.png", data, "image/png")})


def test_latest_two_serves_exactly_two_versions_and_both_models(
    http: httpx.Client, base: dict[str, Any], digit_png: bytes
) -> None:
    assert versions_in(base, "digits") == {3: "serving", 2: "serving", 1: "available"}
    assert versions_in(base, "other") == {1: "serving"}
    digits = model_entry(base, "digits")
    assert digits["policy"] == "latest 2" and digits["default_version"] == 2
    assert digits["labels"]["canary"] == {"version": 3, "weight": 0.3, "served": True}
    assert base["default_model"] == "digits" and base["config"]["present"]

    status = http.get("/v1/models/digits").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("3", "AVAILABLE"), ("2", "AVAILABLE")]
    response = predict(http, "/models/digits/versions/1/predict", digit_png)
    assert response.status_code == 404
    assert "served: 3, 2 (latest 2)" in response.json()["detail"]

    for version in (2, 3):
        response = predict(http, f"/models/digits/versions/{version}/predict", digit_png)
        assert response.json()["model"] == {"name": "digits", "version": version}

    other = predict(http, "/models/other/predict", digit_png).json()
    assert other["model"] == {"name": "other", "version": 1}
    assert other["results"][0]["predictions"][0]["label"] == "seven"
    mine = predict(http, "/models/digits/versions/2/predict", digit_png).json()
    assert mine["results"][0]["predictions"][0]["label"] == "7"
    assert other["results"][0]["predictions"][0]["score"] == pytest.approx(
        mine["results"][0]["predictions"][0]["score"], abs=1e-6
    )

    response = predict(http, "/models/cats/predict", digit_png)
    assert response.status_code == 404
    assert "'digits', 'other'" in response.json()["detail"]


def binomial_bound(n: int, p: float, sigmas: float = 5.0) -> float:
    """Half-width of an interval that holds Binomial(n, p)'s count with probability > 1 - 6e-7
    (five standard deviations, normal approximation; n p (1 - p) is large here)."""
    return sigmas * math.sqrt(n * p * (1 - p))


def test_a_weighted_label_splits_unpinned_traffic(
    http: httpx.Client, server: Server, base: dict[str, Any], digit_png: bytes
) -> None:
    n, weight = 400, 0.3

    def send(i: int) -> str:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            versions = []
            for _ in range(n // 8):
                if i % 2:  # TF Serving route: the answer header names the version
                    response = client.post(
                        "/v1/models/digits:predict",
                        json={"instances": [np.zeros((4, 4, 3)).tolist()]},
                    )
                    assert response.status_code == 200, response.text
                    versions.append(response.headers["X-Model-Version"])
                else:
                    response = predict(client, "/models/digits/predict", digit_png)
                    assert response.status_code == 200, response.text
                    versions.append(str(response.json()["model"]["version"]))
            return ",".join(versions)

    with ThreadPoolExecutor(8) as pool:
        counts = Counter(",".join(pool.map(send, range(8))).split(","))
    assert set(counts) == {"2", "3"} and sum(counts.values()) == n
    assert abs(counts["3"] - weight * n) <= binomial_bound(n, weight), counts

    # Pinned requests are never redirected.
    for _ in range(20):
        assert (
            predict(http, "/models/digits/labels/stable/predict", digit_png).json()["model"][
                "version"
            ]
            == 2
        )


class Loop:
    """Sends requests to ``paths`` in a thread until stopped; records status and version."""

    def __init__(self, server: Server, paths: list[str], data: bytes) -> None:
        self.server, self.paths, self.data = server, paths, data
        self.answers: list[tuple[str, int, int | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self._stop.is_set():
                for path in self.paths:
                    response = predict(client, path, self.data)
                    body = response.json()
                    version = body["model"]["version"] if response.status_code == 200 else None
                    self.answers.append((path, response.status_code, version, response.text))

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def count(self) -> int:
        return len(self.answers)

    def wait_for_more(self, count: int) -> None:
        start = self.count()
        wait_for(lambda: self.count() >= start + count, f"{count} more answers")


STABLE = "/models/digits/labels/stable/predict"
UNPINNED = "/models/digits/predict"


def test_editing_the_file_moves_the_label_without_a_failed_request(
    http: httpx.Client, server: Server, repo: Path, base: dict[str, Any], digit_png: bytes
) -> None:
    moved = BASE_CONFIG.replace("stable: 2", "stable: 3").replace("weight: 0.3", "weight: 0.0")
    with Loop(server, [STABLE, UNPINNED], digit_png) as loop:
        loop.wait_for_more(10)
        before = loop.count()
        apply_config(http, repo, moved, {"stable": 3, "canary": 3}, [2, 3])
        loop.wait_for_more(10)
    failed = [a for a in loop.answers if a[1] != 200]
    assert failed == [], failed[:3]
    stable = [v for path, _, v, _ in loop.answers if path == STABLE and v is not None]
    assert set(stable[: before // 2]) == {2}
    assert stable[-3:] == [3, 3, 3]
    # Once stable moved it never went back: one switch.
    assert stable == sorted(stable)


def test_moving_a_label_to_a_version_the_policy_newly_serves_loses_no_request(
    http: httpx.Client, server: Server, repo: Path, base: dict[str, Any], digit_png: bytes
) -> None:
    """``stable`` moves to version 1, which ``latest: 3`` starts serving in the same edit: the
    label must not point at version 1 before it is loaded and warmed up."""
    edited = BASE_CONFIG.replace("latest: 2", "latest: 3").replace("stable: 2", "stable: 1")
    with Loop(server, [STABLE], digit_png) as loop:
        loop.wait_for_more(5)
        apply_config(http, repo, edited, {"stable": 1, "canary": 3}, [1, 2, 3])
        loop.wait_for_more(5)
    failed = [a for a in loop.answers if a[1] != 200]
    assert failed == [], f"{len(failed)} of {len(loop.answers)} failed, e.g. {failed[:2]}"
    assert loop.answers[-1][2] == 1


def test_an_invalid_file_keeps_the_last_good_configuration(
    http: httpx.Client, server: Server, repo: Path, base: dict[str, Any], digit_png: bytes
) -> None:
    metrics = http.get("/metrics").text
    assert metric_value(metrics, "imgcls_serving_config_valid") == 1
    write_config(repo, BASE_CONFIG.replace("stable: 2", "stable: {version: 2, wieght: 1}"))
    wait_for(
        lambda: http.get("/models").json()["config"]["problem"] is not None,
        "the problem reported",
    )
    body = http.get("/models").json()
    assert "wieght" in body["config"]["problem"]
    assert body["config"]["file"].endswith("serving.yaml")
    # The metric follows at the end of the same poll.
    wait_for(
        lambda: metric_value(http.get("/metrics").text, "imgcls_serving_config_valid") == 0,
        "imgcls_serving_config_valid 0",
    )
    # The last good configuration keeps serving: labels, weights and policy.
    assert {k: v["version"] for k, v in model_entry(body, "digits")["labels"].items()} == {
        "stable": 2,
        "canary": 3,
    }
    assert versions_in(body, "digits") == {3: "serving", 2: "serving", 1: "available"}
    response = predict(http, STABLE, digit_png)
    assert response.status_code == 200 and response.json()["model"]["version"] == 2

    write_config(repo, "models: [not, a, mapping")  # broken YAML this time
    wait_for(
        lambda: "line" in (http.get("/models").json()["config"]["problem"] or ""),
        "the YAML problem reported",
    )
    assert predict(http, STABLE, digit_png).json()["model"]["version"] == 2

    apply_config(http, repo, BASE_CONFIG, {"stable": 2, "canary": 3}, [2, 3])
    wait_for(
        lambda: metric_value(http.get("/metrics").text, "imgcls_serving_config_valid") == 1,
        "imgcls_serving_config_valid 1",
    )


def test_metrics_carry_model_and_version_labels(
    http: httpx.Client, base: dict[str, Any], digit_png: bytes
) -> None:
    before = http.get("/metrics").text
    for path in ("/models/digits/versions/3/predict", "/models/other/predict"):
        assert predict(http, path, digit_png).status_code == 200
    response = http.post(
        "/v2/models/digits/versions/2/infer",
        json={
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": [1, 2, 2, 3], "data": [0] * 12}
            ]
        },
    )
    assert response.status_code == 200, response.text
    after = http.get("/metrics").text

    def delta(name: str, labels: dict[str, str]) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    for model, version in (("digits", "3"), ("other", "1"), ("digits", "2")):
        labels = {"model": model, "version": version}
        assert delta("imgcls_requests_total", {**labels, "code": "200"}) == 1, labels
        assert delta("imgcls_predictions_total", labels) == 1, labels
        assert delta("imgcls_prediction_confidence_count", labels) == 1, labels
        assert metric_value(after, "imgcls_model_info", {"name": model, "version": version}) == 1
    assert delta("imgcls_predictions_total", {"model": "other", "label": "seven"}) == 1
    assert (
        metric_value(
            after,
            "imgcls_version_label_info",
            {"model": "digits", "version_label": "canary", "version": "3"},
        )
        == 1
    )
    assert metric_value(
        after, "imgcls_version_label_weight", {"model": "digits", "version_label": "canary"}
    ) == pytest.approx(0.3)
    assert metric_value(after, "imgcls_batch_size_count", {"model": "other"}) >= 1


def test_changing_a_models_limits_loses_no_request(
    http: httpx.Client, server: Server, repo: Path, base: dict[str, Any], digit_png: bytes
) -> None:
    """New per-model limits start a new batcher; what the old one had queued is still answered."""
    limited = BASE_CONFIG + "    limits: {max_batch_size: 4, max_queue_size: 64}\n"
    # Five clients at once, so that requests are queued when the batcher is replaced.
    loops = [Loop(server, [STABLE, UNPINNED], digit_png) for _ in range(5)]
    with contextlib.ExitStack() as stack:
        for loop in loops:
            stack.enter_context(loop)
        loops[0].wait_for_more(10)
        apply_config(http, repo, limited, {"stable": 2, "canary": 3}, [2, 3])
        wait_for(
            lambda: (
                model_entry(http.get("/models").json(), "digits")["limits"]["max_batch_size"] == 4
            ),
            "new limits in force",
        )
        loops[0].wait_for_more(10)
    answers = [answer for loop in loops for answer in loop.answers]
    failed = [a for a in answers if a[1] != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} failed, e.g. {failed[:2]}"
    assert len(answers) >= 20


def test_unknown_names_add_no_metric_series(http: httpx.Client, digit_png: bytes) -> None:
    """Label cardinality stays bounded: names a client makes up never become label values."""
    paths = [
        "/models/made-up-model-1/predict",
        "/models/digits/versions/99999/predict",
        "/models/digits/labels/made-up-label/predict",
        "/v2/models/made-up-model-2/infer",
        "/v1/models/made-up-model-3:predict",
        "/v1/models/digits/versions/77777:predict",
    ]
    for path in paths:
        assert http.post(path, files={"file": ("a.png", digit_png, "image/png")}).status_code == 404
    text = http.get("/metrics").text
    label_values = {
        value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert not [v for v in label_values if "made-up" in v or v in ("99999", "77777")]
    assert {"digits", "other", "2", "3"} <= label_values
    assert metric_value(text, "imgcls_requests_total", {"code": "404", "model": ""}) >= len(paths)


def test_a_config_edit_never_sends_unpinned_traffic_to_a_third_version(
    http: httpx.Client, server: Server, repo: Path, digit_png: bytes
) -> None:
    """From ``{specific: [1]}`` to ``{all, labels: {stable: 1}}``: both send unpinned requests to
    version 1, so while versions 2 and 3 load no request may go anywhere else (the new versions
    are served, and the labels applied, in one step once every load is done)."""
    only_one = "models:\n  digits:\n    version_policy: {specific: [1]}\n"
    apply_config(http, repo, only_one, {}, [1])
    answered: Counter[int] = Counter()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                response = predict(client, "/predict", digit_png)
                assert response.status_code == 200, response.text
                answered[response.json()["model"]["version"]] += 1

    with ThreadPoolExecutor(2) as pool:
        clients = [pool.submit(loop) for _ in range(2)]
        try:
            time.sleep(0.5)
            every = "models:\n  digits:\n    version_policy: all\n    labels: {stable: 1}\n"
            apply_config(http, repo, every, {"stable": 1}, [1, 2, 3])
            time.sleep(0.5)
        finally:
            stop.set()
        for client in clients:
            client.result()
    assert set(answered) == {1}, answered
    assert sum(answered.values()) >= 10, answered


def test_explain_without_parameters_explains_the_default_version(
    http: httpx.Client, base: dict[str, Any], digit_png: bytes
) -> None:
    """The canary's share is for /predict; an explanation without ``version`` or
    ``version_label`` is always of the version ``stable`` names (README)."""
    versions: Counter[int] = Counter()
    for _ in range(20):
        response = http.post("/explain", files={"file": ("seven.png", digit_png, "image/png")})
        assert response.status_code == 200, response.text
        versions[response.json()["model"]["version"]] += 1
    assert versions == Counter({2: 20})
    canary = http.post(
        "/explain?version_label=canary", files={"file": ("seven.png", digit_png, "image/png")}
    )
    assert canary.json()["model"]["version"] == 3


def test_the_documented_rollback_stops_and_then_unloads_a_canary(
    http: httpx.Client, repo: Path, base: dict[str, Any], digit_png: bytes
) -> None:
    """docs/operations.md step 4: weight 0 sends every unpinned request back to stable; removing
    the label and leaving the canary out of the policy unloads it. A policy alone does not:
    a labelled version is always served (README, ``labels``)."""

    def unpinned_versions(n: int = 30) -> Counter[int]:
        return Counter(
            predict(http, "/predict", digit_png).json()["model"]["version"] for _ in range(n)
        )

    def digits_now() -> dict[str, Any]:
        return model_entry(http.get("/models").json(), "digits")

    weight_zero = BASE_CONFIG.replace("weight: 0.3", "weight: 0")
    apply_config(http, repo, weight_zero, {"stable": 2, "canary": 3}, [2, 3])
    wait_for(lambda: digits_now()["labels"]["canary"]["weight"] == 0, "canary weight 0")
    assert unpinned_versions() == Counter({2: 30})
    assert predict(http, "/models/digits/versions/3/predict", digit_png).status_code == 200

    policy_only = BASE_CONFIG.replace("{latest: 2}", "{specific: [2]}")
    apply_config(http, repo, policy_only, {"stable": 2, "canary": 3}, [2, 3])
    wait_for(lambda: digits_now()["policy"] != "latest 2", "the specific policy in force")
    time.sleep(1.0)  # a few polls more: the labelled canary stays served
    assert sorted(
        v
        for v, state in versions_in(http.get("/models").json(), "digits").items()
        if state == "serving"
    ) == [2, 3]

    unload = "models:\n  digits:\n    version_policy: {specific: [2]}\n    labels: {stable: 2}\n"
    apply_config(http, repo, unload, {"stable": 2}, [2])
    assert unpinned_versions() == Counter({2: 30})
    assert predict(http, "/models/digits/versions/3/predict", digit_png).status_code == 404
