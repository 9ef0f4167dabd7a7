"""Monitoring end to end: a real Prometheus scrapes a real service and evaluates our rules.

One uvicorn process serves the session's trained digits model as version 1 (``stable``) and a
republished copy as version 2 (``canary``, weight 0.5, from ``serving.yaml``). One ``prometheus``
process, started here on loopback, scrapes it every second with the job name of
``monitoring/prometheus.yml`` (so ``up{job="api"}`` means the same as in the compose stack) and
evaluates ``monitoring/alerts.yml`` every second. After real traffic the tests read everything
back through Prometheus's HTTP API: the counts clients caused (per version, as the answers named
it), the serving versions and labels, the rules' health, every Grafana panel query, and an
invalid ``serving.yaml`` reported.

``promtool`` checks (test_alert_rules.py) prove the files parse; this proves they work together
against what the service really exports.
"""

from __future__ import annotations

import itertools
import json
import shutil
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.feedback import captured
from tests.helpers.images import digit_label, digit_pngs
from tests.helpers.models import auto_runtime, republish
from tests.helpers.ops import ALERT_RULES, iter_dashboard_queries, reads_the_controller
from tests.helpers.prometheus import (
    PROMETHEUS_START_TIMEOUT_S,
    WAIT_TIMEOUT_S,
    Prometheus,
    api_scrape_config,
    start_prometheus,
    stop_prometheus,
)
from tests.helpers.servers import Server, start_server, stop_server

pytestmark = pytest.mark.e2e

#: Predictions sent at least, one image per request, so requests == predictions (a few more while
#: the canary's share is random: see the ``monitored`` fixture); never more than MAX_REQUESTS.
N_PREDICTIONS = 60
MAX_REQUESTS = 200
#: IMGCLS_DRIFT_WINDOW of the monitored service: small, so that each version's share of
#: N_PREDICTIONS fills it and the drift gauges exist (the default 1000 would need 100 each).
DRIFT_WINDOW = 10
#: The repository's serving.yaml: two served versions, the canary takes half of /predict.
SERVING_YAML = textwrap.dedent(
    """\
    models:
      digits:
        version_policy: {latest: 2}
        labels:
          stable: 1
          canary: {version: 2, weight: 0.5}
    """
)
#: The version labels that file exports: label -> (version, weight).
LABELS = {"stable": ("1", 0.0), "canary": ("2", 0.5)}
VERSIONS = {version for version, _ in LABELS.values()}
#: Alerts that must be inactive while one healthy replica serves a ready model without errors or
#: rejections. The others (p99 latency, confidence drift, prediction drift) depend on the runner's
#: speed or on the model, so they are only checked to evaluate without error.
QUIET_WHEN_HEALTHY = (
    "ImgclsInstanceDown",
    "ImgclsNoModelReady",
    "ImgclsModelReloadFailed",
    "ImgclsHighErrorRate",
    "ImgclsQueueSaturated",
    "ImgclsQueueBacklog",
    "ImgclsCanaryErrorRateAboveStable",
    "ImgclsServingConfigInvalid",
    "ImgclsLiveAccuracyBelowTest",
    "ImgclsCaptureFailing",
)
#: The Go zero time: what /api/v1/rules reports for a rule never evaluated.
NEVER = "0001-01-01T00:00:00Z"


# --- fixtures ---------------------------------------------------------------------------------
@dataclass
class Monitored:
    server: Server
    prometheus: Prometheus
    job: str
    instance: str
    models_dir: Path
    sent: int  # /predict requests sent (and answered 200), one image each
    top1: Counter[str]  # top-1 label of each prediction, as the clients received them
    served_by: Counter[str]  # the version that answered each request, as the answers said
    #: (version, outcome) -> labelled answers the clients sent back (every prediction, with
    #: its true label): "correct" when the answer was the true class, else "wrong".
    feedback: Counter[tuple[str, str]]


