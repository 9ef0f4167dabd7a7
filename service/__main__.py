"""``python -m service``: run the API with uvicorn.

Flags override ``IMGCLS_*`` environment variables, which override the defaults (see README).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag, env in FLAG_TO_ENV.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)  # the env carries the flags into worker processes too
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"error: {where}: {error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import uvicorn

    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # imgcls_requests_total and the duration histogram cover it
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
    }
    if settings.workers > 1:
        prepare_multiprocess_metrics()
        uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
    else:
        from service.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
