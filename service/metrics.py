"""Prometheus metric definitions (names, types, labels and buckets from DESIGN's table).

One :class:`ServiceMetrics` per app, registered in its own ``CollectorRegistry`` so that tests
and several apps in one process never collide. With several uvicorn workers the service sets
``PROMETHEUS_MULTIPROC_DIR`` (wiped at start) and ``/metrics`` aggregates every worker's files
through ``MultiProcessCollector``; gauges declare how to combine processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.batching import ShuttingDownError

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
)
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


class ServiceMetrics:
    """Every metric of the service, plus the hooks the batcher and model store call."""

    def __init__(self, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgcls_requests", "HTTP requests answered.", ["route", "code"], registry=r
        )
        self.request_duration = Histogram(
            "imgcls_request_duration_seconds",
            "Time from request received to response sent.",
            ["route"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "imgcls_batch_size",
            "Images per model call.",
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.queue_wait = Histogram(
            "imgcls_batch_queue_wait_seconds",
            "Time an image waited in the queue before its batch ran.",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "imgcls_batch_queue_depth",
            "Images waiting for the model.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inference_duration = Histogram(
            "imgcls_inference_duration_seconds",
            "Duration of one model call (a whole batch).",
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.inference_errors = Counter(
            "imgcls_inference_errors",
            "Model calls that raised; each one fails every request of its batch (500).",
            registry=r,
        )
        self.predictions = Counter(
            "imgcls_predictions", "Images classified, by top-1 label.", ["label"], registry=r
        )
        self.confidence = Histogram(
            "imgcls_prediction_confidence",
            "Top-1 probability of each classified image.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "imgcls_rejected_requests",
            "Requests refused before or instead of inference, by reason.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "imgcls_model_info",
            "The serving model version (value 1).",
            ["name", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_ready = Gauge(
            "imgcls_model_ready",
            "1 when a model is loaded and warmed up, else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.model_reloads = Counter(
            "imgcls_model_reloads",
            "Model version loads, by result (success or failure).",
            ["result"],
            registry=r,
        )
        for reason in REJECTION_REASONS:  # export zeros so rate() works from the first scrape
            self.rejected.labels(reason=reason)
        for result in ("success", "failure"):
            self.model_reloads.labels(result=result)
        self.model_ready.set(0)
        self._serving: tuple[str, str] | None = None

    # --- hooks -------------------------------------------------------------------------------
    def set_serving_model(self, name: str, version: int) -> None:
        """Point imgcls_model_info at the new version and drop the old series."""
        if self._serving is not None:
            with contextlib.suppress(KeyError):
                self.model_info.remove(*self._serving)
        self._serving = (name, str(version))
        self.model_info.labels(name=name, version=str(version)).set(1)
        self.model_ready.set(1)

    def observe_predictions(self, labels: Sequence[str], confidences: Sequence[float]) -> None:
        for label, score in zip(labels, confidences, strict=True):
            self.predictions.labels(label=label).inc()
            self.confidence.observe(score)

    # BatchObserver protocol (service.batching)
    def queue_depth_changed(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        self.inference_duration.observe(duration_s)
        # A batch abandoned at shutdown is not a model failure.
        if error is not None and not isinstance(error, ShuttingDownError):
            self.inference_errors.inc()

    def rejected_request(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    # --- exposition ------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition for /metrics: this app's registry, or every worker's files."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate, path=path)
        return generate_latest(aggregate)
