"""Prometheus configuration and alert rules: promtool validates them and runs their unit tests;
the structure every alert needs (for, severity, summary/description/runbook) is checked here."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.helpers.ops import (
    ALERT_RULES,
    ALERT_TESTS,
    MONITORING,
    PROMETHEUS_CONFIG,
    ROLLOUT_JOB,
    ROLLOUT_SERVICE,
    known_series,
    promql_metric_names,
    recording_rule_names,
    route_regexes,
    rule_exprs,
)

#: Alerts the operations brief asks for; more are welcome, none of these may go missing.
REQUIRED_ALERTS = {
    "ImgclsHighErrorRate",
    "ImgclsHighLatencyP99",
    "ImgclsQueueSaturated",
    "ImgclsNoModelReady",
    "ImgclsModelReloadFailed",
    "ImgclsInstanceDown",
    "ImgclsLowConfidenceDrift",
    "ImgclsCanaryErrorRateAboveStable",
    "ImgclsCanaryConfidenceBelowStable",
    "ImgclsServingConfigInvalid",
    "ImgclsLiveAccuracyBelowTest",
    "ImgclsPredictionDrift",
    "ImgclsCaptureFailing",
    "ImgclsRolloutRolledBack",
    "ImgclsRolloutStuck",
}
SEVERITIES = {"critical", "warning", "info"}


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=MONITORING, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_test_cases() -> list[dict[str, Any]]:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


# --- promtool --------------------------------------------------------------------------------
@pytest.mark.e2e  # runs promtool
def test_promtool_check_config(promtool: str) -> None:
    done = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


@pytest.mark.e2e  # runs promtool
def test_promtool_check_rules(promtool: str) -> None:
    done = run([promtool, "check", "rules", str(ALERT_RULES)])
    assert done.returncode == 0, done.stdout + done.stderr
    rule_count = len(alert_rules()) + len(recording_rule_names())
    assert f"{rule_count} rules found" in done.stdout + done.stderr


@pytest.mark.e2e  # runs promtool
def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


# --- the rules themselves ---------------------------------------------------------------------
def test_required_alerts_exist_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    assert len(names) == len(set(names)), "duplicate alert names"
    assert all(name.startswith("Imgcls") for name in names)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_for_severity_and_actionable_annotations(rule: dict[str, Any]) -> None:
    assert rule.get("for"), "every alert waits before firing (`for:`), so one blip does not page"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook"):
        assert annotations.get(key, "").strip(), f"annotation {key!r} missing"
    assert "\n" not in annotations["runbook"].strip(), "runbook is one actionable line"
    assert "\n" not in annotations["summary"].strip()


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_is_unit_tested_firing_and_silent(rule: dict[str, Any]) -> None:
    cases = [case for case in alert_test_cases() if case["alertname"] == rule["alert"]]
    assert cases, f"{rule['alert']} has no case in {ALERT_TESTS.name}"
    firing = [case for case in cases if case.get("exp_alerts")]
    silent = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no test input fires {rule['alert']}"
    assert silent, f"no test input checks that {rule['alert']} stays silent"
    for case in firing:
        for expected in case["exp_alerts"]:
            assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(expected["exp_annotations"]) == set(rule["annotations"])


def test_rules_use_only_exported_metrics() -> None:
    """A renamed metric must break this test, not silently turn an alert into a no-op."""
    known = known_series()
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {sorted(unknown)}"


def test_recording_rules_follow_level_metric_operation_naming() -> None:
    for name in recording_rule_names():
        level, metric, operation = name.split(":")
        assert level == "imgcls" and metric and operation, name


def test_drift_alert_reads_the_0_6_confidence_bucket() -> None:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    exprs = "\n".join(rule["expr"] for group in groups for rule in group["rules"])
    assert 'imgcls_prediction_confidence_bucket{le="0.6"}' in exprs


# --- prometheus.yml ---------------------------------------------------------------------------
def test_prometheus_scrapes_every_api_replica_by_dns_and_itself() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == [ALERT_RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"api", "prometheus", ROLLOUT_JOB}
    api = jobs["api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert api["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]


def test_prometheus_scrapes_the_one_rollout_controller() -> None:
    """One static target, the compose service on the controller's default metrics port (a DNS
    job would be a second one that tests.helpers.prometheus takes for the api's)."""
    from service.rollout.__main__ import DEFAULT_METRICS_PORT

    jobs = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (rollout,) = [job for job in jobs if job["job_name"] == ROLLOUT_JOB]
    assert rollout.get("metrics_path", "/metrics") == "/metrics"
    assert "dns_sd_configs" not in rollout
    assert rollout["static_configs"] == [{"targets": [f"{ROLLOUT_SERVICE}:{DEFAULT_METRICS_PORT}"]}]


