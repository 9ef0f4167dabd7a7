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
    ROLLOUT_JOB,
    ROLLOUT_METRICS,
    SERVICE_METRICS,
    iter_dashboard_queries,
    iter_panels,
    known_series,
    promql_metric_names,
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
    # Production feedback: live accuracy beside test accuracy, drift, capture.
    "Accuracy from feedback vs test (1h)": (
        {"imgcls:feedback_accuracy:ratio_rate1h", "imgcls:model_test_accuracy:max"},
        [],
    ),
    "Feedback examples by outcome (1h)": (
        {"imgcls:feedback_by_outcome:increase1h", "imgcls:feedback_labelled:increase1h"},
        [],
    ),
    "Prediction drift by version": (
        {"imgcls_prediction_drift"},
        ["by (job, model, version, kind)"],
    ),
    "Capture: stored and skipped (samples/s)": (
        {"imgcls_captured_total", "imgcls_capture_skipped_total"},
        ["by (model, reason)", "rate("],
    ),
    "Capture bytes on disk": ({"imgcls_capture_bytes"}, ["by (model)"]),
    "Capture writable": ({"imgcls_capture_writable"}, ["by (instance)"]),
    # Rollout: the controller's own series (python -m service.rollout, job imgcls-rollout).
    "Rollout weights": ({"imgcls_rollout_weight"}, ["by (model, version)"]),
    "Rollout decisions": (
        {"imgcls_rollout_decisions_total"},
        [
            "by (model, decision)",
            "[$__rate_interval]) > 0 or",
            "unless imgcls_rollout_decisions_total offset",
        ],
    ),
    **{
        f"Check {check} vs threshold": (
            {"imgcls_rollout_check_value", "imgcls_rollout_check_threshold"},
            [f'check="{check}"'],
        )
        for check in (
            "error_ratio_delta",
            "p99_latency_ratio",
            "confidence_delta",
            "live_accuracy_delta",
        )
    },
    "Failed checks / held intervals": (
        {"imgcls_rollout_failed_checks", "imgcls_rollout_held_intervals"},
        ["by (model)"],
    ),
    "Rollout paused": ({"imgcls_rollout_paused"}, ["by (model)"]),
    "Since last rollout decision": (
        {"imgcls_rollout_last_decision_timestamp_seconds"},
        ["time() -"],
    ),
    "Rollout controller up": ({"up"}, [f'job="{ROLLOUT_JOB}"']),
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
#: The panels of the "Production feedback" row, in order.
FEEDBACK_ROW = [
    "Accuracy from feedback vs test (1h)",
    "Feedback examples by outcome (1h)",
    "Prediction drift by version",
    "Capture: stored and skipped (samples/s)",
    "Capture bytes on disk",
    "Capture writable",
]
#: The panels of the "Rollout" row, in order.
ROLLOUT_ROW = [
    "Rollout weights",
    "Rollout decisions",
    "Check error_ratio_delta vs threshold",
    "Check p99_latency_ratio vs threshold",
    "Check confidence_delta vs threshold",
    "Check live_accuracy_delta vs threshold",
    "Failed checks / held intervals",
    "Rollout paused",
    "Since last rollout decision",
    "Rollout controller up",
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
    known = known_series()
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


def test_rollout_metric_list_matches_the_controller() -> None:
    """The rollout names are a contract with service/rollout/metrics.py, like the service's."""
    from service.rollout.metrics import RolloutMetrics

    registered = RolloutMetrics()
    families = {family.name: family.type for family in registered.registry.collect()}
    assert families == ROLLOUT_METRICS


def test_check_panels_cover_every_check_of_the_controller() -> None:
    """One value-vs-threshold panel per check the controller runs (every check configured:
    the default policy), each selecting that check's value and threshold series."""
    from service.rollout.checks import VersionStats, run_checks
    from service.serving.config import RolloutPolicy

    names = [check.name for check in run_checks(RolloutPolicy(), VersionStats(), VersionStats())]
    panels = panels_by_title()
    shown = sorted(
        match
        for query in iter_dashboard_queries()
        for match in re.findall(r'imgcls_rollout_check_value\{check="(\w+)"\}', query)
    )
    assert shown == sorted(names)
    for name in names:
        queries = "\n".join(panel_queries(panels[f"Check {name} vs threshold"]))
        assert f'imgcls_rollout_check_value{{check="{name}"}}' in queries
        assert f'imgcls_rollout_check_threshold{{check="{name}"}}' in queries


def test_decision_labels_are_the_controllers() -> None:
    """Every ``decision="..."`` a query or a rule selects is an action the controller takes."""
    from service.rollout.decide import Action

    text = "\n".join(iter_dashboard_queries()) + "\n" + rule_exprs()
    selected = set(re.findall(r'decision=~?"([^"]*)"', text))
    assert selected, "ImgclsRolloutRolledBack selects the rollback decision"
    assert selected <= {action.value for action in Action}


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("Stable vs canary", CANARY_ROW),
        ("Production feedback", FEEDBACK_ROW),
        ("Rollout", ROLLOUT_ROW),
    ],
)
def test_row_holds_its_panels(row: str, expected: list[str]) -> None:
    """The row exists and its panels follow it, before the next row (Grafana's row layout)."""
    panels = iter_panels()
    titles = [panel["title"] for panel in panels]
    start = titles.index(row)
    assert panels[start]["type"] == "row"
    following = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        following.append(panel["title"])
    assert following == expected
    row_y = panels[start]["gridPos"]["y"]
    assert all(panel["gridPos"]["y"] > row_y for panel in panels[start + 1 :])


