"""Both metric sources turn the service's counters into per-version increases: scrapes by
difference (a restarted replica's counters count from zero), Prometheus by ``increase``."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.metrics import ServiceMetrics
from service.rollout.sources import PrometheusSource, ScrapeSource, SourceError


class Replica:
    """A real ServiceMetrics registry standing in for one replica's /metrics."""

    def __init__(self) -> None:
        self.metrics = ServiceMetrics(max_batch_size=8, registry=CollectorRegistry())

    def serve(
        self, version: str, code: str = "200", count: int = 1, seconds: float = 0.004
    ) -> None:
        for _ in range(count):
            self.metrics.request_finished("/predict", code, "digits", version, seconds)

    def text(self) -> str:
        return generate_latest(self.metrics.registry).decode()


def test_scrapes_give_each_versions_increase_summed_over_replicas() -> None:
    replicas = {"http://a:8000": Replica(), "http://b:8000": Replica()}
    replicas["http://a:8000"].serve("1", count=5)  # before the interval: not counted
    source = ScrapeSource(replicas, fetch=lambda url: replicas[url.removesuffix("/metrics")].text())
    assert source.traffic("digits", 60) is None  # the first look takes the baseline
    replicas["http://a:8000"].serve("1", count=30)
    replicas["http://b:8000"].serve("1", count=20)
    replicas["http://b:8000"].serve("2", count=7, seconds=0.3)
    replicas["http://b:8000"].serve("2", code="500", count=3, seconds=0.3)
    replicas["http://a:8000"].metrics.request_finished("/explain", "200", "digits", "2", 5.0)
    traffic = source.traffic("digits", 60)
    assert traffic is not None
    assert traffic["1"].requests == 50 and traffic["1"].server_errors == 0
    assert traffic["2"].requests == 10 and traffic["2"].server_errors == 3  # /explain left out
    assert traffic["2"].duration_buckets[math.inf] == 10
    assert traffic["2"].quantile(0.99) > 0.25 > traffic["1"].quantile(0.99)  # type: ignore[operator]


def test_a_restarted_replica_counts_from_zero_and_an_unreadable_one_judges_nothing() -> None:
    replica = Replica()
    pages = {"text": replica.text()}
    source = ScrapeSource(["http://a:8000"], fetch=lambda url: pages["text"])
    replica.serve("1", count=40)
    pages["text"] = replica.text()
    source.begin("digits")
    fresh = Replica()  # the replica restarted: its counters start again
    fresh.serve("1", count=4)
    pages["text"] = fresh.text()
    traffic = source.traffic("digits", 60)
    assert traffic is not None and traffic["1"].requests == 4

    def down(url: str) -> str:
        raise SourceError(f"cannot read {url}: connection refused")

    source = ScrapeSource(["http://a:8000"], fetch=down)
    source.begin("digits")
    assert source.traffic("digits", 60) is None


def test_prometheus_is_asked_for_increases_over_the_interval() -> None:
    asked: list[str] = []
    answers = {
        "imgcls_requests_total": [
            ({"version": "1", "code": "200"}, "400"),
            ({"version": "2", "code": "200"}, "95"),
            ({"version": "2", "code": "503"}, "5"),
        ],
        "imgcls_request_duration_seconds_bucket": [
            ({"version": "2", "le": "0.1"}, "100"),
            ({"version": "2", "le": "+Inf"}, "100"),
        ],
        "imgcls_prediction_confidence_sum": [({"version": "2"}, "90")],
        "imgcls_prediction_confidence_count": [({"version": "2"}, "100")],
        "imgcls_feedback_total": [({"version": "2", "outcome": "wrong"}, "NaN")],
        "imgcls_model_info": [({"version": "1"}, "1")],
    }

    def fetch(url: str) -> str:
        query = parse_qs(urlparse(url).query)["query"][0]
        asked.append(query)
        metric = next(name for name in answers if f"{name}{{" in query)
        rows = [{"metric": labels, "value": [0, value]} for labels, value in answers[metric]]
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": rows}})

    traffic = PrometheusSource("http://prometheus:9090", fetch=fetch).traffic("digits", 59.6)
    assert traffic is not None
    *increases, served = asked
    assert all('model="digits"' in q and "[60s]" in q for q in increases)
    assert served == 'max by (version) (imgcls_model_info{name="digits"})'
    # Inference routes only: /explain and /feedback are not the model's latency.
    assert all('route!~".*(explain|feedback).*"' in q for q in increases[:2])
    assert traffic["1"].served and not traffic["2"].served
    assert traffic["2"].requests == 100 and traffic["2"].server_errors == 5
    assert traffic["2"].mean_confidence == pytest.approx(0.9)
    assert traffic["2"].feedback == 0  # NaN (no samples) is no feedback
    assert traffic["1"].requests == 400

    refused = PrometheusSource(
        "http://prometheus:9090",
        fetch=lambda url: json.dumps({"status": "error", "error": "parse error"}),
    )
    with pytest.raises(SourceError, match="parse error"):
        refused.traffic("digits", 60)
