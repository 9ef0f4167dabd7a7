"""``python -m service``: run the API with uvicorn.

Flags override ``IMGCLS_*`` environment variables, which override the defaults (see README).
Every process serving requests runs :class:`service.http.server.DrainingServer` (SIGTERM makes it
unready first, then drains) and guards its connections against slow and oversized requests
(:class:`service.http.guard.GuardedHttpToolsProtocol`). With several workers (``auto``, the
default, is one per usable CPU) :mod:`service.process.supervisor` runs them on one port, and
the metrics of every worker are aggregated. ``METRICS_PORT`` serves /metrics apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Collection
from pathlib import Path

from pydantic import ValidationError

from contract.tf_log import quiet_tensorflow
from service.process.runner import LOG_FORMAT
from service.settings import Settings, env_name

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
    parser.add_argument(
        "--model-name",
        help="the default model (for /predict, /explain and the page); every model folder of "
        "the repository is served (default digits)",
    )
    parser.add_argument(
        "--workers",
        help="worker processes, or auto: one per usable CPU (at most 4) for a model cheaper than "
        "2 ms per image, else one (default auto)",
    )
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(argv)


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
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    quiet_tensorflow(show_log=settings.log_level.lower() == "debug")
    from service.process.runner import run_workers, serve

    if settings.worker_count > 1:
        return run_workers(settings)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
