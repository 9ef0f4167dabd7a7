"""What the operations tests (monitoring, compose, Docker, Kubernetes) share: the files they
check, the series the service exports, the dashboard's queries and the metric names in PromQL.

External tools (``promtool``, ``docker-compose``) are required in CI (``CI=true``): a missing one
fails the test there. Elsewhere the test is skipped with the reason, so a laptop without them
can still run the rest of the suite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import yaml

from tests.helpers.processes import ROOT
from tests.helpers.processes import missing_tool as shared_missing_tool

MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERT_RULES = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "imgcls.json"
GRAFANA_DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = (
    MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
)
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"

INSTALL_HINT = "apt-get install -y prometheus docker-compose docker.io debootstrap"

#: Every series the service exports (DESIGN's table plus imgcls_model_ready, the serving.yaml
#: gauges: version labels, their weights, the file's validity; and production feedback: labels
#: given, test accuracy, prediction drift, capture), as scraped.
SERVICE_METRICS: dict[str, str] = {
    "imgcls_requests": "counter",
    "imgcls_request_duration_seconds": "histogram",
    "imgcls_batch_size": "histogram",
    "imgcls_batch_queue_wait_seconds": "histogram",
    "imgcls_batch_queue_depth": "gauge",
    "imgcls_inference_duration_seconds": "histogram",
    "imgcls_inference_errors": "counter",
    "imgcls_predictions": "counter",
    "imgcls_prediction_confidence": "histogram",
    "imgcls_rejected_requests": "counter",
    "imgcls_model_info": "gauge",
    "imgcls_model_reloads": "counter",
    "imgcls_model_ready": "gauge",
    "imgcls_version_label_info": "gauge",
    "imgcls_version_label_weight": "gauge",
    "imgcls_serving_config_valid": "gauge",
    "imgcls_feedback": "counter",
    "imgcls_model_test_accuracy": "gauge",
    "imgcls_prediction_drift": "gauge",
    "imgcls_captured": "counter",
    "imgcls_capture_skipped": "counter",
    "imgcls_capture_bytes": "gauge",
    "imgcls_capture_writable": "gauge",
}
#: Series Prometheus itself attaches to every target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def exposed_series(metrics: dict[str, str] = SERVICE_METRICS) -> frozenset[str]:
    """Sample names as they appear in /metrics: ``_total`` on counters, histogram suffixes."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return frozenset(names)


def recording_rule_names(path: Path = ALERT_RULES) -> frozenset[str]:
    rules = yaml.safe_load(path.read_text())
    return frozenset(
        rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule
    )


# --- external tools ---------------------------------------------------------------------------
def missing_tool(reason: str) -> NoReturn:
    """Fail in CI (the tool is part of the contract there), skip elsewhere."""
    shared_missing_tool(f"{reason} (install: {INSTALL_HINT})")


# --- Grafana dashboard queries ----------------------------------------------------------------
#: Values for Grafana's built-in variables, so that a query can be sent to Prometheus as is.
GRAFANA_BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "15000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute_grafana_variables(expr: str, values: dict[str, str] = GRAFANA_BUILTINS) -> str:
    """Replace ``$name`` and ``${name}``; an unknown variable raises ``KeyError``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name]

    return _VARIABLE.sub(replace, expr)


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))  # collapsed rows nest their panels


def iter_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows included, in file order."""
    dashboard = json.loads(Path(path).read_text())
    return list(_walk_panels(dashboard.get("panels", [])))


def iter_dashboard_queries(path: Path = DASHBOARD, *, substitute: bool = True) -> list[str]:
    """Every PromQL query of the dashboard's panels, once each, in panel order.

    With ``substitute`` (the default) Grafana's built-in variables (``$__rate_interval`` ...) are
    replaced by the values in :data:`GRAFANA_BUILTINS`, so each query can be evaluated as is
    against a live Prometheus (``/api/v1/query``).
    """
    queries: list[str] = []
    for panel in iter_panels(path):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if not expr:
                continue
            if substitute:
                expr = substitute_grafana_variables(expr)
            if expr not in queries:
                queries.append(expr)
    return queries


# --- PromQL -----------------------------------------------------------------------------------
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels left out).

    A lexical approximation that is exact for the shapes used in this repository: selectors with
    ``{...}`` matchers, ranges, ``by (...)`` clauses, ``offset``, numbers and string literals.
    Selectors written as ``{__name__="x"}`` are not seen.
    """
    text = substitute_grafana_variables(expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("("):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- route selectors -------------------------------------------------------------------------

_ROUTE_MATCHER = re.compile(r'route(!~|=~)"((?:[^"\\]|\\.)*)"')


def rule_exprs() -> str:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return "\n".join(rule["expr"] for group in groups for rule in group["rules"])


def route_regexes(text: str) -> dict[str, set[str]]:
    """``route!~`` and ``route=~`` regexes used in ``text``, by operator."""
    found: dict[str, set[str]] = {"!~": set(), "=~": set()}
    for operator, regex in _ROUTE_MATCHER.findall(text):
        found[operator].add(regex)
    return found


# --- the rollout controller (python -m service.rollout) ----------------------------------------
#: Every metric family the controller registers, as scraped (name -> type).
ROLLOUT_METRICS: dict[str, str] = {
    "imgcls_rollout_weight": "gauge",
    "imgcls_rollout_decisions": "counter",
    "imgcls_rollout_check_value": "gauge",
    "imgcls_rollout_check_threshold": "gauge",
    "imgcls_rollout_failed_checks": "gauge",
    "imgcls_rollout_held_intervals": "gauge",
    "imgcls_rollout_paused": "gauge",
    "imgcls_rollout_last_decision_timestamp_seconds": "gauge",
}
#: monitoring/prometheus.yml's scrape job for the controller, and the compose service it scrapes.
ROLLOUT_JOB = "imgcls-rollout"
ROLLOUT_SERVICE = "rollout"


def known_series() -> frozenset[str]:
    """Series a rule or a panel may read: the service's, the controller's, Prometheus's own
    per-target series, and the recording rules'."""
    return (
        exposed_series()
        | exposed_series(ROLLOUT_METRICS)
        | PROMETHEUS_SERIES
        | recording_rule_names()
    )


def reads_the_controller(query: str) -> bool:
    """Whether a query reads only what the controller exports (or its scrape job's ``up``)."""
    return "imgcls_rollout_" in query or f'job="{ROLLOUT_JOB}"' in query
