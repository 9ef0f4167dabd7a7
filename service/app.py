"""The app factory: ``create_app(settings)``; the lifespan loads the model and runs the batcher.

Nothing heavy happens at import or in ``create_app``: TensorFlow is imported when the lifespan
loads the first version, in a thread, while ``/healthz`` already answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.tf_log import import_tensorflow_filtered, on_first_import
from service.feedback.ids import REQUEST_ID_HEADER
from service.http.cors import JSONCORSMiddleware
from service.http.errors import ClientError, client_error, error_body
from service.http.middleware import (
    SCOPE_REQUEST_ID,
    CloseConnectionsWhileDraining,
    RequestMetricsMiddleware,
)
from service.metrics import ServiceMetrics
from service.routes import (
    explain,
    feedback,
    health,
    metrics,
    models,
    page,
    predict,
    report,
    tfserving,
    v2,
)
from service.serving.batching import ShuttingDownError
from service.serving.errors import ServingError
from service.serving.repository import ModelRepository
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger(__name__)


class BatcherMetrics:
    """Adapts :class:`ServiceMetrics` to one model's batcher observer hooks."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model
        metrics.model_added(model)

    def queue_depth(self, depth: int) -> None:
        self._metrics.queue_depth_changed(self._model, depth)

    def batch_started(self, size: int, queue_waits_s: Any) -> None:
        self._metrics.batch_started(self._model, size, queue_waits_s)

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        # A batch abandoned at shutdown is not a model failure.
        failed = error is not None and not isinstance(error, ShuttingDownError)
        self._metrics.batch_finished(self._model, size, duration_s, failed)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected_request(reason)  # the batcher calls it once per refused request


def configure_tensorflow_threads(settings: Settings) -> None:
    """Apply the TF thread-pool sizes as soon as TensorFlow is imported (by the first model
    load, or the background import), before its runtime starts: registering them imports
    nothing, so the server starts taking connections without waiting for TensorFlow."""
    if settings.tf_intra_op_threads or settings.tf_inter_op_threads:
        on_first_import(lambda: _apply_tensorflow_threads(settings))


def _apply_tensorflow_threads(settings: Settings) -> None:
    import tensorflow as tf

    try:
        if settings.tf_intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(settings.tf_intra_op_threads)
        if settings.tf_inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)
    except RuntimeError:
        logger.warning("TensorFlow was already initialised; thread settings not applied")


#: A task the lifespan runs beside the service once its state exists (cancelled at shutdown).
BackgroundTask = Callable[[ServiceState], Coroutine[Any, Any, None]]


def create_app(
    settings: Settings | None = None,
    *,
    startup: Sequence[BackgroundTask] = (),
    background: Sequence[BackgroundTask] = (),
) -> FastAPI:
    """Build the app. ``settings`` default to the environment (``IMGCLS_*``). The process
    layer's hooks: ``startup`` coroutines are awaited once the repository has started, before
    the server takes connections (e.g. waiting for the models); ``background`` tasks then run
    beside the service (e.g. the cost report)."""
    settings = settings if settings is not None else Settings()
    service_metrics = ServiceMetrics(settings.max_batch_size)
    app = FastAPI(
        title="imgcls",
        summary="Keras image classification: dynamic batching, hot reload, Prometheus metrics",
        version="0.1.0",
        lifespan=_lifespan(settings, service_metrics, startup, background),
    )
    app.state.metrics = service_metrics
    _add_error_handlers(app, settings, service_metrics)
    # The inference routes first: Starlette tries the routers in order, and each router passed
    # costs a request 3-10 µs of path matching (V2 infer behind three: ~25 µs, BENCHMARKS.md,
    # issue 23's lever 6). No two routers match the same method and path, so order is free.
    for router in (
        v2.infer_router,
        predict.router,
        tfserving.predict_router,
        tfserving.router,
        v2.router,
        health.router,
        models.router,
        metrics.router,
        explain.router,
        feedback.router,
        report.router,
        page.router,
    ):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(CloseConnectionsWhileDraining)
    app.add_middleware(
        RequestMetricsMiddleware, metrics=service_metrics, access_log=settings.access_log
    )
    return app


