"""``python -m bench`` (= ``make bench``): the load benchmark, with its references, in one run.

It starts everything itself and stops it again: a model (reused or trained), the service
(``python -m service`` with its defaults) and the references, each on a free loopback port,
and ``wrk`` as the load generator, pinned to the last CPU. Every figure is reported beside a
reference measured in the same run, interleaved level by level so that other load on the
machine hits both alike:

* the loadgen probe: wrk against a constant-answer asyncio server, to show wrk is not the limit;
* the bare ceiling: a minimal FastAPI app, Pillow decode and resize, a constant answer
  (:mod:`bench.bare_app`, nothing of the service);
* the bare unbatched app: the same plus one SavedModel call per request (:mod:`bench.bare_app`);
* the own-stack HTTP ceiling: the service's stack without a model (:mod:`bench.ceiling_app`);
* the unbatched service: the defaults with ``IMGCLS_MAX_BATCH_SIZE=1``;
* the compute ceiling: the SavedModel called in-process at its best batch size
  (:mod:`bench.compute`);
* for each setting tried, the service with its defaults, measured right beside it.

The references are defined once, in :mod:`bench.references`, and measured beside every
workload alike; :mod:`bench.harness` runs wrk against them; :func:`run` below is the order.

Two workloads: ``digits`` (one 540-byte 28x28 PNG per request, the default model) and
``photos`` (640x480 JPEG photos of 50-100 KB to a model trained on photos, 96x96x3;
:mod:`bench.photos`), plus a compute-heavy model (VGG-16 at 48x48x3). The goals' points (c=32
and c=64) are measured ``--repeats`` times, servers in rotating order, and the run with the
median rate is reported; the other points once.

It also measures the service's per-request CPU budget (digits, c=32, sampled with py-spy;
:mod:`bench.budget`; skipped when py-spy is not installed).

Writes ``bench/results/results.json``, ``bench/results/benchmark.png``,
``bench/results/summary.md`` and ``bench/results/budget/``. ``--quick`` is a smoke run of the
same harness (about two minutes, most of it starting servers and training the photo model).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import budget, loadgen, report
from bench.digits import digit_png, write_scripts
from bench.harness import Runner, stop_except
from bench.knobs import KindKnob, run_knobs
from bench.loadgen import LevelResult
from bench.machine import machine_info
from bench.models import DIGITS, ensure_digits, ensure_heavy, heavy_name
from bench.photos import PHOTOS, ensure_photo_workload, jpeg_decode_rate
from bench.plan import MULTI_IMAGE, Plan, describe, make_plan
from bench.references import (
    SINGLE_IMAGE_ONLY,
    Served,
    compute_ceiling,
    loadgen_probe,
    started,
)
from bench.servers import ROOT, ServerProcess

DEFAULT_OUT = ROOT / "bench" / "results"


@dataclass
class Session:
    """What the steps of one run share."""

    plan: Plan
    out: Path
    cpu: int | None  # the CPU wrk is pinned to (None: one CPU, not pinned)
    scripts: dict[int, Path]  # the digit requests: images per request -> wrk script
    image_bytes: int
    knobs: list[dict[str, Any]] = field(default_factory=list)  # the settings sweep's rows

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def runner(self, scripts: dict[int, Path] | None = None) -> Runner:
        """The harness on ``scripts`` (default: the digit requests)."""
        chosen = self.scripts if scripts is None else scripts
        return Runner(chosen, self.cpu, single_image_only=SINGLE_IMAGE_ONLY)


# ------------------------------------------------------------------------------------- steps


def open_session(args: argparse.Namespace) -> Session:
    """The results folder, the CPU for wrk, the digit PNG's wrk scripts."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if loadgen.wrk_path() is None:
        raise SystemExit("error: wrk is not installed (apt-get install wrk, or `make system-deps`)")
    cpu = loadgen.wrk_cpu()
    png = digit_png()
    scripts = write_scripts(out / "scripts", png, (1, MULTI_IMAGE))
    return Session(make_plan(args), out, cpu, scripts, image_bytes=len(png))


def newest(models_dir: Path, model: str) -> Served:
    served = Served.newest(models_dir, model)
    print(f"model {model}: {served.version_dir}", flush=True)
    return served


def sweep(
    session: Session,
    baselines: dict[str, ServerProcess],
    served: Served,
    knobs: list[KindKnob],
    levels: tuple[int, ...],
) -> None:
    """The settings ``knobs`` on ``served``, each beside its running defaults server."""
    if not knobs:
        return
    print(f"settings, {served.model} (each beside the defaults)", flush=True)
    session.knobs += run_knobs(
        session.runner(),
        baselines,
        knobs,
        served,
        session.logs,
        levels,
        session.plan.knob_duration_s,
        first_index=len(session.knobs),
    )


def measure_digits(session: Session, served: Served) -> dict[str, Any]:
    """Digits, the default model (HTTP-bound): the service beside every reference, single- and
    multi-image requests; then the settings sweep beside the service and the own-stack ceiling."""
    plan = session.plan
    digits: dict[str, Any] = {"version_dir": str(served.version_dir)}
    digits["compute"] = compute_ceiling(served.version_dir, plan.compute_seconds)
    points = [(c, 1) for c in plan.levels] + [(c, MULTI_IMAGE) for c in plan.multi_levels]
    with started(served, session.logs) as servers:
        digits["runs"] = session.runner().interleaved(
            servers, points, plan.duration_s, repeats=plan.repeats, repeated=plan.repeated
        )
        stop_except(servers, ("service", "ceiling"))
        sweep(session, servers, served, plan.digits_knobs, plan.knob_levels)
    return digits


