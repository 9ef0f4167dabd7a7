"""Where the controller reads one interval's traffic per version: Prometheus's HTTP API (a
real deployment: every replica, whatever restarts, as Prometheus scraped them) or the
replicas' own ``/metrics`` (one host, no Prometheus).

Both give, per model and version, the increase of the service's counters over the interval:
``imgcls_requests_total`` (by status code), ``imgcls_request_duration_seconds`` (buckets),
``imgcls_prediction_confidence`` (sum and count) and ``imgcls_feedback_total`` (by outcome).
Inference routes only: ``/explain`` (a Grad-CAM per request) and ``/feedback`` would skew
the latency.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import is_server_error
from service.rollout.checks import VersionStats

logger = logging.getLogger(__name__)

#: Routes whose requests are not judged (their latency is not the model's).
EXCLUDED_ROUTES = re.compile(r".*(explain|feedback).*")
#: Seconds one HTTP read (a scrape or a query) may take.
FETCH_TIMEOUT_S = 10.0


class SourceError(RuntimeError):
    """The metrics could not be read: nothing is judged this time."""


Traffic = dict[str, VersionStats]  # version (as text) -> counts


class MetricsSource(Protocol):
    def begin(self, model: str) -> None:
        """An interval of ``model`` starts now."""

    def traffic(self, model: str, seconds: float) -> Traffic | None:
        """Counts per version since ``begin`` (``seconds`` ago); None without a baseline.
        Raises SourceError."""


def _add_sample(stats: Traffic, sample_name: str, labels: dict[str, str], value: float) -> None:
    """Fold one sample of the service's metrics into ``stats`` (already one model's)."""
    version = labels.get("version", "")
    if not version:
        return
    entry = stats.setdefault(version, VersionStats())
    if sample_name == "imgcls_model_info":
        entry.served = bool(entry.served) or value > 0
    elif sample_name == "imgcls_requests_total":
        entry.requests += value
        if is_server_error(labels.get("code", "")):
            entry.server_errors += value
    elif sample_name == "imgcls_request_duration_seconds_bucket":
        bound = float(labels["le"])
        entry.duration_buckets[bound] = entry.duration_buckets.get(bound, 0.0) + value
    elif sample_name == "imgcls_prediction_confidence_sum":
        entry.confidence_sum += value
    elif sample_name == "imgcls_prediction_confidence_count":
        entry.confidence_count += value
    elif sample_name == "imgcls_feedback_total":
        outcome = labels.get("outcome")
        if outcome == "correct":
            entry.feedback_correct += value
        elif outcome == "wrong":
            entry.feedback_wrong += value


_WANTED = frozenset(
    {
        "imgcls_requests_total",
        "imgcls_request_duration_seconds_bucket",
        "imgcls_prediction_confidence_sum",
        "imgcls_prediction_confidence_count",
        "imgcls_feedback_total",
    }
)
#: Whether a replica serves a version: a gauge labelled ``name`` (not ``model``), read as is.
_SERVED = "imgcls_model_info"

SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]  # url, sample name, labels


def _http_get(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SourceError(f"cannot read {url}: {exc}") from None


class ScrapeSource:
    """Reads each replica's ``/metrics`` directly; the increase of a counter is the difference
    of two scrapes (a counter that went down is a restarted replica: its new value is the
    increase, as Prometheus's ``increase`` counts it)."""

    def __init__(self, urls: Iterable[str], fetch: Callable[[str], str] = _http_get) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self._fetch = fetch
        self._baselines: dict[str, dict[SampleKey, float]] = {}

    def _scrape(self, model: str) -> tuple[dict[SampleKey, float], dict[str, bool]]:
        """Every wanted sample of ``model`` by replica, and the versions some replica serves."""
        samples: dict[SampleKey, float] = {}
        served: dict[str, bool] = {}
        failures = []
        for url in self.urls:
            target = url if url.endswith("/metrics") else url + "/metrics"
            try:
                text = self._fetch(target)
            except SourceError as exc:
                failures.append(str(exc))
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == _SERVED and sample.labels.get("name") == model:
                        served[sample.labels.get("version", "")] = True
                        continue
                    if sample.name not in _WANTED or sample.labels.get("model") != model:
                        continue
                    if EXCLUDED_ROUTES.fullmatch(sample.labels.get("route", "")):
                        continue
                    key = (url, sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = float(sample.value)
        if failures:
            # A replica that cannot be read would make its traffic look like none: judge later.
            raise SourceError("; ".join(failures))
        return samples, served

    def begin(self, model: str) -> None:
        try:
            self._baselines[model] = self._scrape(model)[0]
        except SourceError as exc:
            logger.warning("no baseline for %s yet: %s", model, exc)
            self._baselines.pop(model, None)

    def traffic(self, model: str, seconds: float) -> Traffic | None:
        baseline = self._baselines.get(model)
        if baseline is None:
            self.begin(model)
            return None
        now, served = self._scrape(model)
        stats: Traffic = {}
        for version in served:
            _add_sample(stats, _SERVED, {"version": version}, 1.0)
        for key, value in now.items():
            before = baseline.get(key, 0.0)
            increase = value - before if value >= before else value
            _url, name, labels = key
            _add_sample(stats, name, dict(labels), increase)
        return stats


def _quote(value: str) -> str:
    return json.dumps(value)  # PromQL string literals take JSON's escapes


class PrometheusSource:
    """Asks Prometheus (``/api/v1/query``) for each counter's ``increase`` over the interval,
    summed over replicas by version."""

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], str] = _http_get,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self._fetch = fetch
        self._clock = clock

    def begin(self, model: str) -> None:
        """Prometheus keeps the history: nothing to remember."""

    def _query(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        query = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        text = self._fetch(f"{self.url}/api/v1/query?{query}")
        try:
            body = json.loads(text)
            if body.get("status") != "success":
                raise SourceError(f"Prometheus refused {promql!r}: {body.get('error')}")
            results = body["data"]["result"]
            return [(row["metric"], float(row["value"][1])) for row in results]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise SourceError(f"unexpected answer from {self.url}: {exc}") from None

    def traffic(self, model: str, seconds: float) -> Traffic | None:
        window = max(1, round(seconds))
        at = self._clock()
        selector = f"model={_quote(model)}"
        routes = f'route!~"{EXCLUDED_ROUTES.pattern}"'
        queries = {
            "imgcls_requests_total": (
                f"sum by (version, code) (increase(imgcls_requests_total"
                f"{{{selector},{routes}}}[{window}s]))"
            ),
            "imgcls_request_duration_seconds_bucket": (
                f"sum by (version, le) (increase(imgcls_request_duration_seconds_bucket"
                f"{{{selector},{routes}}}[{window}s]))"
            ),
            "imgcls_prediction_confidence_sum": (
                f"sum by (version) (increase(imgcls_prediction_confidence_sum"
                f"{{{selector}}}[{window}s]))"
            ),
            "imgcls_prediction_confidence_count": (
                f"sum by (version) (increase(imgcls_prediction_confidence_count"
                f"{{{selector}}}[{window}s]))"
            ),
            "imgcls_feedback_total": (
                f"sum by (version, outcome) (increase(imgcls_feedback_total"
                f"{{{selector}}}[{window}s]))"
            ),
        }
        queries[_SERVED] = f"max by (version) (imgcls_model_info{{name={_quote(model)}}})"
        stats: Traffic = {}
        for name, promql in queries.items():
            for labels, value in self._query(promql, at):
                if math.isnan(value):
                    continue
                _add_sample(stats, name, labels, value)
        return stats