@pytest.fixture(scope="module")
def monitored(
    prometheus_binary: str,
    trained_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Monitored]:
    """A fresh service (so its counters start at 0) on digits 1 and 2 with SERVING_YAML, and a
    Prometheus scraping it, after at least N_PREDICTIONS real /predict requests, served by both
    versions before and after a scrape, that Prometheus has already scraped.

    Module-scoped, with the same helpers as ``server_factory``, so that the tests below share
    one service and one Prometheus (starting TensorFlow costs far more than the checks).
    """
    workdir = tmp_path_factory.mktemp("prometheus-live")
    models_dir = workdir / "models"
    shutil.copytree(trained_repo, models_dir)
    assert republish(models_dir) == 2
    (models_dir / "serving.yaml").write_text(SERVING_YAML)
    server = start_server(
        models_dir,
        workdir,
        capture_rate="1",
        capture_dir=str(workdir / "captured"),
        feedback_dir=str(workdir / "feedback"),
        drift_window=str(DRIFT_WINDOW),
    )
    prometheus: Prometheus | None = None
    try:
        instance = server.url.removeprefix("http://")
        prometheus = start_prometheus(prometheus_binary, instance, workdir)
        job = prometheus.config["scrape_configs"][0]["job_name"]
        prom = prometheus
        prom.wait_for(
            "prometheus ready (/-/ready)",
            lambda: httpx.get(f"{prom.url}/-/ready", timeout=2.0).status_code == 200,
            timeout_s=PROMETHEUS_START_TIMEOUT_S,
        )

        def api_target() -> dict[str, Any]:
            targets = prom.api("targets", state="active")["data"]["activeTargets"]
            (target,) = [t for t in targets if t["labels"].get("instance") == instance]
            return dict(target)

        target = prom.wait_for(
            f"target {instance} up in /api/v1/targets",
            api_target,
            done=lambda target: target["health"] == "up",
        )
        assert target["labels"]["job"] == job
        assert target["scrapeUrl"] == f"{server.url}/metrics"
        # /readyz waits for the default model; the canary may still be warming up.
        prom.wait_for(
            "both digits versions served (imgcls_model_info)",
            lambda: prom.scalar('count(imgcls_model_info{name="digits"})'),
            done=lambda count: count == 2,
        )

        top1: Counter[str] = Counter()
        served_by: Counter[str] = Counter()
        truths: list[tuple[str, str, str, str]] = []  # (id, version, answered, true label)
        expr = 'sum(imgcls_requests_total{route="/predict",code="200"})'
        with server.client() as client:
            images = itertools.cycle(enumerate(digit_pngs(N_PREDICTIONS)))

            def classify() -> str:
                """POST one image to /predict; the version that answered."""
                index, png = next(images)
                response = client.post(
                    "/predict", files={"file": (f"digit-{index}.png", png, "image/png")}
                )
                assert response.status_code == 200, response.text
                answer = response.json()
                answered = answer["results"][0]["predictions"][0]["label"]
                top1[answered] += 1
                assert answer["model"]["name"] == "digits"
                version = str(answer["model"]["version"])
                served_by[version] += 1
                truths.append((answer["id"], version, answered, digit_label(index)))
                return version

            # Round 1, until each version has answered once: its series are born. A counter's
            # first sample is rate()'s baseline, so the rates per version need round 2 too.
            while set(served_by) != VERSIONS and sum(served_by.values()) < MAX_REQUESTS:
                classify()
            assert set(served_by) == VERSIONS, f"the canary weight split nothing: {served_by}"
            first = sum(served_by.values())
            prom.wait_for(
                f"{expr} == {first}", lambda: prom.scalar(expr), done=lambda n: n == first
            )
            # Round 2, until N_PREDICTIONS in all, each version answered again and filled its
            # drift window.
            again: set[str] = set()
            while (
                again != VERSIONS
                or sum(served_by.values()) < N_PREDICTIONS
                or min(served_by.values()) < DRIFT_WINDOW
            ) and sum(served_by.values()) < MAX_REQUESTS:
                again.add(classify())
            sent = sum(served_by.values())
            # Every answer was captured (capture rate 1); the clients send the true labels back.
            feedback = send_feedback(client, workdir / "captured", truths)
        assert again == VERSIONS and sent >= N_PREDICTIONS, served_by
        assert min(served_by.values()) >= DRIFT_WINDOW, served_by
        assert sum(top1.values()) == sent
        prom.wait_for(
            f"sum(imgcls_feedback_total) == {sent}",
            lambda: prom.scalar("sum(imgcls_feedback_total)"),
            done=lambda count: count == sent,
        )

        prom.wait_for(
            f"{expr} == {sent}",
            lambda: prom.scalar(expr),
            done=lambda count: count == sent,
        )
        yield Monitored(
            server, prometheus, job, instance, models_dir, sent, top1, served_by, feedback
        )
    finally:
        if prometheus is not None:
            stop_prometheus(prometheus)
        stop_server(server)


