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
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from bench import budget, loadgen, report
from bench.loadgen import LevelResult
from bench.models import DIGITS, ensure_digits, ensure_heavy, heavy_name, newest_version_dir
from bench.photos import PHOTOS, ensure_photo_workload, jpeg_decode_rate
from bench.servers import (
    ROOT,
    ServerProcess,
    bare_spec,
    box_busy_cpu_s,
    ceiling_spec,
    fetch_text,
    service_spec,
    start_null,
    wait_ready,
)

DEFAULT_OUT = ROOT / "bench" / "results"
MULTI_IMAGE = 8  # images per request in the multi-image runs
#: The bare references take one ``UploadFile``: they are measured at one image per request.
SINGLE_IMAGE_ONLY = frozenset({"bare_ceiling", "bare_unbatched"})

Knob = dict[str, object]


@dataclass
class Plan:
    """What one run measures; ``--quick`` shrinks every part of it."""

    duration_s: int
    levels: tuple[int, ...]
    multi_levels: tuple[int, ...]
    probe_levels: tuple[int, ...]
    compute_seconds: float
    heavy: bool
    heavy_arch: str
    heavy_side: int
    repeats: int = 1
    repeated: frozenset[int] = frozenset({32, 64})  # the goals' levels; the others run once
    budget_s: int = 20  # seconds of the CPU budget's load (0: no budget)
    photos: bool = True
    photo_levels: tuple[int, ...] = (1, 32, 64)
    photo_per_class: int = 60
    photo_epochs: int = 3
    knob_levels: tuple[int, ...] = ()
    knob_duration_s: int = 3
    heavy_knob_levels: tuple[int, ...] = (32,)
    digits_knobs: list[tuple[str, Knob]] = field(default_factory=list)
    heavy_knobs: list[Knob] = field(default_factory=list)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            duration_s=1,
            levels=(1, 8),
            multi_levels=(8,),
            probe_levels=(32,),
            compute_seconds=0.3,
            heavy=False,
            heavy_arch=args.heavy_arch,
            heavy_side=args.heavy_side,
            repeats=1,
            budget_s=0 if args.no_budget else 3,
            photos=not args.no_photos,
            photo_levels=(8,),
            photo_per_class=12,
            photo_epochs=1,
        )
    knobs = not args.no_knobs
    return Plan(
        duration_s=args.duration,
        levels=(1, 8, 32, 64, 128),
        multi_levels=(8, 32),
        probe_levels=(32, 64),
        compute_seconds=2.0,
        heavy=not args.no_heavy,
        heavy_arch=args.heavy_arch,
        heavy_side=args.heavy_side,
        repeats=args.repeats,
        budget_s=0 if args.no_budget else 20,
        photos=not args.no_photos,
        knob_levels=(1, 32, 64) if knobs else (),
        knob_duration_s=max(2, args.duration - 1),
        digits_knobs=[
            # One process (the default is one worker per usable CPU, at most 4).
            ("service", {"workers": 1}),
            ("service", {"workers": 1, "tf_intra_op_threads": 1}),
            ("ceiling", {"workers": 1}),
            ("service", {"batch_timeout_s": 0.002}),
            ("service", {"max_batch_size": 16}),
            ("service", {"max_batch_size": 64}),
            ("service", {"tf_inter_op_threads": 1}),
            ("service", {"tf_intra_op_threads": 1, "tf_inter_op_threads": 1}),
            ("service", {"inline_decode_max_pixels": 0}),
        ]
        if knobs
        else [],
        heavy_knobs=[
            {"workers": 1},
            {"tf_inter_op_threads": 1},
            {"tf_intra_op_threads": 1, "tf_inter_op_threads": 1},
        ]
        if knobs
        else [],
    )


# ------------------------------------------------------------------------------ machine facts


