"""Prometheus metric definitions (names, types, labels and buckets from DESIGN's table).

One :class:`ServiceMetrics` per app, registered in its own ``CollectorRegistry`` so that tests
and several apps in one process never collide. With several uvicorn workers the service sets
``PROMETHEUS_MULTIPROC_DIR`` (wiped at start) and ``/metrics`` aggregates every worker's files
through ``MultiProcessCollector``; gauges declare how to combine processes.

Series follow what is served, with any number of workers. One process removes a retired
version's, a removed label's or a removed model's series. prometheus_client cannot remove a
series from the files of multiprocess mode, so there a worker marks it instead: the state
gauges (``imgcls_model_info``, the label gauges) combine by their most recent write, and the
worker writes NaN; :func:`aggregate_registry` leaves out NaN gauge samples, and every sample of
a version that ``imgcls_model_info`` no longer lists (the per-version counters and histograms),
so the exposition matches the single-process one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

#: Seconds: sub-millisecond (a queue hop) to ten seconds (a deadline).
DURATION_BUCKETS_S = (
    0.0002,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Top-1 probability; fine steps at the top where a healthy model lives, 0.6 for the drift alert.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
#: Reasons of ``imgcls_rejected_requests_total`` (one count per refused HTTP request).
REJECTION_REASONS = (
    "queue_full",
    "deadline",
    "shutting_down",
    "no_model",
    "bad_request",
    "too_large",
    "unsupported",
    "unauthorized",
    "explain_busy",
    "body_timeout",
    "client_disconnected",
    "not_found",
    "unavailable",
)
#: ``code`` values of ``imgcls_requests_total`` that are the service's fault or its refusal
#: to take more, as 5xx are over HTTP: the gRPC status names of the calls on the gRPC port.
GRPC_SERVER_ERROR_CODES = (
    "INTERNAL",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "UNKNOWN",
    "DATA_LOSS",
)


def is_server_error(code: str) -> bool:
    """Whether a request's ``code`` label is a server error: 5xx, or its gRPC equivalent."""
    return code.startswith("5") or code in GRPC_SERVER_ERROR_CODES


#: Outcomes of ``imgcls_feedback_total`` (service.feedback.store's).
FEEDBACK_OUTCOMES = ("correct", "wrong", "new_class")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to and including ``max_batch_size``."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


#: The gauge whose samples say which (model, version) pairs are served.
MODEL_INFO = "imgcls_model_info"


def live_series(families: Iterable[Metric]) -> Iterator[Metric]:
    """``families`` without the series a worker retired (see the module docstring): gauge
    samples that are NaN, and samples of a ``model``/``version`` pair not in ``imgcls_model_info``.
    """
    collected = list(families)
    served = {
        (sample.labels.get("name"), sample.labels.get("version"))
        for family in collected
        if family.name == MODEL_INFO
        for sample in family.samples
        if not math.isnan(sample.value)
    }
    for family in collected:
        family.samples = [
            sample
            for sample in family.samples
            if not (family.type == "gauge" and math.isnan(sample.value))
            and (
                not sample.labels.get("version")
                or "model" not in sample.labels
                or (sample.labels["model"], sample.labels["version"]) in served
            )
        ]
        yield family


class LiveMultiProcessCollector:
    """Every worker's files (``MultiProcessCollector``), less the retired series."""

    def __init__(self, path: str) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterator[Metric]:
        return live_series(self._files.collect())


def aggregate_registry(path: str) -> CollectorRegistry:
    """A registry exposing every worker's metrics in the multiprocess folder ``path``."""
    registry = CollectorRegistry()
    registry.register(LiveMultiProcessCollector(path))
    return registry


