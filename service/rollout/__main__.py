"""``python -m service.rollout``: run the rollout controller, or act on one model's rollout.

python -m service.rollout --models-dir models --prometheus http://prometheus:9090
python -m service.rollout --models-dir models --scrape http://127.0.0.1:8000
python -m service.rollout pause|resume|promote|rollback --model digits
python -m service.rollout status
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from prometheus_client import start_http_server

from service.rollout import journal
from service.rollout.controller import Controller
from service.rollout.metrics import RolloutMetrics
from service.rollout.overrides import COMMANDS, OverrideError, override
from service.rollout.sources import MetricsSource, PrometheusSource, ScrapeSource

#: Where the controller serves its own /metrics (0: nowhere).
DEFAULT_METRICS_PORT = 8002


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.rollout",
        description="Progressive rollout of new blessed versions (see README, 'The loop').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:9} {text}" for name, text in COMMANDS.items())
        + "\n  status    print each model's last rollout.log line",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=[*COMMANDS, "status"],
        help="act on one model (with --model) instead of running the controller",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("IMGCLS_MODELS_DIR", "models")),
        help="the model repository holding serving.yaml (default: $IMGCLS_MODELS_DIR or models)",
    )
    parser.add_argument("--model", help="the model a command acts on")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prometheus", metavar="URL", help="read metrics from Prometheus")
    source.add_argument(
        "--scrape", metavar="URL", nargs="+", help="read each replica's /metrics directly"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help=f"serve the controller's own /metrics here (default {DEFAULT_METRICS_PORT}; 0: off)",
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port")
    parser.add_argument(
        "--tick-s", type=float, default=1.0, help="seconds between two looks (default 1)"
    )
    args = parser.parse_args(argv)
    if args.command in COMMANDS and not args.model:
        parser.error(f"{args.command} needs --model NAME")
    if args.command is None and not (args.prometheus or args.scrape):
        parser.error("the controller needs --prometheus URL or --scrape URL [URL ...]")
    if args.tick_s <= 0:
        parser.error("--tick-s must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    models_dir: Path = args.models_dir
    if args.command == "status":
        for _model, entry in sorted(journal.last_entries(journal.journal_path(models_dir)).items()):
            print(json.dumps(entry, sort_keys=True))
        return 0
    if args.command is not None:
        try:
            decision = override(models_dir, args.model, args.command)
        except OverrideError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.model}: {decision.action.value}: {decision.reason}")
        return 0
    if not models_dir.is_dir():
        print(f"error: {models_dir} is not a folder", file=sys.stderr)
        return 2
    source: MetricsSource = (
        PrometheusSource(args.prometheus) if args.prometheus else ScrapeSource(args.scrape)
    )
    metrics = RolloutMetrics()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    controller = Controller(models_dir, source, metrics)
    logging.getLogger(__name__).info(
        "rollout controller on %s, metrics from %s",
        models_dir,
        args.prometheus or " ".join(args.scrape),
    )
    with contextlib.suppress(KeyboardInterrupt):
        controller.run_forever(args.tick_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