def send_feedback(
    client: httpx.Client, capture_dir: Path, truths: list[tuple[str, str, str, str]]
) -> Counter[tuple[str, str]]:
    """POST /feedback with the true label of every prediction (once each is in the capture
    folder ``capture_dir``); the clients' own count of (version, correct|wrong)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while len(captured(capture_dir)) < len(truths) and time.monotonic() < deadline:
        time.sleep(0.1)
    response = client.post(
        "/feedback", json=[{"id": pid, "label": truth} for pid, _, _, truth in truths]
    )
    assert response.status_code == 200, response.text
    assert response.json()["failed"] == 0, response.json()
    return Counter(
        (version, "correct" if answered == truth else "wrong")
        for _, version, answered, truth in truths
    )


# --- what clients did, as Prometheus sees it --------------------------------------------------
def test_config_keeps_the_compose_job_name(monitored: Monitored) -> None:
    """Alerts select ``up{job="api"}``: the live job must carry the compose stack's name."""
    assert monitored.job == api_scrape_config()["job_name"] == "api"
    assert monitored.prometheus.scalar(f'up{{job="{monitored.job}"}}') == 1


def test_request_and_prediction_counts(monitored: Monitored) -> None:
    prom = monitored.prometheus
    assert prom.scalar('sum(imgcls_requests_total{route="/predict",code="200"})') == monitored.sent
    assert prom.scalar('sum(imgcls_requests_total{route="/predict",code!="200"})') is None
    assert prom.scalar("sum(imgcls_predictions_total)") == monitored.sent
    assert prom.scalar("sum(imgcls_prediction_confidence_count)") == monitored.sent
    # Per class, exactly what the clients were told.
    by_label = {
        series["metric"]["label"]: float(series["value"][1])
        for series in prom.query("sum by (label) (imgcls_predictions_total)")
    }
    assert by_label == {label: float(count) for label, count in monitored.top1.items()}


def values_by(prom: Prometheus, expr: str, label: str) -> dict[str, float]:
    """``{series[label]: value}`` of an instant query (one series per value of ``label``)."""
    result = prom.query(expr)
    values = {series["metric"][label]: float(series["value"][1]) for series in result}
    assert len(values) == len(result), f"{expr}: several series per {label}: {result}"
    return values


def test_counts_per_model_version(monitored: Monitored) -> None:
    """Requests, predictions and confidences carry the model and the version that served them:
    per version exactly what the answers told the clients (the canary's share included)."""
    prom = monitored.prometheus
    told = {version: float(count) for version, count in monitored.served_by.items()}
    assert set(told) == {"1", "2"}
    assert (
        values_by(
            prom,
            'imgcls_requests_total{route="/predict",code="200",model="digits"}',
            "version",
        )
        == told
    )
    assert values_by(prom, "sum by (version) (imgcls_predictions_total)", "version") == told
    assert values_by(prom, 'imgcls_prediction_confidence_count{model="digits"}', "version") == told
    # Requests that no model served (probes, scrapes) carry empty model and version labels.
    assert prom.scalar('sum(imgcls_requests_total{route="/predict",model=""})') is None
    assert prom.scalar('sum(imgcls_requests_total{route="/metrics",model="",version=""})')