def threshold_steps(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [step["value"] for step in steps if step["value"] is not None]


def test_feedback_panels_draw_the_alert_thresholds() -> None:
    """The drift panel's line is ImgclsPredictionDrift's 0.3, the feedback count panel's is
    ImgclsLiveAccuracyBelowTest's 50 examples: read from alerts.yml, so they move together."""
    rules = rule_exprs()
    drift = re.findall(r"imgcls_prediction_drift\{[^}]*\}\) > ([0-9.]+)", rules)
    assert drift and len(set(drift)) == 1, drift
    (examples,) = re.findall(r"imgcls:feedback_labelled:increase1h >= ([0-9]+)", rules)
    panels = panels_by_title()
    assert threshold_steps(panels["Prediction drift by version"]) == [float(drift[0])]
    assert threshold_steps(panels["Feedback examples by outcome (1h)"]) == [float(examples)]
    for title in ("Prediction drift by version", "Feedback examples by outcome (1h)"):
        custom = panels[title]["fieldConfig"]["defaults"]["custom"]
        assert custom["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area"}, title


def test_held_intervals_panel_draws_the_stuck_threshold() -> None:
    """The held-intervals line is ImgclsRolloutStuck's threshold, read from alerts.yml."""
    (held,) = re.findall(r"\(imgcls_rollout_held_intervals\) >= ([0-9]+)", rule_exprs())
    panel = panels_by_title()["Failed checks / held intervals"]
    assert threshold_steps(panel) == [float(held)]
    custom = panel["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area"}


def test_check_panels_dash_their_threshold() -> None:
    """In each check panel the threshold series is the dashed one, so value and threshold
    cannot be mistaken for each other."""
    for title, panel in panels_by_title().items():
        if not title.startswith("Check "):
            continue
        legends = [target["legendFormat"] for target in panel["targets"]]
        assert sorted(legends) == ["{{model}} threshold", "{{model}} value"], title
        (override,) = panel["fieldConfig"]["overrides"]
        assert re.fullmatch(override["matcher"]["options"], "digits threshold"), title
        assert not re.fullmatch(override["matcher"]["options"], "digits value"), title
        assert override["properties"][0]["id"] == "custom.lineStyle", title


def test_panels_tile_the_24_column_grid() -> None:
    """Every panel lies within the grid's 24 columns, and no two panels overlap."""
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_route_selectors_match_the_rules() -> None:
    """The dashboard leaves out the same probe routes, and selects the same inference routes,
    as the recording and alerting rules (whose selectors test_alert_rules checks against the
    service's real route templates)."""
    rules = route_regexes(rule_exprs())
    board = route_regexes("\n".join(iter_dashboard_queries()))
    assert board["!~"] == rules["!~"]
    assert board["=~"] <= rules["=~"]
    assert board["=~"], "the canary latency panel selects the classify routes"
