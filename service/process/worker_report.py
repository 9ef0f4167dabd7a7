"""What the supervisor's probe worker reports once its default model is warm: how long the
model takes per image (:mod:`service.process.supervisor` decides from it how many workers pay off).

A file per worker process, ``<pid>.json`` in the folder the supervisor names in
:data:`READY_DIR_ENV`, written once (atomically) and read by the supervisor; no sockets, no
shared memory, nothing when the variable is unset (one process, the serving workers, or workers set
explicitly).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from service.serving.repository import ModelRepository
    from service.state import ServiceState

logger = logging.getLogger(__name__)

#: Set by the supervisor in a worker's environment: where that worker reports.
READY_DIR_ENV = "IMGCLS_SUPERVISOR_READY_DIR"
#: Set by the supervisor for workers that join a serving one: take no connection until ready.
WAIT_READY_ENV = "IMGCLS_SUPERVISOR_WAIT_READY"
#: Longest a joining worker waits for its models before it takes connections anyway (seconds).
WAIT_READY_TIMEOUT_S = 600.0

#: Seconds between checks for the default model while the worker starts.
POLL_S = 0.2


def read_reports(directory: Path) -> dict[int, float | None]:
    """Every report in ``directory``: worker pid -> the default model's seconds per image
    (None: the worker has no default model to measure)."""
    reports: dict[int, float | None] = {}
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            cost = data["seconds_per_image"]
            reports[int(data["pid"])] = None if cost is None else float(cost)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours
    return reports


def nothing_to_load(repository: ModelRepository) -> bool:
    """True when the first scan found no version of the default model that is loading or
    could be (no folder, no versions, or every one failed): waiting would not end soon."""
    if not repository.scanned:
        return False
    default = repository.default
    if default is None:
        return True
    if not default.store.scanned:
        return False
    return not any(row.state in ("loading", "available") for row in default.store.statuses())


def seconds_per_image(state: ServiceState) -> float:
    """Time one full batch of the default model (already warm), in seconds per image."""
    served, model = state.repository.resolve(None)
    size = served.limits.max_batch_size
    height, width = model.input_size
    batch = np.zeros((size, height, width, 3), dtype=np.float32)
    started = time.perf_counter()
    model.predict(batch)
    return (time.perf_counter() - started) / size


Settled = Literal["ready", "nothing to load", "stopping", "timeout"]


async def models_settled(state: ServiceState, *, timeout_s: float = math.inf) -> Settled:
    """Poll until the repository is ready, has nothing left to load (see
    :func:`nothing_to_load`), the service stops, or ``timeout_s`` seconds pass; says which."""
    deadline = time.monotonic() + timeout_s
    repository = state.repository
    while not repository.ready:
        if nothing_to_load(repository):
            return "nothing to load"
        if state.shutting_down:
            return "stopping"
        if time.monotonic() > deadline:
            return "timeout"
        await asyncio.sleep(POLL_S)
    return "ready"


async def wait_until_ready(state: ServiceState) -> None:
    """Hold the lifespan's start-up (so uvicorn takes no connection yet) until the models are
    served, when the supervisor asks (:data:`WAIT_READY_ENV`): a worker that joins a serving
    one never answers ``/readyz`` 503 in between, so readiness never flaps."""
    if not os.environ.get(WAIT_READY_ENV):
        return
    if await models_settled(state, timeout_s=WAIT_READY_TIMEOUT_S) == "timeout":
        logger.warning("models not ready in %g s; taking connections", WAIT_READY_TIMEOUT_S)


async def report_when_ready(state: ServiceState) -> None:
    """Once the default model is served, write this worker's report (when asked for one)."""
    directory = os.environ.get(READY_DIR_ENV)
    if not directory:
        return
    cost: float | None = None
    settled = await models_settled(state)
    if settled == "stopping":
        return  # no report: the supervisor is stopping too
    if settled == "ready":
        cost = await asyncio.to_thread(seconds_per_image, state)
        logger.info("ready: the default model takes %.3f ms per image at full batch", cost * 1e3)
    else:  # e.g. started before the first training
        logger.info("no version of the default model to measure")
    path = Path(directory) / f"{os.getpid()}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"pid": os.getpid(), "seconds_per_image": cost}))
    os.replace(partial, path)  # the supervisor never reads half a report