def test_serving_versions_labels_and_readiness(monitored: Monitored) -> None:
    prom = monitored.prometheus
    infos = prom.query("imgcls_model_info")
    runtimes = {v: auto_runtime(monitored.models_dir / "digits" / v)["name"] for v in ("1", "2")}
    assert sorted((info["metric"] for info in infos), key=lambda m: m["version"]) == [
        {
            "__name__": "imgcls_model_info",
            "job": monitored.job,
            "instance": monitored.instance,
            "name": "digits",
            "version": version,
            "runtime": runtime,
            # An empty label is no label in Prometheus: no fallback.
        }
        for version, runtime in runtimes.items()
    ]
    assert all(float(info["value"][1]) == 1 for info in infos)
    assert prom.scalar("imgcls_model_ready") == 1
    assert prom.scalar('sum(imgcls_model_reloads_total{result="failure"})') == 0
    # serving.yaml, as exported: which version each label names, and its weight.
    labels = {
        series["metric"]["version_label"]: series["metric"]["version"]
        for series in prom.query('imgcls_version_label_info{model="digits"}')
    }
    assert labels == {label: version for label, (version, _) in LABELS.items()}
    weights = values_by(prom, 'imgcls_version_label_weight{model="digits"}', "version_label")
    assert weights == {label: weight for label, (_, weight) in LABELS.items()}
    assert prom.scalar("imgcls_serving_config_valid") == 1


def test_stable_and_canary_recording_rules(monitored: Monitored) -> None:
    """The recording rules behind the canary alerts and panel see both versions, by label:
    no 5xx on either (a ratio of 0, not missing) and a mean confidence in (0, 1]."""
    prom = monitored.prometheus
    by_label = (
        'imgcls:version_label_info:max{{model="digits"}} * on (job, model, version) group_left() {}'
    )

    def per_label(rule: str) -> dict[str, float]:
        return values_by(prom, by_label.format(rule), "version_label")

    errors = prom.wait_for(
        "5xx ratio of stable and canary recorded",
        lambda: per_label("imgcls:request_errors_by_version:ratio_rate5m"),
        done=lambda ratios: set(ratios) == set(LABELS),
    )
    assert errors == {"stable": 0.0, "canary": 0.0}
    confidence = prom.wait_for(
        "mean confidence of stable and canary recorded",
        lambda: per_label("imgcls:prediction_confidence_by_version:mean_rate5m"),
        done=lambda means: set(means) == set(LABELS),
    )
    assert all(0.0 < mean <= 1.0 for mean in confidence.values()), confidence
    rates = per_label("imgcls:requests_by_version:rate5m")
    assert set(rates) == set(LABELS) and all(rate > 0 for rate in rates.values()), rates


# --- the rules ------------------------------------------------------------------------------
def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_rule_is_loaded_and_evaluates_without_error(monitored: Monitored) -> None:
    prom = monitored.prometheus

    def all_rules() -> list[dict[str, Any]]:
        body = prom.api("rules")
        assert body["status"] == "success", body
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    rules = prom.wait_for(
        "every rule evaluated once (/api/v1/rules)",
        all_rules,
        done=lambda rules: bool(rules) and all(r["lastEvaluation"] != NEVER for r in rules),
    )
    loaded = {rule["name"] for rule in rules if rule["type"] == "alerting"}
    assert loaded == set(alert_names()), f"missing: {set(alert_names()) - loaded}"
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy, f"rules that failed to evaluate: {unhealthy}"


def test_healthy_service_raises_no_alert(monitored: Monitored) -> None:
    """With the job name right, ``absent(up{job="api"})`` and friends are empty: nothing pends.

    (Polled: the first rule evaluations may predate the first scrape and briefly pend.)
    """
    prom = monitored.prometheus

    def states() -> dict[str, str]:
        groups = prom.api("rules", type="alert")["data"]["groups"]
        return {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}

    prom.wait_for(
        f"{', '.join(QUIET_WHEN_HEALTHY)} inactive",
        states,
        done=lambda now: all(now.get(name) == "inactive" for name in QUIET_WHEN_HEALTHY),
    )