# --- route templates and serving.yaml labels ----------------------------------------------------
#: Routes that probes and Prometheus call: readiness answers 503 by design while loading.
PROBE_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
}
#: The classify methods of the gRPC port.
GRPC_INFERENCE = {
    "/inference.GRPCInferenceService/ModelInfer",
    "/tensorflow.serving.PredictionService/Predict",
}


def matching(regex: str, routes: set[str]) -> set[str]:
    """Routes a PromQL regex matcher selects (PromQL anchors regexes at both ends)."""
    return {route for route in routes if re.fullmatch(regex, route)}


@pytest.fixture(scope="module")
def service_routes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Route template -> HTTP methods, from the real app, and each gRPC method's full name ->
    {"GRPC"}, from the real servicers (the ``route`` label's values)."""
    from service.app import create_app
    from service.grpc.inference_v2 import InferenceServicer
    from service.grpc.tfserving import ModelServicer, PredictionServicer
    from service.settings import Settings

    app = create_app(Settings(models_dir=tmp_path_factory.mktemp("no-models")))
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    routes = {path: {method.upper() for method in operations} for path, operations in paths.items()}
    for servicer in (InferenceServicer, PredictionServicer, ModelServicer):
        for attribute in vars(servicer).values():
            method = getattr(attribute, "rpc_method", None)
            if method is not None:
                routes[f"/{method.containing_service.full_name}/{method.name}"] = {"GRPC"}
    return routes


def test_probe_selector_leaves_out_exactly_the_probe_routes(
    service_routes: dict[str, set[str]],
) -> None:
    """One probe regex everywhere, and it matches every probe route and no client route."""
    (probes,) = route_regexes(rule_exprs())["!~"]
    missing = PROBE_ROUTES - set(service_routes)
    assert not missing, f"probe routes renamed or gone: {missing}"
    assert matching(probes, set(service_routes)) == PROBE_ROUTES


def test_inference_selectors_match_every_protocol(service_routes: dict[str, set[str]]) -> None:
    """Latency and queue rules select every protocol's predict/infer route, and nothing else
    (plus /explain for the queue, which runs through the batcher too). Feedback routes
    (``/feedback``, ``/models/{name}/feedback``) are client traffic, not classify requests."""
    inference = {
        path
        for path, methods in service_routes.items()
        if "POST" in methods
        and path != "/explain"
        and not path.endswith("/feedback")
        and not path.startswith("/v2/repository/")  # Triton's model repository extension
    } | GRPC_INFERENCE
    assert {
        "/predict",
        "/models/{name}/versions/{version}/predict",
        "/v1/models/{name}/labels/{label}:predict",
        "/v2/models/{name}/infer",
    } <= inference
    regexes = route_regexes(rule_exprs())["=~"]
    assert len(regexes) == 2, regexes
    classify = min(regexes, key=len)
    queue = max(regexes, key=len)
    assert matching(classify, set(service_routes)) == inference
    assert matching(queue, set(service_routes)) == inference | {"/explain"}


def test_canary_alerts_compare_the_canary_and_stable_labels() -> None:
    """Both canary alerts join through imgcls_version_label_info (via its recording rule) and
    compare the `canary` label's version with the `stable` label's, per job and model."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    rules = {
        rule.get("alert") or rule["record"]: rule for group in groups for rule in group["rules"]
    }
    assert "imgcls_version_label_info" in rules["imgcls:version_label_info:max"]["expr"]
    for name in ("ImgclsCanaryErrorRateAboveStable", "ImgclsCanaryConfidenceBelowStable"):
        expr = rules[name]["expr"]
        assert 'imgcls:version_label_info:max{version_label="canary"}' in expr
        assert 'imgcls:version_label_info:max{version_label="stable"}' in expr
        assert "on (job, model, version) group_left()" in expr
    assert rules["ImgclsServingConfigInvalid"]["expr"].strip() == "imgcls_serving_config_valid == 0"


def rules_by_name() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {
        rule.get("alert") or rule["record"]: rule for group in groups for rule in group["rules"]
    }


def test_live_accuracy_alert_compares_feedback_with_test_accuracy() -> None:
    """Live accuracy = correct / (correct + wrong) over 1 h per version (new_class left out),
    alerted more than X = 0.05 below the same version's test accuracy, with N >= 50 examples;
    the thresholds are written in the description too."""
    rules = rules_by_name()
    by_outcome = rules["imgcls:feedback_by_outcome:increase1h"]["expr"]
    assert "imgcls_feedback_total" in by_outcome and "[1h]" in by_outcome
    labelled = rules["imgcls:feedback_labelled:increase1h"]["expr"]
    assert 'outcome=~"correct|wrong"' in labelled and "new_class" not in labelled
    accuracy = rules["imgcls:feedback_accuracy:ratio_rate1h"]["expr"]
    assert 'outcome="correct"' in accuracy and "new_class" not in accuracy
    assert "imgcls_model_test_accuracy" in rules["imgcls:model_test_accuracy:max"]["expr"]
    alert = rules["ImgclsLiveAccuracyBelowTest"]
    expr = " ".join(alert["expr"].split())
    assert "imgcls:model_test_accuracy:max - on (job, model, version)" in expr
    assert ") > 0.05" in expr
    assert "imgcls:feedback_labelled:increase1h >= 50" in expr
    assert alert["for"] == "15m"
    description = alert["annotations"]["description"]
    assert "5 points" in description and "50 labelled examples" in description


def test_drift_and_capture_alerts() -> None:
    rules = rules_by_name()
    drift = rules["ImgclsPredictionDrift"]
    expr = " ".join(drift["expr"].split())
    for kind in ("class", "confidence"):
        assert f'imgcls_prediction_drift{{kind="{kind}"}}) > 0.3' in expr
    assert "by (job, model, version, kind)" in expr
    assert drift["for"] == "10m"
    assert "threshold 0.3" in drift["annotations"]["description"]
    capture = rules["ImgclsCaptureFailing"]
    assert capture["expr"].strip() == "imgcls_capture_writable == 0"
    assert capture["for"] == "5m"


def test_rollout_alerts_read_the_controllers_decisions_and_held_intervals() -> None:
    """RolledBack counts the controller's rollback decisions, the first one too (a decision's
    series is born at 1, which increase() alone misses); Stuck waits for 10 held intervals and
    leaves out paused rollouts and models without a canary (a single weight series)."""
    from service.rollout.decide import Action

    rules = rules_by_name()
    rolled_back = " ".join(rules["ImgclsRolloutRolledBack"]["expr"].split())
    selector = f'imgcls_rollout_decisions_total{{decision="{Action.ROLLBACK.value}"}}'
    assert f"increase({selector}[15m]) > 0" in rolled_back
    assert f"unless {selector} offset 15m" in rolled_back
    assert "15 minutes" in rules["ImgclsRolloutRolledBack"]["annotations"]["description"]
    stuck = rules["ImgclsRolloutStuck"]
    expr = " ".join(stuck["expr"].split())
    assert "max by (job, model) (imgcls_rollout_held_intervals) >= 10" in expr
    assert "count by (job, model) (imgcls_rollout_weight) >= 2" in expr
    assert "unless on (job, model) max by (job, model) (imgcls_rollout_paused) == 1" in expr
    assert stuck["for"] == "5m"


#: Labels a rule may aggregate by: each bounded by the service (routes, codes, the model
#: repository, serving.yaml labels, the classes, histogram buckets) or by the deployment.
BOUNDED_LABELS = {
    "job",
    "instance",
    "route",
    "code",
    "model",
    "version",
    "version_label",
    "label",
    "le",
    "reason",
    "result",
    "outcome",
    "kind",
}
_BY_CLAUSE = re.compile(r"\b(?:by|on)\s*\(([^()]*)\)")


def test_rules_group_only_by_bounded_labels() -> None:
    for clause in _BY_CLAUSE.findall(rule_exprs()):
        labels = {label.strip() for label in clause.split(",") if label.strip()}
        assert labels <= BOUNDED_LABELS, f"unbounded grouping label(s) {labels - BOUNDED_LABELS}"
