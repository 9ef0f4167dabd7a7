"""The app factory: ``create_app(settings)``; the lifespan loads the model and runs the batcher.

Nothing heavy happens at import or in ``create_app``: TensorFlow is imported when the lifespan
loads the first version, in a thread, while ``/healthz`` already answers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from service.batching import Batcher
from service.errors import ClientError
from service.inference import make_batch_fn
from service.metrics import ServiceMetrics
from service.model_store import ModelStore
from service.routes import explain, health, metrics, models, page, predict, report
from service.server import CloseConnectionsWhileDraining
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger(__name__)

#: Route label values; anything else is "other" so scanners cannot blow up label cardinality.
KNOWN_ROUTES = frozenset(
    {"/predict", "/explain", "/healthz", "/readyz", "/models", "/metrics", "/"}
)

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RequestMetricsMiddleware:
    """Counts every answer by route and status code and times it (a pure ASGI middleware:
    cheaper than BaseHTTPMiddleware on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(route=route, code=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(time.perf_counter() - started)


class BatcherMetrics:
    """Adapts :class:`ServiceMetrics` to the batcher's observer hooks."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth.set(depth)

    def batch_started(self, size: int, queue_waits_s: Any) -> None:
        self._metrics.batch_started(size, queue_waits_s)

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        self._metrics.batch_finished(size, duration_s, error)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(reason=reason).inc()


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
        store = ModelStore(
            settings.model_dir,
            repository_root=settings.models_dir,
            poll_interval_s=settings.poll_interval_s,
            max_batch_size=settings.max_batch_size,
            on_swap=lambda model: service_metrics.set_serving_model(model.name, model.version),
            on_reload=lambda result: service_metrics.model_reloads.labels(result=result).inc(),
        )
        batcher = Batcher(
            make_batch_fn(store),
            max_batch_size=settings.max_batch_size,
            batch_timeout_s=settings.batch_timeout_s,
            max_queue_size=settings.max_queue_size,
            observer=BatcherMetrics(service_metrics),
            name="model",
        )
        decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        state = ServiceState(settings, service_metrics, store, batcher, decode_pool)
        app.state.service = state
        await batcher.start()
        await store.start()
        logger.info("serving %s from %s", settings.model_name, settings.models_dir)
        try:
            yield
        finally:
            state.shutting_down = True
            service_metrics.model_ready.set(0)
            await batcher.stop(drain=True, timeout_s=settings.shutdown_grace_s)
            await store.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("stopped")

    app = FastAPI(
        title="imgcls",
        summary="Keras image classification: dynamic batching, hot reload, Prometheus metrics",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = service_metrics

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        if exc.reason is not None:
            service_metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the service log"},
            status_code=500,
        )

    for router in (
        predict.router,
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
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    app.add_middleware(CloseConnectionsWhileDraining)
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    return app
