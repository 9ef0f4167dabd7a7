"""The bare references: what a user would write instead of this service, in a dozen lines.

A minimal FastAPI app on uvicorn with uvloop and httptools, one worker, uvicorn's default
options, an ``UploadFile`` parameter, and Pillow's ``open -> convert("RGB") -> resize`` to the
model input on the event loop. None of the service's protocol guard, middleware, limits or
metrics; it imports nothing from ``service/`` (a reference is what a user would otherwise run).

* ``BENCH_BARE_MODE=ceiling`` (the **bare ceiling**): then a constant small JSON answer, no
  model;
* ``BENCH_BARE_MODE=unbatched`` (the **bare unbatched** app): then one SavedModel ``serve``
  call per request in the thread pool (``run_in_threadpool``), and the top-1 class as answer.

Settings from the environment: ``IMGCLS_HOST``/``IMGCLS_PORT`` (where to listen, as the other
bench servers), ``BENCH_TARGET_SIZE=H,W`` (the model input to resize to), ``BENCH_MODEL_DIR``
(a published version folder, ``models/<name>/<version>``; the unbatched mode only).
``python -m bench.bare_app``.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

MODE_ENV = "BENCH_BARE_MODE"
TARGET_SIZE_ENV = "BENCH_TARGET_SIZE"
MODEL_DIR_ENV = "BENCH_MODEL_DIR"
MODES = ("ceiling", "unbatched")
#: The ceiling's answer: small, constant, the shape of a top-1 result.
CONSTANT_ANSWER = {"label": "7", "score": 0.962}

Upload = Annotated[UploadFile, File()]


def _target_size() -> tuple[int, int]:
    height, width = (int(part) for part in os.environ.get(TARGET_SIZE_ENV, "28,28").split(","))
    return height, width


def prepare(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Decode, RGB, resize to ``size`` (height, width): float32 (1, H, W, 3) in 0..255, what
    the SavedModel's ``serve`` takes."""
    height, width = size
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
    return np.asarray(image, dtype=np.float32)[None, ...]


def create_app(mode: str | None = None) -> FastAPI:
    """The bare app in ``mode`` (default from ``BENCH_BARE_MODE``, else ``ceiling``)."""
    mode = mode or os.environ.get(MODE_ENV, "ceiling")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV} must be one of {MODES}, got {mode!r}")
    size = _target_size()
    model: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mode == "unbatched":
            import tensorflow as tf

            version_dir = Path(os.environ[MODEL_DIR_ENV])
            loaded = tf.saved_model.load(str(version_dir))
            metadata = json.loads((version_dir / "metadata.json").read_text())
            for batch in (1, 1, 1):  # trace and warm the batch-1 path
                loaded.serve(tf.zeros((batch, *size, 3), tf.float32))
            model.update(serve=loaded.serve, names=metadata["class_names"], tf=tf)
        yield

    app = FastAPI(title=f"bare {mode}", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if mode == "ceiling":

        @app.post("/predict")
        async def predict_constant(file: Upload) -> dict[str, Any]:
            prepare(await file.read(), size)
            return CONSTANT_ANSWER

    else:

        @app.post("/predict")
        async def predict(file: Upload) -> dict[str, Any]:
            batch = prepare(await file.read(), size)
            tf = model["tf"]
            probabilities = await run_in_threadpool(
                lambda: model["serve"](tf.constant(batch)).numpy()[0]
            )
            best = int(probabilities.argmax())
            return {"label": model["names"][best], "score": float(probabilities[best])}

    return app


def main() -> int:
    """Serve with uvicorn's defaults: one worker, uvloop, httptools."""
    import uvicorn

    uvicorn.run(
        create_app(),
        host=os.environ.get("IMGCLS_HOST", "127.0.0.1"),
        port=int(os.environ.get("IMGCLS_PORT", "8000")),
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level=os.environ.get("IMGCLS_LOG_LEVEL", "warning"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
