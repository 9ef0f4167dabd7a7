"""The Grafana dashboard and its provisioning: required panels exist, every query reads series the
service (or Prometheus, or a recording rule) really exports, and the datasource uid matches."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.helpers.ops import (
    DASHBOARD,
    GRAFANA_DASHBOARD_PROVIDERS,
    GRAFANA_DATASOURCES,
    PROMETHEUS_SERIES,
    SERVICE_METRICS,
    exposed_series,
    iter_dashboard_queries,
    iter_panels,
    promql_metric_names,
    recording_rule_names,
    route_regexes,
    rule_exprs,
)

#: title -> (series the panel must read, text its queries must contain)
REQUIRED_PANELS: dict[str, tuple[set[str], list[str]]] = {
    "Request rate by code": ({"imgcls_requests_total"}, ["by (code)", "rate("]),
    "/predict latency p50 / p95 / p99": (
        {"imgcls_request_duration_seconds_bucket"},
        [
            "histogram_quantile(0.5,",
            "histogram_quantile(0.95,",
            "histogram_quantile(0.99,",
            'route="/predict"',
        ],
    ),
    "Batch size distribution": ({"imgcls_batch_size_bucket"}, ["by (le)"]),
    "Batch size (mean, p50, p95)": (
        {"imgcls_batch_size_sum", "imgcls_batch_size_count", "imgcls_batch_size_bucket"},
        ["/"],
    ),
    "Queue wait p50 / p95 / p99": (
        {"imgcls_batch_queue_wait_seconds_bucket"},
        ["histogram_quantile"],
    ),
    "Inference time per batch": (
        {"imgcls_inference_duration_seconds_bucket"},
        ["histogram_quantile"],
    ),
    "Rejections by reason": ({"imgcls_rejected_requests_total"}, ["by (reason)"]),
    "Predictions per class": ({"imgcls_predictions_total"}, ["by (model, label)"]),
    "Confidence distribution": ({"imgcls_prediction_confidence_bucket"}, ["by (le)"]),
    "Serving model version": ({"imgcls_model_info"}, ["version"]),
    "Model ready": ({"imgcls_model_ready"}, []),
    "Queue depth": ({"imgcls_batch_queue_depth"}, ["by (instance, model)"]),
    # Stable vs canary: every figure per model version, named by its serving.yaml labels.
    "Requests by version (5m)": (
        {"imgcls:requests_by_version:rate5m", "imgcls:version_label_info:max"},
        ["on (job, model, version) group_left()"],
    ),
    "5xx ratio by version (5m)": (
        {"imgcls:request_errors_by_version:ratio_rate5m", "imgcls:version_label_info:max"},
        ["on (job, model, version) group_left()"],
    ),
    "p95 latency by version (5m)": (
        {"imgcls_request_duration_seconds_bucket", "imgcls:version_label_info:max"},
        ["histogram_quantile(0.95,", "by (job, model, version, le)"],
    ),
    "Mean top-1 confidence by version (5m)": (
        {"imgcls:prediction_confidence_by_version:mean_rate5m", "imgcls:version_label_info:max"},
        ["on (job, model, version) group_left()"],
    ),
    "Serving config valid": ({"imgcls_serving_config_valid"}, []),
    "Version label weights": (
        {"imgcls_version_label_weight", "imgcls_version_label_info"},
        ["by (model, version_label)"],
    ),
}
#: The panels of the "Stable vs canary" row, in order.
CANARY_ROW = [
    "Requests by version (5m)",
    "5xx ratio by version (5m)",
    "p95 latency by version (5m)",
    "Mean top-1 confidence by version (5m)",
    "Serving config valid",
    "Version label weights",
]
_RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", []) if target.get("expr")]


def panels_by_title() -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in iter_panels() if panel.get("type") != "row"}


def datasource_uid() -> str:
    sources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    (prometheus,) = [source for source in sources if source["type"] == "prometheus"]
    uid: str = prometheus["uid"]
    return uid


def test_dashboard_identity() -> None:
    board = dashboard()
    assert board["uid"] == "imgcls"
    assert board["title"]
    ids = [panel["id"] for panel in iter_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("title", sorted(REQUIRED_PANELS))
def test_required_panel(title: str) -> None:
    panels = panels_by_title()
    assert title in panels, f"missing panel {title!r}"
    series, fragments = REQUIRED_PANELS[title]
    queries = panel_queries(panels[title])
    assert queries, f"{title!r} has no query"
    read = set().union(*(promql_metric_names(query) for query in queries))
    assert series <= read, f"{title!r} reads {sorted(read)}, not {sorted(series - read)}"
    joined = "\n".join(queries)
    for fragment in fragments:
        assert fragment in joined, f"{title!r}: {fragment!r} not in its queries"


def test_every_query_reads_known_series() -> None:
    known = exposed_series() | PROMETHEUS_SERIES | recording_rule_names()
    queries = iter_dashboard_queries()
    assert len(queries) >= len(REQUIRED_PANELS)
    for query in queries:
        names = promql_metric_names(query)
        assert names, f"query selects nothing: {query}"
        assert names <= known, f"unknown series {sorted(names - known)} in: {query}"


def test_rate_only_over_counters() -> None:
    """rate()/increase() of a gauge is a silent nonsense; only counters and histogram parts."""
    for query in iter_dashboard_queries():
        for name in _RATE_ARGUMENT.findall(query):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), query


def test_quantiles_aggregate_buckets_by_le() -> None:
    for query in iter_dashboard_queries():
        if "histogram_quantile" not in query:
            continue
        assert re.search(r"\bby \([^)]*\ble\b[^)]*\)", query), query
        assert re.search(r"rate\(\w+_bucket", query), query


def test_heatmaps_use_bucket_format() -> None:
    heatmaps = [panel for panel in iter_panels() if panel.get("type") == "heatmap"]
    assert heatmaps
    for panel in heatmaps:
        for target in panel["targets"]:
            assert target.get("format") == "heatmap", panel["title"]
            assert "_bucket" in target["expr"], panel["title"]


def test_datasource_is_the_provisioned_one_by_uid() -> None:
    uid = datasource_uid()
    for panel in iter_panels():
        if panel.get("type") == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]


def test_datasource_points_at_the_compose_prometheus() -> None:
    sources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    (prometheus,) = sources["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["access"] == "proxy"


def test_dashboard_provider_loads_files() -> None:
    providers = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_iter_dashboard_queries_substitutes_grafana_variables() -> None:
    raw = iter_dashboard_queries(substitute=False)
    ready = iter_dashboard_queries()
    assert any("$__rate_interval" in query for query in raw)
    assert len(raw) == len(ready)
    assert not any("$" in query for query in ready)


def test_metric_list_matches_the_service() -> None:
    """The names above are a contract with service/metrics.py: compare with what it registers."""
    from service import metrics

    registered = metrics.ServiceMetrics(max_batch_size=32)
    families = {family.name: family.type for family in registered.registry.collect()}
    assert families == SERVICE_METRICS
    assert 0.6 in metrics.CONFIDENCE_BUCKETS, "ImgclsLowConfidenceDrift reads le=0.6"
    assert "queue_full" in metrics.REJECTION_REASONS, "ImgclsQueueSaturated reads queue_full"


def test_stable_vs_canary_row_holds_its_panels() -> None:
    """The row exists and its panels follow it, before the next row (Grafana's row layout)."""
    panels = iter_panels()
    titles = [panel["title"] for panel in panels]
    start = titles.index("Stable vs canary")
    assert panels[start]["type"] == "row"
    following = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        following.append(panel["title"])
    assert following == CANARY_ROW
    row_y = panels[start]["gridPos"]["y"]
    assert all(panel["gridPos"]["y"] > row_y for panel in panels[start + 1 :])


def test_route_selectors_match_the_rules() -> None:
    """The dashboard leaves out the same probe routes, and selects the same inference routes,
    as the recording and alerting rules (whose selectors test_alert_rules checks against the
    service's real route templates)."""
    rules = route_regexes(rule_exprs())
    board = route_regexes("\n".join(iter_dashboard_queries()))
    assert board["!~"] == rules["!~"]
    assert board["=~"] <= rules["=~"]
    assert board["=~"], "the canary latency panel selects the classify routes"