#: Seconds between two computations of the drift gauges.
DRIFT_EXPORT_INTERVAL_S = 1.0


async def export_drift(state: ServiceState) -> None:
    """Every :data:`DRIFT_EXPORT_INTERVAL_S`: forget retired versions' windows, and export the
    served versions' drift distances (computed here, never on the request path)."""
    while True:
        await asyncio.sleep(DRIFT_EXPORT_INTERVAL_S)
        served = [
            (name, str(version))
            for name, model in state.repository.models.items()
            for version in model.store.served
        ]
        state.drift.retain(served)
        state.metrics.set_drift(state.drift.distances())


def _lifespan(
    settings: Settings,
    service_metrics: ServiceMetrics,
    startup: Sequence[BackgroundTask],
    background: Sequence[BackgroundTask],
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The lifespan: load the repository (and start its batchers), run, then drain."""

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
        state.capture.start()
        if settings.capture_rate > 0:
            logger.info(
                "capturing %g of inference inputs into %s",
                settings.capture_rate,
                settings.capture_dir,
            )
        logger.info(
            "serving every model of %s (default: %s)", settings.models_dir, settings.model_name
        )
        for hook in startup:
            await hook(state)
        grpc_server = await _start_grpc(state)
        tasks = [
            asyncio.create_task(task(state), name=task.__name__)
            for task in (*background, export_drift)
        ]
        try:
            yield
        finally:
            for running in tasks:
                running.cancel()
            state.shutting_down = True
            service_metrics.model_ready.set(0)
            if grpc_server is not None:
                # New calls are refused (UNAVAILABLE) from here; those in flight finish first.
                await grpc_server.stop(settings.shutdown_grace_s)
            await repository.stop(timeout_s=settings.shutdown_grace_s)
            decode_pool.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(state.capture.stop)  # writes what was already queued
            state.feedback_runner.shutdown()
            logger.info("stopped")

    return lifespan


async def _start_grpc(state: ServiceState) -> Any:
    """The gRPC server on ``GRPC_PORT`` (None when it is off). Imported here: its protocol
    modules import TensorFlow's messages, so TensorFlow is imported first, through the one
    import that every thread waits for (a background import may be half way: importing its
    modules from here at the same time would see them half initialised)."""
    settings = state.settings
    if settings.grpc_port is None:
        return None
    await asyncio.to_thread(import_tensorflow_filtered)
    from service.grpc.server import GrpcServer

    server = GrpcServer(state, shared_port=settings.worker_count > 1)
    state.extras["grpc_port"] = await server.start(settings.host, settings.grpc_port)
    return server


def _add_error_handlers(app: FastAPI, settings: Settings, service_metrics: ServiceMetrics) -> None:
    """Every refusal answered once, here: domain errors through the edge table
    (:data:`service.http.errors.ANSWERS`), HTTP errors as they are, anything else as a 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Every refusal (ours, and Starlette's own 404/405) in the shape the route's protocol
        # promises, so a TF Serving or Triton client can read it too.
        if isinstance(exc, ClientError) and exc.reason is not None:
            service_metrics.rejected_request(exc.reason)  # one per request
        return JSONResponse(
            error_body(request.url.path, str(exc.detail), request.scope.get(SCOPE_REQUEST_ID)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(ServingError)
    async def refused(request: Request, exc: ServingError) -> JSONResponse:
        return await http_error(request, client_error(exc, retry_after_s=settings.retry_after_s))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        request_id = request.scope.get(SCOPE_REQUEST_ID)
        # Starlette answers this one from its outermost middleware, past the request-id
        # middleware's send: the header is set here.
        return JSONResponse(
            error_body(
                request.url.path,
                f"internal error ({type(exc).__name__}); see the service log",
                request_id,
            ),
            status_code=500,
            headers={REQUEST_ID_HEADER: request_id} if request_id else None,
        )
