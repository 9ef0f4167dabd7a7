"""Prediction drift end to end: a real service fed real digits, a real Prometheus evaluating the
project's own ``ImgclsPredictionDrift`` rule.

A balanced stream of held-out digits keeps ``imgcls_prediction_drift{kind="class"}`` under the
alert's threshold; a stream of one class drives it over, and the alert fires. The rule file is
``monitoring/alerts.yml`` with one change: the alert's ``for: 10m`` becomes ``1s`` (the duration
itself is covered by promtool in monitoring/alerts_test.yml; waiting ten minutes here would prove
nothing more).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.ops import ALERT_RULES
from tests.helpers.prometheus import (
    PROMETHEUS_START_TIMEOUT_S,
    Prometheus,
    start_prometheus,
    stop_prometheus,
)
from tests.helpers.servers import Server
from training.data import load_digits_data

pytestmark = pytest.mark.e2e

ALERT = "ImgclsPredictionDrift"
#: IMGCLS_DRIFT_WINDOW of the service under test, and the predictions sent per stream.
WINDOW = 200
#: The alert's threshold on the class distance (monitoring/alerts.yml).
THRESHOLD = 0.3


def drift_rule_threshold() -> float:
    """The class-drift threshold written in the real rule, so this test follows the file."""
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                expr = rule["expr"]
                marker = 'kind="class"}) >'
                return float(expr.split(marker, 1)[1].split()[0])
    raise AssertionError(f"{ALERT} is not in {ALERT_RULES}")


def rules_firing_at_once(path: Path) -> Path:
    """The real rule file with ``for: 1s`` on the drift alert, written to ``path``."""
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def watched(
    prometheus_binary: str, trained_repo: Path, server_factory: Any, tmp_path: Path
) -> Iterator[tuple[Server, Prometheus]]:
    server = server_factory(trained_repo, drift_window=str(WINDOW))
    prometheus = start_prometheus(
        prometheus_binary,
        server.url.removeprefix("http://"),
        tmp_path,
        rule_file=rules_firing_at_once(tmp_path / "alerts.yml"),
    )
    try:
        prometheus.wait_for(
            "prometheus ready",
            lambda: httpx.get(f"{prometheus.url}/-/ready", timeout=2.0).status_code == 200,
            timeout_s=PROMETHEUS_START_TIMEOUT_S,
        )
        yield server, prometheus
    finally:
        stop_prometheus(prometheus)


def class_drift(prometheus: Prometheus) -> float | None:
    return prometheus.scalar('imgcls_prediction_drift{model="digits",version="1",kind="class"}')


def drift_alerts(prometheus: Prometheus) -> list[dict[str, Any]]:
    alerts = prometheus.api("alerts")["data"]["alerts"]
    return [
        alert
        for alert in alerts
        if alert["labels"]["alertname"] == ALERT and alert["labels"].get("kind") == "class"
    ]


def test_one_class_stream_drives_class_drift_over_the_threshold_and_fires_the_alert(
    watched: tuple[Server, Prometheus],
) -> None:
    server, prometheus = watched
    assert drift_rule_threshold() == THRESHOLD
    test = load_digits_data(0.1, 0.2).test
    images, labels = test.images[..., 0], test.labels
    with server.client() as client:

        def send(indices: Iterator[int] | list[int]) -> None:
            for index in indices:
                response = client.post(
                    "/predict", files={"file": ("digit.png", png(images[index]), "image/png")}
                )
                assert response.status_code == 200, response.text

        # Balanced: the held-out digits in order (every class, in its share of the test split).
        send(list(range(WINDOW)))
        balanced = prometheus.wait_for(
            "the class drift of a balanced stream", lambda: class_drift(prometheus)
        )
        assert balanced is not None and balanced < THRESHOLD
        assert all(alert["state"] != "firing" for alert in drift_alerts(prometheus))

        # One class only: the window fills with zeros.
        zeros = np.flatnonzero(labels == 0).tolist()
        send([zeros[i % len(zeros)] for i in range(WINDOW)])
        # The window holds only zeros once the last of them is in: one class of ten is at
        # about 0.87 from a balanced baseline (each value on the way is a window still mixed).
        skewed = prometheus.wait_for(
            "the class drift of a one-class window",
            lambda: class_drift(prometheus),
            done=lambda value: value is not None and value > 0.8,
        )
        assert skewed > THRESHOLD
        firing = prometheus.wait_for(
            f"{ALERT} firing for kind=class",
            lambda: [a for a in drift_alerts(prometheus) if a["state"] == "firing"],
        )
        assert firing[0]["labels"]["model"] == "digits"
        assert firing[0]["labels"]["version"] == "1"