def measure_budget(session: Session, models_dir: Path) -> dict[str, Any]:
    """The per-request CPU budget of the service (digits, c=32, sampled with py-spy)."""
    print("CPU budget: the service under wrk, sampled with py-spy", flush=True)
    result = budget.run_budget(
        models_dir,
        DIGITS,
        session.scripts[1],
        session.out / "budget",
        duration_s=session.plan.budget_s,
        cpu=session.cpu,
    )
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}", flush=True)
    else:
        print(report.budget_table(result), flush=True)
    return result


def measure_photos(session: Session, cache: Path) -> dict[str, Any]:
    """Photos: 640x480 JPEGs to a model trained on photos (96x96x3), the service beside every
    reference and the machine's JPEG decode rate on one core."""
    plan = session.plan
    workload = ensure_photo_workload(
        cache, per_class=plan.photo_per_class, epochs=plan.photo_epochs
    )
    served = newest(workload.models_dir, PHOTOS)
    photos: dict[str, Any] = {"version_dir": str(served.version_dir)}
    photos["decode"] = jpeg_decode_rate(workload.served, min(2.0, 4 * plan.compute_seconds))
    print(
        f"  JPEG decode, one thread: {photos['decode']['decode_per_s_one_core']:.0f}/s full size, "
        f"{photos['decode']['decode_resize_per_s_one_core']:.0f}/s with the resize",
        flush=True,
    )
    photos["compute"] = compute_ceiling(served.version_dir, plan.compute_seconds)
    requests = [[(path.name, path.read_bytes())] for path in workload.served]
    script = loadgen.write_rotating_script(session.out / "scripts", requests, "photos")
    with started(served, session.logs) as servers:
        photos["runs"] = session.runner({1: script}).interleaved(
            servers,
            [(c, 1) for c in plan.photo_levels],
            plan.duration_s,
            prefix="photos ",
            repeats=plan.repeats,
            repeated=plan.repeated,
        )
    photos["workload"] = {
        "photos": len(workload.served),
        "jpeg_bytes": [path.stat().st_size for path in workload.served],
        "size": [640, 480],
        "source": "crops of scikit-learn's sample photos (china.jpg, flower.jpg)",
    }
    return photos


def measure_heavy(session: Session, served: Served) -> dict[str, Any]:
    """The compute-heavy model: the service beside its unbatched self and the compute ceiling
    (measured before and after the load), then its settings sweep."""
    plan = session.plan
    heavy: dict[str, Any] = {"version_dir": str(served.version_dir)}
    first = compute_ceiling(served.version_dir, plan.compute_seconds)
    with started(served, session.logs, ("service", "unbatched")) as servers:
        heavy["runs"] = session.runner().interleaved(
            servers,
            [(c, 1) for c in plan.levels],
            plan.duration_s,
            repeats=plan.repeats,
            repeated=plan.repeated,
        )
        stop_except(servers, ("service",))
        sweep(session, servers, served, plan.heavy_knobs, plan.heavy_knob_levels)
    # Measured again after the load runs: the ratio uses the better of the two, so noise on
    # the machine cannot flatter the service.
    second = compute_ceiling(served.version_dir, plan.compute_seconds)
    best = max((first, second), key=lambda result: result["images_per_s"])
    heavy["compute"] = {
        **best,
        "measurements_images_per_s": [first["images_per_s"], second["images_per_s"]],
    }
    return heavy


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark, step by step; the results as ``results.json`` holds them."""
    session = open_session(args)
    plan = session.plan
    started_s = time.monotonic()
    results: dict[str, Any] = {
        "command": args.command_line,
        "quick": args.quick,
        "machine": machine_info(),
        "plan": describe(plan, session.cpu, session.image_bytes),
        "models": {},
        "knobs": [],
    }
    results["loadgen_probe"] = loadgen_probe(
        session.runner(), plan.probe_levels, plan.duration_s, session.logs
    )
    digits = newest(ensure_digits(args.cache, args.models_dir), DIGITS)
    results["models"][DIGITS] = measure_digits(session, digits)
    if plan.budget_s:
        results["budget"] = measure_budget(session, digits.models_dir)
    if plan.photos:
        results["models"][PHOTOS] = measure_photos(session, args.cache)
    if plan.heavy:
        name = heavy_name(plan.heavy_arch, plan.heavy_side)
        heavy = newest(ensure_heavy(args.cache, plan.heavy_arch, plan.heavy_side), name)
        results["models"][name] = measure_heavy(session, heavy)
    results["knobs"] = session.knobs
    results["elapsed_s"] = round(time.monotonic() - started_s, 1)
    return results


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, LevelResult):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(item) for item in value]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--duration", type=int, default=4, help="seconds per load level")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=ROOT / "models",
        help="use digits from here when it has a version (default models/)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_OUT / "models",
        help="where models are trained or built when needed (default bench/results/models)",
    )
    parser.add_argument("--no-heavy", action="store_true", help="skip the compute-heavy model")
    parser.add_argument("--no-knobs", action="store_true", help="skip the settings sweep")
    parser.add_argument("--no-photos", action="store_true", help="skip the photo workload")
    parser.add_argument(
        "--no-budget", action="store_true", help="skip the per-request CPU budget (py-spy)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of the c=32 and c=64 points (interleaved; the median is reported)",
    )
    parser.add_argument("--heavy-arch", default="vgg16", help="architecture of the heavy model")
    parser.add_argument("--heavy-side", type=int, default=48, help="its input side, pixels")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    args.command_line = shlex.join(["python", "-m", "bench", *given])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = _to_jsonable(run(args))
    out: Path = args.out
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = report.summary_markdown(results)
    (out / "summary.md").write_text(summary)
    plot = report.plot(results, out / "benchmark.png")
    print()
    print(summary)
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'}" + (f", {plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