# --- the dashboard -----------------------------------------------------------------------------
def test_every_dashboard_query_evaluates_and_returns_data(monitored: Monitored) -> None:
    """Each Grafana panel query, sent as Grafana would (instant, variables substituted), succeeds
    and, after real traffic, returns at least one series: an empty panel is a broken panel.

    The Rollout row's queries read the rollout controller's series (job imgcls-rollout), and no
    controller runs here: they must evaluate, but have nothing to return."""
    prom = monitored.prometheus
    queries = iter_dashboard_queries()
    assert queries
    served = [query for query in queries if not reads_the_controller(query)]
    assert len(served) < len(queries), "the Rollout row's queries"
    for query in queries:
        body = prom.api("query", query=query)
        assert body["status"] == "success", f"{query}: {body.get('errorType')}: {body.get('error')}"
        assert not body.get("warnings"), f"{query}: {body['warnings']}"

    # rate() needs two samples of a series born with the first prediction, and recording rules
    # one evaluation after that: give both a few scrape intervals.
    prom.wait_for(
        "every dashboard query returns data (last: the empty ones)",
        lambda: [query for query in served if not prom.query(query)],
        done=lambda empty: not empty,
    )


# --- last: it changes the service's configuration ------------------------------------------------
def alert_state(prom: Prometheus, name: str) -> str:
    groups = prom.api("rules", type="alert")["data"]["groups"]
    (state,) = [
        rule["state"] for group in groups for rule in group["rules"] if rule["name"] == name
    ]
    return str(state)


def test_invalid_serving_config_is_reported_and_the_last_good_one_kept(
    monitored: Monitored,
) -> None:
    """A broken serving.yaml turns imgcls_serving_config_valid to 0 and ImgclsServingConfigInvalid
    pending (it fires after 5 minutes), while the labels keep their last good versions."""
    prom = monitored.prometheus
    config = monitored.models_dir / "serving.yaml"
    config.write_text(SERVING_YAML.replace("weight: 0.5", "weight: 1.5"))
    try:
        prom.wait_for(
            "imgcls_serving_config_valid == 0",
            lambda: prom.scalar("imgcls_serving_config_valid"),
            done=lambda valid: valid == 0,
        )
        prom.wait_for(
            "ImgclsServingConfigInvalid pending",
            lambda: alert_state(prom, "ImgclsServingConfigInvalid"),
            done=lambda state: state == "pending",
        )
        weights = values_by(prom, 'imgcls_version_label_weight{model="digits"}', "version_label")
        assert weights == {label: weight for label, (_, weight) in LABELS.items()}
    finally:
        config.write_text(SERVING_YAML)
    prom.wait_for(
        "imgcls_serving_config_valid back to 1",
        lambda: prom.scalar("imgcls_serving_config_valid"),
        done=lambda valid: valid == 1,
    )
    prom.wait_for(
        "ImgclsServingConfigInvalid inactive again",
        lambda: alert_state(prom, "ImgclsServingConfigInvalid"),
        done=lambda state: state == "inactive",
    )


