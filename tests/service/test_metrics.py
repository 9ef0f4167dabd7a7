"""Tests for service.metrics: the series a multiprocess exposition leaves out (a retired
version's, a removed label's, a removed model's), read from hand-made metric families."""

from __future__ import annotations

import math

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from service.metrics import live_series


def families() -> list[GaugeMetricFamily | CounterMetricFamily]:
    info = GaugeMetricFamily("imgcls_model_info", "served", labels=["name", "version"])
    info.add_metric(["digits", "3"], 1.0)
    info.add_metric(["digits", "2"], math.nan)  # retired by a worker
    label = GaugeMetricFamily(
        "imgcls_version_label_info", "labels", labels=["model", "version_label", "version"]
    )
    label.add_metric(["digits", "canary", "2"], math.nan)  # removed from serving.yaml
    depth = GaugeMetricFamily("imgcls_batch_queue_depth", "queued", labels=["model"])
    depth.add_metric(["digits"], 0.0)
    depth.add_metric(["letters"], math.nan)  # a removed model
    requests = CounterMetricFamily(
        "imgcls_requests", "answered", labels=["route", "code", "model", "version"]
    )
    requests.add_metric(["/predict", "200", "digits", "3"], 5.0)
    requests.add_metric(["/predict", "200", "digits", "2"], 7.0)  # the retired version's
    requests.add_metric(["/healthz", "200", "", ""], 9.0)  # no model served it
    return [info, label, depth, requests]


def sample_labels(family: GaugeMetricFamily | CounterMetricFamily) -> list[dict[str, str]]:
    return [sample.labels for sample in family.samples]


def test_live_series_keeps_only_what_is_served() -> None:
    info, label, depth, requests = live_series(families())
    assert sample_labels(info) == [{"name": "digits", "version": "3"}]
    assert sample_labels(label) == []
    assert sample_labels(depth) == [{"model": "digits"}]
    kept = [(s.labels["version"], s.value) for s in requests.samples if s.name.endswith("_total")]
    assert kept == [("3", 5.0), ("", 9.0)]


def test_a_models_failure_count_is_exported_at_zero_before_any_failure() -> None:
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics(max_batch_size=8)
    metrics.model_added("digits")
    text = metrics.render().decode()
    assert 'imgcls_inference_errors_total{model="digits"} 0.0' in text
