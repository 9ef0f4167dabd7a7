"""Running the service: one process, or several workers under :mod:`service.process.supervisor`.

Every process that serves requests runs :class:`service.http.draining.DrainingServer` on the app of
:func:`service.app.create_app`; with several workers their metrics go through
prometheus_client's multiprocess files and are aggregated on ``/metrics``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess

from contract.tf_log import min_log_level, quiet_tensorflow, start_background_import
from service.metrics import aggregate_registry
from service.process.supervisor import STARTUP_FAILURE
from service.process.worker_report import report_when_ready, wait_until_ready
from service.settings import Settings, env_name

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def prepare_multiprocess_metrics() -> None:
    """Several workers share metrics through files: a fresh, empty directory per start."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgcls-metrics-")


def metrics_registry(own: CollectorRegistry | None) -> CollectorRegistry:
    """What the separate metrics port serves: ``own`` registry, or every worker's files."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        if own is None:
            raise ValueError("PROMETHEUS_MULTIPROC_DIR is not set and there is no registry")
        return own
    return aggregate_registry(path)


def tensorflow_threads_per_worker(settings: Settings, cpus: int) -> dict[str, str | None]:
    """With several workers, each TensorFlow gets its share of the CPUs instead of all of them:
    workers computing at once would otherwise oversubscribe every core (a user's setting wins)."""
    if settings.tf_intra_op_threads:
        return {}
    return {env_name("tf_intra_op_threads"): str(max(1, cpus // settings.worker_count))}


def run_workers(settings: Settings) -> int:
    """``settings.worker_count`` whole services on one port (:mod:`.supervisor`); with
    ``auto``, the first worker measures the default model first, with every core."""
    from service.http.server import start_metrics_server
    from service.process.supervisor import Supervisor, bind_socket
    from service.settings import usable_cpus

    prepare_multiprocess_metrics()
    sock = bind_socket(settings.host, settings.port)
    logger.info(
        "up to %d workers on http://%s:%d", settings.worker_count, settings.host, settings.port
    )
    metrics_server = (
        start_metrics_server(settings.host, settings.metrics_port, metrics_registry(None))
        if settings.metrics_port
        else None
    )
    supervisor = Supervisor(
        serve_worker,
        sock,
        settings.worker_count,
        worker_env=tensorflow_threads_per_worker(settings, usable_cpus()),
        probe_env={} if settings.workers == "auto" else None,
        on_worker_exit=multiprocess.mark_process_dead,  # its live gauges leave with it
    )
    try:
        return supervisor.run()
    finally:
        sock.close()
        if metrics_server is not None:
            metrics_server.shutdown()


def serve_worker(sock: socket.socket) -> int:
    """One worker of :func:`run_workers` (runs in its own process): the settings from the
    environment the supervisor passed on, the single-process server on ``sock``."""
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    quiet_tensorflow(show_log=settings.log_level.lower() == "debug")
    return serve(settings, sock=sock)


def serve(settings: Settings, sock: socket.socket | None = None) -> int:
    """The single-process service: on ``sock`` when given (a worker), else on its own port
    with the metrics port beside it."""
    from service.app import create_app
    from service.http.draining import DrainingServer
    from service.http.server import ServiceConfig, start_metrics_server, uvicorn_options

    common: dict[str, Any] = {
        **uvicorn_options(settings),
        # DrainingServer shortens this to what is left of the grace period after the delay.
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_grace_s)),
    }
    # Workers of the supervisor report when ready (the first also what its default model
    # costs); one joining a serving worker takes connections only once ready. Else: no-ops.
    app = create_app(settings, startup=[wait_until_ready], background=[report_when_ready])
    server = DrainingServer(
        ServiceConfig(app, **common),
        app=app,
        shutdown_delay_s=settings.shutdown_delay_s,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    metrics_server = (
        start_metrics_server(
            settings.host, settings.metrics_port, metrics_registry(app.state.metrics.registry)
        )
        if settings.metrics_port and sock is None
        else None
    )
    if min_log_level() > 0:
        # TensorFlow loads while the server starts, its start-up lines filtered (tf_log).
        start_background_import()
    # The supervisor retires a worker with SIGUSR1 once others serve in its place: it stops
    # taking connections and finishes what it has, without turning unready (others serve on).
    signal.signal(signal.SIGUSR1, lambda signum, frame: server.retire())
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0 if server.started else STARTUP_FAILURE