def machine_info() -> dict[str, Any]:
    """Cores, CPU model and vector flags, versions: what a reader needs to compare numbers."""
    cpuinfo_path = Path("/proc/cpuinfo")
    lines = cpuinfo_path.read_text(errors="replace").splitlines() if cpuinfo_path.exists() else []
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor(),
    )
    flags_line = next((line for line in lines if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if flags_line else set()
    wanted = (
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
    )

    def version(name: str) -> str | None:
        try:
            return importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            return None

    wrk = loadgen.wrk_path()
    wrk_version = None
    if wrk:
        probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        text = (probe.stdout + probe.stderr).strip()
        wrk_version = text.splitlines()[0].split(" Copyright")[0] if text else None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [flag for flag in wanted if flag in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "fastapi": version("fastapi"),
        "starlette": version("starlette"),
        "uvicorn": version("uvicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "wrk": wrk_version,
        "loadavg_at_start": list(os.getloadavg()),
    }


def digit_png() -> bytes:
    """One real 28x28 handwritten digit (a 7 from scikit-learn's set) as PNG bytes."""
    import io

    from PIL import Image

    from training.data import digit_images

    images, labels = digit_images()
    buffer = io.BytesIO()
    Image.fromarray(images[labels == 7][0]).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- running


def batch_counters(server: ServerProcess) -> tuple[float, float] | None:
    """(sum, count) of ``imgcls_batch_size`` from /metrics; None where there is none."""
    try:
        text = fetch_text(server.url + "/metrics")
    except OSError:
        return None
    total = count = None
    for line in text.splitlines():
        if line.startswith("imgcls_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("imgcls_batch_size_count"):
            count = float(line.split()[-1])
    return (total, count) if total is not None and count is not None else None


@dataclass
class Runner:
    """Runs wrk levels against servers and prints one line per level."""

    scripts: dict[int, Path]  # images per request -> wrk script
    cpu: int | None
    timeout_s: float = 30.0

    def level(
        self, server: ServerProcess, concurrency: int, images: int, duration_s: int, label: str
    ) -> LevelResult:
        """One wrk run; adds the server's CPU, the rest of the machine's and the mean batch."""
        before_cpu = server.cpu_seconds()
        before_box = box_busy_cpu_s()
        before_batches = batch_counters(server)
        result = loadgen.run_wrk(
            server.url + "/predict",
            self.scripts[images],
            concurrency=concurrency,
            duration_s=duration_s,
            images_per_request=images,
            cpu=self.cpu,
            timeout_s=self.timeout_s,
        )
        box = box_busy_cpu_s() - before_box
        result.server_cpu_s = round(server.cpu_seconds() - before_cpu, 2)
        # Everything else that ran meanwhile (other jobs on a shared machine): noise, in cores.
        other = max(0.0, box - result.server_cpu_s - result.loadgen_cpu_s) / result.duration_s
        result.extra["other_load_cores"] = round(other, 2)
        after_batches = batch_counters(server)
        if before_batches and after_batches and after_batches[1] > before_batches[1]:
            result.mean_batch_size = round(
                (after_batches[0] - before_batches[0]) / (after_batches[1] - before_batches[1]), 2
            )
        batch = f" batch {result.mean_batch_size:5.1f}" if result.mean_batch_size else ""
        print(
            f"  {label:<34} c={concurrency:<4} x{images:<2} {result.rps:8.1f} req/s "
            f"{result.images_per_s:8.1f} img/s  p50 {result.p50_ms:7.2f} p99 {result.p99_ms:7.2f} "
            f"ms  err {result.error_count}{batch}  cores: server "
            f"{result.server_cpu_s / result.duration_s:.2f} wrk "
            f"{result.loadgen_cpu_s / result.duration_s:.2f} other {other:.2f}",
            flush=True,
        )
        return result

    def warm(self, server: ServerProcess) -> None:
        """One second of load, discarded: connections, caches and code paths warm. A server
        that answers anything but 2xx there is broken: stop with its log rather than measure
        how fast it fails."""
        result = loadgen.run_wrk(
            server.url + "/predict", self.scripts[1], concurrency=8, duration_s=1, cpu=self.cpu
        )
        if result.errors["status"] or not result.requests:
            raise RuntimeError(
                f"{server.name} answered {result.errors['status']} of {result.requests} "
                f"warm-up requests with an error status; its log:\n{server.log_tail()}"
            )

    def interleaved(
        self,
        servers: dict[str, ServerProcess],
        points: Iterable[tuple[int, int]],
        duration_s: int,
        prefix: str = "",
        repeats: int = 1,
        repeated: frozenset[int] | None = None,
    ) -> dict[str, list[LevelResult]]:
        """Each (concurrency, images) point on every server back to back, the order rotating
        from point to point (and from repeat to repeat), so slow drifts in the machine's load
        fall on all of them alike. With ``repeats`` > 1 the whole sequence runs that many
        times and each point keeps the run with the median rate (all rates in
        ``extra["repeats_rps"]``); ``repeated`` limits the repeats to points of those
        concurrencies (None: every point). Servers in :data:`SINGLE_IMAGE_ONLY` skip
        multi-image points.
        """
        for server in servers.values():
            self.warm(server)
        points = list(points)
        runs: dict[tuple[str, int], list[LevelResult]] = {}
        names = list(servers)
        for repeat in range(repeats):
            for index, (concurrency, images) in enumerate(points):
                if repeat and repeated is not None and concurrency not in repeated:
                    continue
                shift = (index + repeat) % len(names)
                for name in names[shift:] + names[:shift]:
                    if images > 1 and name in SINGLE_IMAGE_ONLY:
                        continue
                    tag = f" #{repeat + 1}" if repeats > 1 else ""
                    level = self.level(
                        servers[name], concurrency, images, duration_s, f"{prefix}{name}{tag}"
                    )
                    runs.setdefault((name, index), []).append(level)
        results: dict[str, list[LevelResult]] = {name: [] for name in servers}
        for (name, _index), levels in sorted(runs.items(), key=lambda item: item[0][1]):
            results[name].append(median_level(levels))
        return results


def median_level(levels: list[LevelResult]) -> LevelResult:
    """The level with the median rate (the lower middle one of an even count); every run's
    rate is kept in its ``extra["repeats_rps"]``."""
    ranked = sorted(levels, key=lambda level: level.rps)
    chosen = ranked[(len(ranked) - 1) // 2]
    if len(levels) > 1:
        chosen.extra["repeats_rps"] = [level.rps for level in levels]
    return chosen


def stop_all(servers: Iterable[ServerProcess]) -> None:
    for server in servers:
        server.stop()


def compute_ceiling(version_dir: Path, seconds: float) -> dict[str, Any]:
    """Run :mod:`bench.compute` in a fresh process and return its JSON."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        "-m",
        "bench.compute",
        str(version_dir),
        "--seconds",
        str(seconds),
        "--batch-sizes",
        "1,8,16,32,64",
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


def knob_label(settings: Knob) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items()) or "defaults"


def run_knobs(
    runner: Runner,
    baselines: dict[str, ServerProcess],
    knobs: list[tuple[str, Knob]],
    spawn_knob: Any,
    levels: tuple[int, ...],
    duration_s: int,
    model: str,
) -> list[dict[str, Any]]:
    """Each setting alone, on a fresh server, interleaved with the running defaults server of
    the same kind ("service" or "ceiling"), so each row is also a ratio to the defaults."""
    entries = []
    for kind, knob in knobs:
        server = wait_ready([spawn_knob(kind, knob)])[0]
        try:
            label = f"{model} {kind}: {knob_label(knob)}"
            pair = runner.interleaved(
                {label: server, f"{model} {kind}: defaults": baselines[kind]},
                [(c, 1) for c in levels],
                duration_s,
            )
        finally:
            server.stop()
        knob_levels, base_levels = pair.values()
        entries.append(
            {
                "model": model,
                "kind": kind,
                "settings": knob,
                "levels": knob_levels,
                "baseline": base_levels,
            }
        )
    return entries


def start_servers(specs: dict[str, tuple[ServerProcess, str]]) -> dict[str, ServerProcess]:
    """Start every server in parallel and wait until all are ready; name -> server."""
    return dict(zip(specs, wait_ready(list(specs.values())), strict=True))


def run_photos(plan: Plan, cache: Path, logs: Path, cpu: int | None, out: Path) -> dict[str, Any]:
    """The photo workload: the service and every reference on 640x480 JPEG photos, a model
    trained on photos (96x96x3), beside the machine's JPEG decode rate on one core."""
    workload = ensure_photo_workload(
        cache, per_class=plan.photo_per_class, epochs=plan.photo_epochs
    )
    version = newest_version_dir(workload.models_dir, PHOTOS)
    print(f"model {PHOTOS}: {version}", flush=True)
    meta = json.loads((version / "metadata.json").read_text())
    height, width = meta["input"]["height"], meta["input"]["width"]
    photos: dict[str, Any] = {"version_dir": str(version)}
    photos["decode"] = jpeg_decode_rate(workload.served, min(2.0, 4 * plan.compute_seconds))
    print(
        f"  JPEG decode, one thread: {photos['decode']['decode_per_s_one_core']:.0f}/s full size, "
        f"{photos['decode']['decode_resize_per_s_one_core']:.0f}/s with the resize",
        flush=True,
    )
    photos["compute"] = compute_ceiling(version, plan.compute_seconds)
    requests = [[(path.name, path.read_bytes())] for path in workload.served]
    script = loadgen.write_rotating_script(out / "scripts", requests, "photos")
    runner = Runner({1: script}, cpu)
    models_dir = workload.models_dir
    servers = start_servers(
        {
            "service": service_spec(models_dir, PHOTOS, logs, "service-photos"),
            "bare_ceiling": bare_spec(logs, "bare-ceiling-photos", height=height, width=width),
            "bare_unbatched": bare_spec(
                logs, "bare-unbatched-photos", height=height, width=width, model_dir=version
            ),
            "ceiling": ceiling_spec(logs, "ceiling-photos", height=height, width=width),
            "unbatched": service_spec(
                models_dir, PHOTOS, logs, "unbatched-photos", max_batch_size=1
            ),
        }
    )
    try:
        photos["runs"] = runner.interleaved(
            servers,
            [(c, 1) for c in plan.photo_levels],
            plan.duration_s,
            prefix="photos ",
            repeats=plan.repeats,
            repeated=plan.repeated,
        )
    finally:
        stop_all(servers.values())
    photos["workload"] = {
        "photos": len(workload.served),
        "jpeg_bytes": [path.stat().st_size for path in workload.served],
        "size": [640, 480],
        "source": "crops of scikit-learn's sample photos (china.jpg, flower.jpg)",
    }
    return photos


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    if loadgen.wrk_path() is None:
        raise SystemExit("error: wrk is not installed (apt-get install wrk, or `make system-deps`)")
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if len(cpus) > 1 else None
    png = digit_png()
    scripts = {
        n: loadgen.write_script(
            out / "scripts", [(f"digit-{i}.png", png) for i in range(n)], f"x{n}"
        )
        for n in (1, MULTI_IMAGE)
    }
    runner = Runner(scripts, cpu)
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": args.command_line,
        "quick": args.quick,
        "machine": machine_info(),
        "plan": {
            "duration_s": plan.duration_s,
            "levels": list(plan.levels),
            "multi_image": MULTI_IMAGE,
            "multi_levels": list(plan.multi_levels),
            "loadgen": f"wrk 1 thread, <concurrency> keep-alive connections (closed loop), "
            f"pinned to CPU {cpu}; servers unpinned (both cores)",
            "image_bytes": len(png),
            "repeats": plan.repeats,
            "repeated_concurrencies": sorted(plan.repeated),
            "photo_levels": list(plan.photo_levels) if plan.photos else [],
        },
        "models": {},
        "knobs": [],
    }

    print("loadgen probe: wrk against a constant-answer asyncio server", flush=True)
    null = start_null(logs)
    try:
        probe = [
            runner.level(null, c, 1, plan.duration_s, "null server") for c in plan.probe_levels
        ]
    finally:
        null.stop()
    results["loadgen_probe"] = probe

    # --- digits: the default model, HTTP-bound ------------------------------------------------
    digits_dir = ensure_digits(args.cache, args.models_dir)
    digits_version = newest_version_dir(digits_dir, DIGITS)
    print(f"model {DIGITS}: {digits_version}", flush=True)
    meta = json.loads((digits_version / "metadata.json").read_text())
    height, width = meta["input"]["height"], meta["input"]["width"]
    digits: dict[str, Any] = {"version_dir": str(digits_version)}
    digits["compute"] = compute_ceiling(digits_version, plan.compute_seconds)
    servers = start_servers(
        {
            "service": service_spec(digits_dir, DIGITS, logs, "service-digits"),
            "bare_ceiling": bare_spec(logs, "bare-ceiling-digits", height=height, width=width),
            "bare_unbatched": bare_spec(
                logs, "bare-unbatched-digits", height=height, width=width, model_dir=digits_version
            ),
            "ceiling": ceiling_spec(logs, "ceiling", height=height, width=width),
            "unbatched": service_spec(
                digits_dir, DIGITS, logs, "unbatched-digits", max_batch_size=1
            ),
        }
    )
    try:
        points = [(c, 1) for c in plan.levels] + [(c, MULTI_IMAGE) for c in plan.multi_levels]
        digits["runs"] = runner.interleaved(
            servers, points, plan.duration_s, repeats=plan.repeats, repeated=plan.repeated
        )
        for name in ("unbatched", "bare_ceiling", "bare_unbatched"):
            servers.pop(name).stop()
        results["models"][DIGITS] = digits
        if plan.digits_knobs:
            print("settings, digits (each beside the defaults)", flush=True)

            def spawn_digits(kind: str, knob: Knob) -> tuple[ServerProcess, str]:
                name = f"knob-{len(results['knobs'])}-{kind}"
                if kind == "ceiling":
                    return ceiling_spec(logs, name, height=height, width=width, **knob)
                return service_spec(digits_dir, DIGITS, logs, name, **knob)

            results["knobs"] += run_knobs(
                runner,
                servers,
                plan.digits_knobs,
                spawn_digits,
                plan.knob_levels,
                plan.knob_duration_s,
                DIGITS,
            )
    finally:
        stop_all(servers.values())

    # --- the per-request CPU budget of the service (digits, c=32, py-spy) ----------------------
    if plan.budget_s:
        print("CPU budget: the service under wrk, sampled with py-spy", flush=True)
        results["budget"] = budget.run_budget(
            digits_dir,
            DIGITS,
            scripts[1],
            out / "budget",
            duration_s=plan.budget_s,
            cpu=cpu,
        )
        if "skipped" in results["budget"]:
            print(f"  skipped: {results['budget']['skipped']}", flush=True)
        else:
            print(budget.table(results["budget"]), flush=True)

    # --- photos: 640x480 JPEGs to a 96x96x3 model ----------------------------------------------
    if plan.photos:
        results["models"][PHOTOS] = run_photos(plan, args.cache, logs, cpu, out)

    # --- a compute-heavy model ----------------------------------------------------------------
    if plan.heavy:
        name = heavy_name(plan.heavy_arch, plan.heavy_side)
        heavy_dir = ensure_heavy(args.cache, plan.heavy_arch, plan.heavy_side)
        version = newest_version_dir(heavy_dir, name)
        print(f"model {name}: {version}", flush=True)
        heavy: dict[str, Any] = {"version_dir": str(version)}
        first = compute_ceiling(version, plan.compute_seconds)
        servers = dict(
            zip(
                ("service", "unbatched"),
                wait_ready(
                    [
                        service_spec(heavy_dir, name, logs, f"service-{name}"),
                        service_spec(heavy_dir, name, logs, f"unbatched-{name}", max_batch_size=1),
                    ]
                ),
                strict=True,
            )
        )
        try:
            heavy["runs"] = runner.interleaved(
                servers,
                [(c, 1) for c in plan.levels],
                plan.duration_s,
                repeats=plan.repeats,
                repeated=plan.repeated,
            )
            servers.pop("unbatched").stop()
            if plan.heavy_knobs:
                print(f"settings, {name} (each beside the defaults)", flush=True)

                def spawn_heavy(kind: str, knob: Knob) -> tuple[ServerProcess, str]:
                    label = f"knob-{len(results['knobs'])}-{name}"
                    return service_spec(heavy_dir, name, logs, label, **knob)

                results["knobs"] += run_knobs(
                    runner,
                    servers,
                    [("service", knob) for knob in plan.heavy_knobs],
                    spawn_heavy,
                    plan.heavy_knob_levels,
                    plan.knob_duration_s,
                    name,
                )
        finally:
            stop_all(servers.values())
        # Measured again after the load runs: the ratio uses the better of the two, so noise
        # on the machine cannot flatter the service.
        second = compute_ceiling(version, plan.compute_seconds)
        best = max((first, second), key=lambda result: result["images_per_s"])
        heavy["compute"] = {
            **best,
            "measurements_images_per_s": [first["images_per_s"], second["images_per_s"]],
        }
        results["models"][name] = heavy

    results["elapsed_s"] = round(time.monotonic() - started, 1)
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
