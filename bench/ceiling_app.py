"""The own-stack HTTP ceiling: the service's stack with no model, answering a constant prediction.

Same server (uvicorn with the service's config and guarded HTTP protocol), same framework
(FastAPI), same middleware (request metrics, drain), and the service's own upload reading
(:func:`service.http.uploads.read_uploads`: body limits and timeout, multipart parsing) and
decoding (:func:`service.serving.decode_step.decode_all`: sniffing, Pillow decode, resize to the
model's input), then a constant top-5 per image rendered the same way. It imports lower layers
of the service only, never a route module. What it leaves out is exactly what batching can
change: the queue, the model thread and the model call (and the disconnect watch around them).
So the service can approach this rate but not pass it (at the same worker count).

``python -m bench.ceiling_app``; settings from ``IMGCLS_*`` like the service (port, workers,
decode threads, limits) and ``BENCH_TARGET_SIZE=H,W`` (the model input to resize to).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.http.errors import ClientError
from service.http.middleware import CloseConnectionsWhileDraining, RequestMetricsMiddleware
from service.http.uploads import UploadLimits, read_uploads
from service.metrics import ServiceMetrics
from service.serving.decode_step import decode_all
from service.serving.inference import top_k
from service.settings import Settings

TARGET_SIZE_ENV = "BENCH_TARGET_SIZE"
CLASS_NAMES = [str(i) for i in range(10)]
#: A fixed, plausible probability vector: the answer has the service's size and shape.
CONSTANT_PROBABILITIES = np.array(
    [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.962, 0.006, 0.004], dtype=np.float32
)


@dataclass
class _State:
    """What the route needs at run time: the decode pool (made in the lifespan)."""

    decode_pool: ThreadPoolExecutor


def _target_size() -> tuple[int, int]:
    height, width = (int(part) for part in os.environ.get(TARGET_SIZE_ENV, "28,28").split(","))
    return height, width


def create_app() -> FastAPI:
    """The ceiling app; a factory so that uvicorn's worker processes can build it too."""
    settings = Settings()
    input_size = _target_size()
    limits = UploadLimits(
        max_body_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_images=settings.max_images_per_request,
    )
    metrics = ServiceMetrics(settings.max_batch_size)
    holder: dict[str, _State] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        holder["state"] = _State(pool)
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="imgcls HTTP ceiling", lifespan=lifespan)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        uploads = await read_uploads(request, limits)
        arrays = await decode_all(
            uploads,
            input_size,
            holder["state"].decode_pool,
            max_pixels=settings.max_pixels,
            inline_max_pixels=settings.inline_decode_max_pixels,
        )
        ranked = top_k(CONSTANT_PROBABILITIES, CLASS_NAMES, 5)
        results = [
            {"filename": upload.filename, "predictions": ranked}
            for upload, _ in zip(uploads, arrays, strict=True)
        ]
        metrics.observe_predictions(
            "ceiling", "1", [ranked[0]["label"]] * len(results), [ranked[0]["score"]] * len(results)
        )
        return JSONResponse({"model": {"name": "ceiling", "version": 1}, "results": results})

    app.add_middleware(CloseConnectionsWhileDraining)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def main() -> int:
    """Serve with the options ``python -m service`` uses: its uvicorn config class and guarded
    HTTP protocol, no access log, uvloop and httptools."""
    import uvicorn

    from service.http.server import ServiceConfig, uvicorn_options

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper())
    common = uvicorn_options(settings)
    if settings.worker_count > 1:
        from uvicorn.supervisors import Multiprocess

        config = ServiceConfig(
            "bench.ceiling_app:create_app", factory=True, workers=settings.worker_count, **common
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(ServiceConfig(create_app(), **common)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
