"""The app factory: ``create_app(settings)``; the lifespan loads the model and runs the batcher.

Nothing heavy happens at import or in ``create_app``: TensorFlow is imported when the lifespan
loads the first version, in a thread, while ``/healthz`` already answers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.cors import JSONCORSMiddleware
from service.errors import ClientError
from service.metrics import ServiceMetrics
from service.middleware import CloseConnectionsWhileDraining, RequestMetricsMiddleware
from service.protocols import error_body
from service.repository import ModelRepository
from service.routes import explain, health, metrics, models, page, predict, report, tfserving, v2
from service.settings import Settings
from service.state import ServiceState
from service.worker_report import report_when_ready

logger = logging.getLogger(__name__)


class BatcherMetrics:
    """Adapts :class:`ServiceMetrics` to one model's batcher observer hooks."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model

    def queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth_changed(self._model, depth)

    def batch_started(self, size: int, queue_waits_s: Any) -> None:
        self._metrics.batch_started(self._model, size, queue_waits_s)

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        self._metrics.batch_finished(self._model, size, duration_s, error)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected_request(reason)  # the batcher calls it once per refused request


def configure_tensorflow_threads(settings: Settings) -> None:
    """Apply the TF thread-pool sizes; only possible before TensorFlow's runtime starts."""
    if not (settings.tf_intra_op_threads or settings.tf_inter_op_threads):
        return
    import tensorflow as tf

    try:
        if settings.tf_intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(settings.tf_intra_op_threads)
        if settings.tf_inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)
    except RuntimeError:
        logger.warning("TensorFlow was already initialised; thread settings not applied")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. ``settings`` default to the environment (``IMGCLS_*``)."""
    settings = settings if settings is not None else Settings()
    service_metrics = ServiceMetrics(settings.max_batch_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_tensorflow_threads(settings)
        # The model thread needs the GIL back after each call; see BENCHMARKS.md.
        sys.setswitchinterval(settings.gil_switch_interval_s)
        repository = ModelRepository(
            settings,
            observer_for=lambda name: BatcherMetrics(service_metrics, name),
            on_change=service_metrics.set_served_models,
            on_reload=lambda result: service_metrics.model_reloads.labels(result=result).inc(),
        )
        decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        state = ServiceState(settings, service_metrics, repository, decode_pool)
        app.state.service = state
        await repository.start()
        logger.info(
            "serving every model of %s (default: %s)", settings.models_dir, settings.model_name
        )
        # The supervisor's probe worker reports what its default model costs (others: no-op).
        report = asyncio.create_task(report_when_ready(state), name="worker-report")
        try:
            yield
        finally:
            report.cancel()
            state.shutting_down = True
            service_metrics.model_ready.set(0)
            await repository.stop(timeout_s=settings.shutdown_grace_s)
            decode_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    app = FastAPI(
        title="imgcls",
        summary="Keras image classification: dynamic batching, hot reload, Prometheus metrics",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = service_metrics

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Every refusal (ours, and Starlette's own 404/405) in the shape the route's protocol
        # promises, so a TF Serving or Triton client can read it too.
        if isinstance(exc, ClientError) and exc.reason is not None:
            service_metrics.rejected_request(exc.reason)  # one per request
        return JSONResponse(
            error_body(request.url.path, str(exc.detail)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body(
                request.url.path, f"internal error ({type(exc).__name__}); see the service log"
            ),
            status_code=500,
        )

    for router in (
        predict.router,
        tfserving.router,
        v2.router,
        health.router,
        models.router,
        metrics.router,
        explain.router,
        report.router,
        page.router,
    ):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    app.add_middleware(CloseConnectionsWhileDraining)
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    return app
