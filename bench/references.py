"""The references every figure of ``python -m bench`` is read against, defined once.

Each workload (digits, photos, the compute-heavy model) is measured beside the same set,
in the same run and interleaved level by level, so each figure is also a ratio:

* the loadgen probe (:func:`loadgen_probe`): wrk against a constant-answer asyncio server
  (:mod:`bench.null_server`), to show wrk is not the limit; once per run;
* the compute ceiling (:func:`compute_ceiling`): the SavedModel called in-process at its best
  batch size (:mod:`bench.compute`); once per model;
* the servers of :data:`SERVERS`, started together for one model (:func:`started`): the service
  with its defaults, then :data:`REFERENCES`:

  - the bare ceiling: a minimal FastAPI app, Pillow decode and resize, a constant answer
    (:mod:`bench.bare_app`, nothing of the service);
  - the bare unbatched app: the same plus one SavedModel call per request (:mod:`bench.bare_app`);
  - the own-stack HTTP ceiling: the service's stack without a model (:mod:`bench.ceiling_app`);
  - the unbatched service: the defaults with ``IMGCLS_MAX_BATCH_SIZE=1``.

The names are the run names of ``results.json``; the titles and labels are what
:mod:`bench.report` prints and plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Runner, start_servers, stop_all
from bench.loadgen import LevelResult
from bench.models import newest_version_dir
from bench.servers import ROOT, ServerProcess, bare_spec, ceiling_spec, service_spec, start_null


@dataclass(frozen=True)
class Server:
    """One server of the set: its run name, its column title, its line in the plot."""

    name: str
    title: str
    label: str
    #: Takes one ``UploadFile``: measured at one image per request only.
    single_image_only: bool = False


SERVICE = Server("service", "service", "service (batched)")
#: The references of the main tables, in column order.
REFERENCES: tuple[Server, ...] = (
    Server("bare_ceiling", "bare ceiling", "bare FastAPI ceiling (no model)", True),
    Server("bare_unbatched", "bare unbatched", "bare FastAPI + one model call per request", True),
    Server("ceiling", "own-stack ceiling", "own-stack ceiling (no model)"),
    Server("unbatched", "service unbatched", "service unbatched (max_batch_size=1)"),
)
#: Every server of a workload's set, in the order they start and are first measured.
SERVERS: tuple[Server, ...] = (SERVICE, *REFERENCES)
SERVER_NAMES: tuple[str, ...] = tuple(server.name for server in SERVERS)
SINGLE_IMAGE_ONLY = frozenset(server.name for server in SERVERS if server.single_image_only)


@dataclass(frozen=True)
class Served:
    """One published model version, as the servers of the set are started on it."""

    models_dir: Path
    model: str
    version_dir: Path
    height: int
    width: int

    @classmethod
    def newest(cls, models_dir: Path, model: str) -> Served:
        """The newest version of ``model`` in ``models_dir`` and its input size."""
        version_dir = newest_version_dir(models_dir, model)
        meta = json.loads((version_dir / "metadata.json").read_text())
        height, width = meta["input"]["height"], meta["input"]["width"]
        return cls(models_dir, model, version_dir, height, width)


def spec(
    name: str, served: Served, logs: Path, log_name: str, **settings: object
) -> tuple[ServerProcess, str]:
    """Spawn the server ``name`` of the set on ``served`` (``settings``: ``IMGCLS_<KEY>``
    changes from the defaults, for the service and the own-stack ceiling)."""
    height, width = served.height, served.width
    if name == "service":
        return service_spec(served.models_dir, served.model, logs, log_name, **settings)
    if name == "unbatched":
        settings = {**settings, "max_batch_size": 1}
        return service_spec(served.models_dir, served.model, logs, log_name, **settings)
    if name == "ceiling":
        return ceiling_spec(logs, log_name, height=height, width=width, **settings)
    if name == "bare_ceiling":
        return bare_spec(logs, log_name, height=height, width=width)
    if name == "bare_unbatched":
        return bare_spec(logs, log_name, height=height, width=width, model_dir=served.version_dir)
    raise ValueError(f"no server {name!r} in the reference set")


@contextmanager
def started(
    served: Served, logs: Path, names: Iterable[str] = SERVER_NAMES
) -> Iterator[dict[str, ServerProcess]]:
    """The servers ``names`` of the set on ``served``, started in parallel and ready (name ->
    server, in the order given); every one still in the dict is stopped on leaving."""
    specs = {
        name: spec(name, served, logs, f"{name.replace('_', '-')}-{served.model}") for name in names
    }
    servers = start_servers(specs)
    try:
        yield servers
    finally:
        stop_all(servers.values())


def loadgen_probe(
    runner: Runner, levels: Iterable[int], duration_s: int, logs: Path
) -> list[LevelResult]:
    """wrk against the constant-answer server at each concurrency of ``levels``."""
    print("loadgen probe: wrk against a constant-answer asyncio server", flush=True)
    null = start_null(logs)
    try:
        return [runner.level(null, c, 1, duration_s, "null server") for c in levels]
    finally:
        null.stop()


def compute_ceiling(
    version_dir: Path, seconds: float, batch_sizes: str = "1,8,16,32,64"
) -> dict[str, Any]:
    """Run :mod:`bench.compute` in a fresh process at ``batch_sizes`` (comma-separated) and
    return its JSON."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "-m",
        "bench.compute",
        str(version_dir),
        "--seconds",
        str(seconds),
        "--batch-sizes",
        batch_sizes,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.compute failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  compute ceiling {result['model']}: {result['images_per_s']:.1f} img/s at batch "
        f"{result['best_batch_size']} ({result['ms_per_image_at_best']:.2f} ms/img)",
        flush=True,
    )
    return result
