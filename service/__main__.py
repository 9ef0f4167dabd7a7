"""``python -m service``: run the API with uvicorn.

Flags override ``IMGCLS_*`` environment variables, which override the defaults (see README).
One worker (the default) runs :class:`service.server.DrainingServer`: SIGTERM makes it unready
first, then drains; every worker guards its connections against slow and oversized requests
(:class:`service.server.GuardedHttpToolsProtocol`). ``METRICS_PORT`` serves /metrics apart.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess
from pydantic import ValidationError

from service.settings import Settings, env_name
from service.tf_log import min_log_level, start_background_import

#: Exit code when the server could not start (uvicorn's own value).
STARTUP_FAILURE = 3

FLAG_TO_ENV = {
    "host": "IMGCLS_HOST",
    "port": "IMGCLS_PORT",
    "models_dir": "IMGCLS_MODELS_DIR",
    "model_name": "IMGCLS_MODEL_NAME",
    "workers": "IMGCLS_WORKERS",
    "log_level": "IMGCLS_LOG_LEVEL",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, help="default 8000")
    parser.add_argument("--models-dir", type=Path, help="model repository (default models/)")
    parser.add_argument("--model-name", help="which model under the repository (default digits)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


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
    if not path and own is not None:
        return own
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


#: Settings whose value an error message must not repeat.
SECRET_SETTINGS = frozenset({"api_keys"})


def settings_errors(exc: ValidationError, flags_given: Collection[str] = ()) -> list[str]:
    """One line per problem, naming what the user set: ``--port 70000`` for a flag in
    ``flags_given`` (settings names), ``IMGCLS_MAX_QUEUE_SIZE=0`` for an environment variable,
    never the internal field name."""
    flag_of = {field: "--" + field.replace("_", "-") for field in flags_given}
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = [str(part) for part in error["loc"]]
        if not loc:  # a check across settings: its message names the environment variables
            for field, flag in flag_of.items():
                message = message.replace(f"{env_name(field)}=", f"{flag} ")
                message = message.replace(env_name(field), flag)
            lines.append(message)
            continue
        field, rest = loc[0], "".join(f"[{part}]" for part in loc[1:])
        value = "" if field in SECRET_SETTINGS else error.get("input")
        if field in flag_of:
            where = f"{flag_of[field]} {value}".rstrip()
        else:
            where = f"{env_name(field)}={value}" if value != "" else env_name(field)
        lines.append(f"{where}{rest}: {message}")
    return lines


def quiet_tensorflow(log_level: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep TensorFlow's C++ log (``failed call to cuInit`` on every CPU start, CPU-feature
    notes) out of the service's log: ``TF_CPP_MIN_LOG_LEVEL=3`` before TensorFlow is imported,
    in this process and (through the environment) in every worker. A value the user set wins;
    ``--log-level debug`` leaves TensorFlow's own default (everything)."""
    if log_level.lower() != "debug":
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, env in FLAG_TO_ENV.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)  # the env carries the flags into worker processes too
    try:
        settings = Settings()
    except ValidationError as exc:
        given = [flag for flag in FLAG_TO_ENV if getattr(args, flag) is not None]
        for line in settings_errors(exc, given):
            print(f"error: {line}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_tensorflow(settings.log_level)

    from service.server import DrainingServer, ServiceConfig, start_metrics_server, uvicorn_options

    common: dict[str, Any] = {
        **uvicorn_options(settings),
        # DrainingServer shortens this to what is left of the grace period after the delay.
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_grace_s)),
    }
    if settings.workers > 1:
        from uvicorn.supervisors import Multiprocess

        prepare_multiprocess_metrics()
        config = ServiceConfig(
            "service.app:create_app", factory=True, workers=settings.workers, **common
        )
        metrics_server = (
            start_metrics_server(settings.host, settings.metrics_port, metrics_registry(None))
            if settings.metrics_port
            else None
        )
        try:
            # uvicorn's own supervisor: each worker stops on SIGTERM as plain uvicorn does
            # (in-flight requests finish, the queue drains), without the readiness delay.
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
        return 0

    from service.app import create_app

    app = create_app(settings)
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
        if settings.metrics_port
        else None
    )
    if min_log_level() > 0:
        # TensorFlow loads while the server starts, its start-up lines filtered (service.tf_log).
        start_background_import()
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