# --- series follow what is served, with several workers ----------------------------------------
def exposed(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of ``name``'s samples in a text exposition (NaN ones included)."""
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.add(tuple(sorted(sample.labels.items())))
    return found


def test_series_follow_what_is_served_with_two_workers(
    prometheus_binary: str, trained_repo: Path, tmp_path: Path
) -> None:
    """Retired versions, removed labels and a removed model leave /metrics and Prometheus with
    two workers too (multiprocess mode cannot remove a series from its files)."""
    models_dir = tmp_path / "models"
    shutil.copytree(trained_repo, models_dir)
    assert republish(models_dir) == 2
    assert republish(models_dir) == 3
    assert republish(models_dir, as_name="letters") == 1
    (models_dir / "serving.yaml").write_text(
        "models:\n  digits:\n    version_policy: all\n"
        "    labels: {stable: 1, canary: {version: 2, weight: 0.5}}\n"
    )
    server = start_server(models_dir, tmp_path, workers="2", poll_interval_s="0.5")
    prometheus: Prometheus | None = None
    try:
        prom = prometheus = start_prometheus(
            prometheus_binary, server.url.removeprefix("http://"), tmp_path
        )
        prom.wait_for(
            "every version and both labels scraped",
            lambda: (
                prom.scalar("count(imgcls_model_info)"),
                prom.scalar("count(imgcls_version_label_info)"),
            ),
            done=lambda counts: counts == (4, 2),
            timeout_s=PROMETHEUS_START_TIMEOUT_S,
        )
        with server.client() as client:  # per-version series of the versions about to retire
            for version in (1, 2):
                png = digit_pngs(1)[0]
                path = f"/models/digits/versions/{version}/predict"
                assert client.post(path, files={"file": ("d.png", png, "image/png")}).is_success

        (models_dir / "serving.yaml").write_text(
            "models:\n  digits:\n    version_policy: {latest: 1}\n"
        )
        shutil.rmtree(models_dir / "letters")

        def current() -> dict[str, set[tuple[tuple[str, str], ...]]]:
            text = httpx.get(server.url + "/metrics", timeout=10.0).text  # either worker
            return {
                name: exposed(text, name)
                for name in (
                    "imgcls_model_info",
                    "imgcls_version_label_info",
                    "imgcls_version_label_weight",
                    "imgcls_batch_queue_depth",
                    "imgcls_requests_total",
                )
            }

        v3 = models_dir / "digits" / "3"
        only_v3 = {
            (
                ("fallback", ""),
                ("name", "digits"),
                ("runtime", auto_runtime(v3)["name"]),
                ("version", "3"),
            )
        }
        series = prom.wait_for(
            "only digits 3 in /metrics",
            current,
            done=lambda found: found["imgcls_model_info"] == only_v3,
        )
        for _ in range(5):  # every scrape, whichever worker answers it
            series = current()
            assert series["imgcls_model_info"] == only_v3
            assert series["imgcls_version_label_info"] == set()
            assert series["imgcls_version_label_weight"] == set()
            assert {dict(s)["model"] for s in series["imgcls_batch_queue_depth"]} <= {"digits"}
            versions = {dict(s)["version"] for s in series["imgcls_requests_total"]}
            assert versions <= {"", "3"}, versions
        prom.wait_for(
            "Prometheus sees only digits 3 and no label",
            lambda: (
                prom.query("imgcls_model_info"),
                prom.query("imgcls_version_label_info"),
                prom.query("imgcls_version_label_weight"),
                prom.query('imgcls_batch_queue_depth{model="letters"}'),
            ),
            done=lambda found: (
                [r["metric"]["version"] for r in found[0]] == ["3"] and not any(found[1:])
            ),
        )
        assert "Removal of labels has not been implemented" not in server.log()
    finally:
        if prometheus is not None:
            stop_prometheus(prometheus)
        stop_server(server)


# --- production feedback, as Prometheus sees it -------------------------------------------------
def test_live_accuracy_per_version_is_what_the_clients_counted(monitored: Monitored) -> None:
    """Every prediction labelled: the feedback counters per version and outcome, and the
    recording rule's live accuracy, equal the clients' own count; the test accuracy beside it
    is each version's metadata."""
    prom = monitored.prometheus
    for version in VERSIONS:
        counted = values_by(
            prom,
            f'sum by (outcome) (imgcls_feedback_total{{model="digits",version="{version}"}})',
            "outcome",
        )
        right = monitored.feedback[(version, "correct")]
        wrong = monitored.feedback[(version, "wrong")]
        assert counted == {"correct": right, "wrong": wrong, "new_class": 0.0}
        # The recording rule is evaluated every second; wait for one evaluation after the scrape.
        live_expr = f'imgcls:feedback_accuracy:ratio_rate1h{{model="digits",version="{version}"}}'
        live = prom.wait_for(
            live_expr, partial(prom.scalar, live_expr), done=lambda value: value is not None
        )
        assert live == pytest.approx(right / (right + wrong))
        metadata = json.loads(
            (monitored.models_dir / "digits" / version / "metadata.json").read_text()
        )
        test = prom.scalar(f'imgcls_model_test_accuracy{{model="digits",version="{version}"}}')
        assert test == pytest.approx(metadata["metrics"]["test_accuracy"])


def test_drift_gauges_exist_for_each_version_with_a_baseline(monitored: Monitored) -> None:
    """Both versions carry a drift baseline and filled their window: a distance per kind."""
    prom = monitored.prometheus
    for version in VERSIONS:
        drift_expr = f'imgcls_prediction_drift{{model="digits",version="{version}"}}'
        kinds = prom.wait_for(
            drift_expr,
            partial(values_by, prom, drift_expr, "kind"),
            done=lambda found: set(found) == {"class", "confidence"},
        )
        assert all(0.0 <= value <= 1.0 for value in kinds.values()), kinds