class ServiceMetrics:
    """Every metric of the service, plus the hooks the batcher and model store call."""

    # Declarative table: every metric the service exports, declared here (longer than 80 lines
    # on purpose; one declaration per metric, nothing else).
    def __init__(self, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgcls_requests",
            "HTTP requests answered (one per request, whatever its number of images), by route "
            "template, status code, and the model and version that served it (empty when none "
            "did).",
            ["route", "code", "model", "version"],
            registry=r,
        )
        self.request_duration = Histogram(
            "imgcls_request_duration_seconds",
            "Seconds from a request received to its response sent, per HTTP request, by route "
            "template, model and version.",
            ["route", "model", "version"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "imgcls_batch_size",
            "Images per model call (one observation per batch), by model.",
            ["model"],
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.queue_wait = Histogram(
            "imgcls_batch_queue_wait_seconds",
            "Seconds an image waited in the queue before its batch ran (one observation per "
            "image), by model.",
            ["model"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "imgcls_batch_queue_depth",
            "Images queued for the model, not counting the running batch, by model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inference_duration = Histogram(
            "imgcls_inference_duration_seconds",
            "Seconds of one model call (one observation per batch, whatever its size), by model.",
            ["model"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.inference_errors = Counter(
            "imgcls_inference_errors",
            "Model calls (batches, not requests or images) that raised, whatever the cause (no "
            "model loaded included), by model; each fails every request with an image in that "
            "batch.",
            ["model"],
            registry=r,
        )
        self.predictions = Counter(
            "imgcls_predictions",
            "Images classified and answered (one per image, not per request), by model, version "
            "and top-1 label.",
            ["model", "version", "label"],
            registry=r,
        )
        self.confidence = Histogram(
            "imgcls_prediction_confidence",
            "Top-1 probability of each classified image (one observation per image), by model "
            "and version.",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "imgcls_rejected_requests",
            "HTTP requests refused before or instead of inference (one per request, whatever "
            "its number of images), by reason.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "imgcls_model_info",
            "Every served model version (value 1), the runtime that computes it (savedmodel or "
            "a compiled artifact) and why not the one asked for (fallback; '' when it got it).",
            ["name", "version", "runtime", "fallback"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.model_ready = Gauge(
            "imgcls_model_ready",
            "1 when the default model has a loaded, warmed-up version, else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.model_reloads = Counter(
            "imgcls_model_reloads",
            "Model version loads (one per version load attempt), by result (success or failure).",
            ["result"],
            registry=r,
        )
        for reason in REJECTION_REASONS:  # export zeros so rate() works from the first scrape
            self.rejected.labels(reason=reason)
        for result in ("success", "failure"):
            self.model_reloads.labels(result=result)
        self.model_ready.set(0)
        self.version_labels = Gauge(
            "imgcls_version_label_info",
            "Version labels of serving.yaml (value 1): which version each label names.",
            ["model", "version_label", "version"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.version_label_weight = Gauge(
            "imgcls_version_label_weight",
            "Share (0..1) of a model's unpinned requests that a version label takes.",
            ["model", "version_label"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.serving_config_valid = Gauge(
            "imgcls_serving_config_valid",
            "1 while serving.yaml is absent or valid, 0 while the last read was invalid (the "
            "last good configuration keeps serving).",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.serving_config_valid.set(1)
        self.feedback = Counter(
            "imgcls_feedback",
            "Labelled examples received as feedback (one per image), by model, the version that "
            "answered, and outcome: correct, wrong (the answer was another class), new_class "
            "(a class the model does not know; no accuracy counted).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.test_accuracy = Gauge(
            "imgcls_model_test_accuracy",
            "Accuracy (0..1) of each served version on its held-out test split, from its "
            "metadata.json: what live accuracy from feedback is compared with.",
            ["model", "version"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.drift = Gauge(
            "imgcls_prediction_drift",
            "Jensen-Shannon distance (0..1) between a version's latest predictions "
            "(IMGCLS_DRIFT_WINDOW) and what it predicted on its test split at publish, by kind: "
            "class (predicted classes) or confidence (top-1 probability histogram). Absent "
            "without a baseline or before 100 predictions.",
            ["model", "version", "kind"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.captured_samples = Counter(
            "imgcls_captured",
            "Inference inputs stored for feedback (one per image), by model.",
            ["model"],
            registry=r,
        )
        self.capture_skipped_samples = Counter(
            "imgcls_capture_skipped",
            "Inference inputs sampled for capture but not stored, by model and reason: "
            "queue_full (the writer is behind), write_error (the folder cannot be written), "
            "duplicate_id (a client reused its X-Request-Id on one worker), over_budget (one "
            "sample larger "
            "than IMGCLS_CAPTURE_MAX_BYTES).",
            ["model", "reason"],
            registry=r,
        )
        self.capture_disk_bytes = Gauge(
            "imgcls_capture_bytes",
            "Bytes of captured inputs and their records on disk, by model, all workers (at "
            "most IMGCLS_CAPTURE_MAX_BYTES, past it for up to a second).",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.capture_writable_state = Gauge(
            "imgcls_capture_writable",
            "1 while captured inputs are written (or capture is off), 0 while writes fail (full "
            "disk, unwritable folder): capture pauses, the service keeps serving.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.capture_writable_state.set(1)
        # Label sets exported per served (model, version), so retired versions' series go.
        self._served: set[tuple[str, str]] = set()
        #: (name, version) -> the label values of its imgcls_model_info series.
        self._model_info_labels: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._labels: set[tuple[str, str, str]] = set()
        self._weights: set[tuple[str, str]] = set()
        self._models: set[str] = set()
        self._per_version: dict[tuple[str, str], set[tuple[Any, tuple[str, ...]]]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    # --- hooks -------------------------------------------------------------------------------
    def request_finished(
        self, route: str, code: str, model: str, version: str, duration_s: float
    ) -> None:
        """Count one answered HTTP request and time it (seconds)."""
        self._child(self.requests, (route, code, model, version), model, version).inc()
        self._child(self.request_duration, (route, model, version), model, version).observe(
            duration_s
        )

    def _child(self, metric: Any, labels: tuple[str, ...], model: str, version: str) -> Any:
        """``metric.labels(*labels)``, cached: the lookup is a dict hit on the hot path instead
        of prometheus_client's validation and lock (about 4 µs each). A child of a served
        version (``model`` set) is remembered so that retiring the version drops its series."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
            if model:
                self._per_version.setdefault((model, version), set()).add(key)
        return child

    def set_served_models(self, repository: Any) -> None:
        """Export the served versions, labels and config health of ``repository`` (a
        ``service.serving.repository.ModelRepository``), dropping series of versions gone."""
        served = {
            (name, str(version))
            for name, model in repository.models.items()
            for version in model.store.served
        }
        for key in self._served - served:
            self._drop(self.model_info, self._model_info_labels.pop(key, (*key, "", "")))
            for metric, label_values in self._per_version.pop(key, set()):
                self._children.pop((metric, label_values), None)
                if multiprocess_dir() is None:  # else: left out by live_series at scrape
                    with contextlib.suppress(KeyError):
                        metric.remove(*label_values)
        for name, version in served - self._served:
            loaded = repository.models[name].store.served[int(version)]
            runtime = getattr(loaded, "runtime", None)
            labels = (
                name,
                version,
                runtime.name if runtime is not None else "savedmodel",
                runtime.fallback if runtime is not None else "",
            )
            self._model_info_labels[(name, version)] = labels
            self.model_info.labels(*labels).set(1)
            self._version_added(name, version, loaded.metadata.metrics.get("test_accuracy"))
        self._served = served
        models = set(repository.models)
        for removed in self._models - models:
            self._children.pop((self.queue_depth, (removed,)), None)
            self._drop(self.queue_depth, (removed,))
        self._models = models
        version_labels = {
            (name, label, str(target.version))
            for name, model in repository.models.items()
            for label, target in model.config.labels.items()
        }
        weights = {
            (name, label): target.weight
            for name, model in repository.models.items()
            for label, target in model.config.labels.items()
        }
        for gone in self._labels - version_labels:
            self._drop(self.version_labels, gone)
        for new in version_labels - self._labels:
            self.version_labels.labels(*new).set(1)
        for old in self._weights - set(weights):
            self._drop(self.version_label_weight, old)
        for pair, weight in weights.items():
            self.version_label_weight.labels(*pair).set(weight)
        self._labels, self._weights = version_labels, set(weights)
        default = repository.default
        self.model_ready.set(1 if default is not None and default.ready else 0)
        self.serving_config_valid.set(0 if repository.config_watcher.problem else 1)

    def _version_added(self, model: str, version: str, test_accuracy: float | None) -> None:
        """Export a newly served version's test accuracy, and its feedback counts at 0 (an
        alert's rate() needs the series before the first feedback)."""
        if test_accuracy is not None:
            self._child(self.test_accuracy, (model, version), model, version).set(test_accuracy)
        for outcome in FEEDBACK_OUTCOMES:
            self._child(self.feedback, (model, version, outcome), model, version)

    def feedback_received(self, model: str, version: str, outcome: str) -> None:
        """Count one labelled example of a served version (a retired one's is not exported)."""
        if (model, version) in self._served:
            self._child(self.feedback, (model, version, outcome), model, version).inc()

    def set_drift(self, distances: dict[tuple[str, str, str], float]) -> None:
        """Export (model, version, kind) -> drift distance, for served versions."""
        for (model, version, kind), value in distances.items():
            if (model, version) in self._served:
                self._child(self.drift, (model, version, kind), model, version).set(value)

    # CaptureObserver protocol (service.feedback.capture); called from the writer thread
    def captured(self, model: str, count: int = 1) -> None:
        self.captured_samples.labels(model).inc(count)

    def capture_skipped(self, model: str, reason: str, count: int = 1) -> None:
        self.capture_skipped_samples.labels(model, reason).inc(count)

    def capture_bytes(self, model: str, size: int) -> None:
        self.capture_disk_bytes.labels(model).set(size)

    def capture_writable(self, writable: bool) -> None:
        self.capture_writable_state.set(1 if writable else 0)

    def observe_predictions(
        self, model: str, version: str, labels: Sequence[str], confidences: Sequence[float]
    ) -> None:
        """Count each image's top-1 label and observe its top-1 probability."""
        confidence = self._child(self.confidence, (model, version), model, version)
        for label, score in zip(labels, confidences, strict=True):
            self._child(self.predictions, (model, version, label), model, version).inc()
            confidence.observe(score)

    # BatchObserver protocol (service.serving.batching), per model
    def queue_depth_changed(self, model: str, depth: int) -> None:
        self._child(self.queue_depth, (model,), "", "").set(depth)

    def batch_started(self, model: str, size: int, queue_waits_s: Sequence[float]) -> None:
        self._child(self.batch_size, (model,), "", "").observe(size)
        wait = self._child(self.queue_wait, (model,), "", "")
        for seconds in queue_waits_s:
            wait.observe(seconds)

    def batch_finished(self, model: str, size: int, duration_s: float, failed: bool) -> None:
        """One model call of ``size`` images took ``duration_s`` seconds; ``failed``: it raised
        (a batch abandoned at shutdown is not a failure: the caller says which is which)."""
        self._child(self.inference_duration, (model,), "", "").observe(duration_s)
        if failed:
            self.inference_errors.labels(model).inc()

    def model_added(self, model: str) -> None:
        """Export ``model``'s failure count at 0 from the start: an alert on its rate needs a
        series before the first failure."""
        self.inference_errors.labels(model)

    def rejected_request(self, reason: str) -> None:
        """Count ONE refused HTTP request (whatever its number of images)."""
        self.rejected.labels(reason=reason).inc()

    @staticmethod
    def _drop(gauge: Gauge, label_values: tuple[str, ...]) -> None:
        """Remove one series of ``gauge``; with several workers, mark it NaN instead (its file
        entry cannot be removed; :func:`live_series` leaves it out)."""
        if multiprocess_dir() is not None:
            gauge.labels(*label_values).set(math.nan)
            return
        with contextlib.suppress(KeyError):
            gauge.remove(*label_values)

    # --- exposition ------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition for /metrics: this app's registry, or every worker's files."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        return generate_latest(aggregate_registry(path))
