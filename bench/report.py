"""Turn a run's results (the JSON ``python -m bench`` writes) into tables, goals and a plot.

Every figure is put beside a reference from the same run (the set is :mod:`bench.references`):
service / HTTP ceiling, service / unbatched, service / compute ceiling, p99 / p50. Also the
per-request CPU budget's table (:func:`budget_table`), for ``python -m bench`` and
``python -m bench.budget`` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import references

DIGITS = "digits"
PHOTOS = "photos"

Level = dict[str, Any]


def find(levels: list[Level], concurrency: int, images: int = 1) -> Level | None:
    """The level with this concurrency and images per request, or None."""
    for level in levels:
        if level["concurrency"] == concurrency and level["images_per_request"] == images:
            return level
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _get(level: Level | None, key: str) -> float | None:
    return None if level is None else level.get(key)


def cpu_ms_per_request(level: Level | None) -> float | None:
    """The server's CPU time per answered request (all its processes and threads), ms."""
    if level is None or not level.get("server_cpu_s") or not level.get("requests"):
        return None
    return float(level["server_cpu_s"]) * 1000 / float(level["requests"])


#: The references of the main tables, in column order: run name -> column title.
REFERENCES = {server.name: server.title for server in references.REFERENCES}


Goal = dict[str, Any]


def _goal(name: str, value: float | None, target: float, at_least: bool) -> Goal:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {
        "goal": name,
        "value": None if value is None else round(value, 3),
        "target": f"{'>=' if at_least else '<='} {target:g}",
        "met": met,
    }


def _rate(runs: dict[str, list[Level]], run: str, c: int) -> float | None:
    """Images/s of ``run`` at concurrency ``c``, one image per request."""
    return _get(find(runs.get(run, []), c), "images_per_s")


def _versus(runs: dict[str, list[Level]], reference: str, c: int) -> float | None:
    """Service ÷ ``reference`` in images/s at concurrency ``c``."""
    return ratio(_rate(runs, "service", c), _rate(runs, reference, c))


def _throughput_goals(models: dict[str, Any]) -> list[Goal]:
    digits = models.get(DIGITS, {}).get("runs", {})
    rows = []
    for c in (32, 64):
        rows += [
            _goal(
                f"digits c={c}: service / bare ceiling",
                _versus(digits, "bare_ceiling", c),
                0.80,
                True,
            ),
            _goal(
                f"digits c={c}: service / bare unbatched",
                _versus(digits, "bare_unbatched", c),
                3.0,
                True,
            ),
        ]
    photo_runs = models.get(PHOTOS, {}).get("runs", {})
    if photo_runs:
        rows.append(
            _goal(
                "photos c=32: service / bare ceiling",
                _versus(photo_runs, "bare_ceiling", 32),
                3.0,
                True,
            )
        )
    rows += [
        _goal(
            "digits c=32: service / own-stack ceiling", _versus(digits, "ceiling", 32), 0.80, True
        ),
        _goal(
            "digits c=32: service / service unbatched", _versus(digits, "unbatched", 32), 3.0, True
        ),
    ]
    for name, model in models.items():
        if name in (DIGITS, PHOTOS):
            continue
        compute = model.get("compute", {}).get("images_per_s")
        rows.append(
            _goal(
                f"{name} c=32: service / compute ceiling",
                ratio(_rate(model["runs"], "service", 32), compute),
                0.85,
                True,
            )
        )
    return rows


def _latency_goals(name: str, runs: dict[str, list[Level]]) -> list[Goal]:
    def p50(run: str) -> float | None:
        return _get(find(runs.get(run, []), 1), "p50_ms")

    rows = [
        _goal(
            f"{name} c=1: p50 service / p50 unbatched",
            ratio(p50("service"), p50("unbatched")),
            1.2,
            False,
        )
    ]
    if "bare_unbatched" in runs:
        rows.append(
            _goal(
                f"{name} c=1: p50 service / p50 bare unbatched",
                ratio(p50("service"), p50("bare_unbatched")),
                1.2,
                False,
            )
        )
    level = find(runs.get("service", []), 64)
    rows.append(
        _goal(
            f"{name} c=64: service p99 / p50",
            ratio(_get(level, "p99_ms"), _get(level, "p50_ms")),
            4.0,
            False,
        )
    )
    return rows


def goals(results: dict[str, Any]) -> list[Goal]:
    """The issue's goals, each with its measured value, target and verdict."""
    models = results.get("models", {})
    rows = _throughput_goals(models)
    for name, model in models.items():
        rows += _latency_goals(name, model.get("runs", {}))
    errors = sum(
        sum(level.get("errors", {}).values())
        for model in models.values()
        for level in model.get("runs", {}).get("service", [])
    )
    rows.append(_goal("service: error answers under load, every model and level", errors, 0, False))
    return rows


def level_table(model: dict[str, Any]) -> str:
    """One row per load level: the service beside every reference of the same run, each as
    ``req/s (service ÷ reference)``, ratios of images/s."""
    runs = model.get("runs", {})
    service = runs.get("service", [])
    compute = model.get("compute", {}).get("images_per_s")
    decode = model.get("decode", {}).get("decode_per_s_one_core")
    present = [name for name in REFERENCES if name in runs]
    header = (
        ["conc.", "img/req", "service req/s", "p50 ms", "p99 ms", "mean batch", "CPU ms/req"]
        + [f"{REFERENCES[name]} req/s (svc ÷)" for name in present]
        + ["bare ceiling CPU ms/req"] * ("bare_ceiling" in runs)
        + ["svc / compute"]
        + ["svc / JPEG decode per core"] * (decode is not None)
        + ["other load"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for level in service:
        c, n = level["concurrency"], level["images_per_request"]
        cells = [
            str(c),
            str(n),
            _fmt(level["rps"], 0),
            _fmt(level["p50_ms"]),
            _fmt(level["p99_ms"]),
            _fmt(level.get("mean_batch_size"), 1),
            _fmt(cpu_ms_per_request(level)),
        ]
        for name in present:
            other = find(runs[name], c, n)
            if other is None:
                cells.append("–")
                continue
            versus = ratio(level["images_per_s"], other["images_per_s"])
            cells.append(f"{other['rps']:.0f} ({_fmt(versus)})")
        if "bare_ceiling" in runs:
            cells.append(_fmt(cpu_ms_per_request(find(runs["bare_ceiling"], c, n))))
        cells.append(_fmt(ratio(level["images_per_s"], compute)))
        if decode is not None:
            cells.append(_fmt(ratio(level["images_per_s"], decode)))
        cells.append(_fmt(level.get("extra", {}).get("other_load_cores"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def knob_table(results: dict[str, Any]) -> str:
    """Each setting changed alone, measured beside a server with the defaults: req/s with its
    ratio to the defaults, and p50 / p99 latency, per concurrency."""
    knobs = results.get("knobs", [])
    if not knobs:
        return ""
    levels = sorted({lvl["concurrency"] for entry in knobs for lvl in entry["levels"]})
    header = (
        "| model | server | setting | "
        + " | ".join(f"c={c} req/s (× defaults) | c={c} p50 / p99 ms" for c in levels)
        + " |"
    )
    lines = [header, "|" + "---|" * (3 + 2 * len(levels))]
    for entry in knobs:
        cells = []
        for c in levels:
            level = find(entry["levels"], c)
            base = find(entry.get("baseline", []), c)
            if level is None:
                cells += ["", ""]
                continue
            versus = ratio(level["rps"], _get(base, "rps"))
            cells += [
                f"{level['rps']:.0f} ({_fmt(versus)})",
                f"{level['p50_ms']:.1f} / {level['p99_ms']:.1f}",
            ]
        setting = ", ".join(f"`{k}={v}`" for k, v in entry["settings"].items())
        kind = "HTTP ceiling" if entry.get("kind") == "ceiling" else "service"
        lines.append(f"| {entry['model']} | {kind} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(budget: dict[str, Any]) -> str:
    """The budget as a Markdown table (µs of CPU per request and share of the total)."""
    total = budget["server_cpu_us_per_request"] or 1
    workers = budget.get("workers", 1)
    lines = [
        f"c={budget['concurrency']}, {budget['duration_s']:.0f} s, {workers} "
        f"worker{'s' if workers != 1 else ''}: {budget['rps']:.0f} req/s, "
        f"p50 {budget['p50_ms']:.1f} ms, p99 {budget['p99_ms']:.1f} ms, mean batch "
        f"{budget['mean_batch']}, server CPU {budget['server_cpu_us_per_request']:.0f} µs/req "
        f"(event loop {budget['loop_cpu_us_per_request']:.0f} µs/req, busy "
        f"{budget['loop_busy_fraction']:.0%} of the time); {budget['py_spy_samples_on_loop']} "
        "py-spy samples on the loop.",
        "",
        "| where | part | µs CPU / request | share |",
        "|---|---|---:|---:|",
    ]
    for row in budget["rows"]:
        lines.append(
            f"| {row['where']} | {row['row']} | {row['us_per_request']:.0f} | "
            f"{row['us_per_request'] / total:.0%} |"
        )
    lines.append(f"| | **total** | **{budget['server_cpu_us_per_request']:.0f}** | 100% |")
    return "\n".join(lines)


def budget_comparison(budgets: list[dict[str, Any]]) -> str:
    """Several budgets side by side (µs of CPU per request by row; rows that are 0 in every
    budget left out), with each one's rate, batch and loop load below."""
    names = [row["row"] for row in budgets[0]["rows"]]
    where = {row["row"]: row["where"] for row in budgets[0]["rows"]}
    values = [{row["row"]: row["us_per_request"] for row in b["rows"]} for b in budgets]
    lines = [
        "| where | part | "
        + " | ".join(b.get("title", b.get("workload", "?")) for b in budgets)
        + " |",
        "|---|---|" + "---:|" * len(budgets),
    ]
    for name in names:
        cells = [v.get(name, 0.0) for v in values]
        if any(round(cell) for cell in cells):
            lines.append(
                f"| {where[name]} | {name} | " + " | ".join(f"{c:.0f}" for c in cells) + " |"
            )
    lines.append(
        "| | **total** | "
        + " | ".join(f"**{b['server_cpu_us_per_request']:.0f}**" for b in budgets)
        + " |"
    )
    lines.append("")
    for b in budgets:
        lines.append(
            f"* {b.get('title', '?')}: {b['workers']} worker(s), {b['rps']:.0f} req/s, p50 "
            f"{b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, mean batch {b['mean_batch']}, "
            f"loops busy {', '.join(f'{x:.0%}' for x in b.get('loops_busy_fraction', []))}, "
            f"{b['py_spy_samples_on_loop']} samples on the loops, errors "
            f"{sum(b['errors'].values())} / server {b.get('server_not_ok') or 0}, load "
            f"generator {b.get('loadgen_cpu_us_per_request', 0):.0f} µs/req."
        )
    return "\n".join(lines)


def _run_header(results: dict[str, Any]) -> list[str]:
    """The command, the machine, the load generator and its probe."""
    machine = results["machine"]
    parts = [
        f"Command: `{results['command']}`{' (quick)' if results.get('quick') else ''}; "
        f"{results.get('elapsed_s', '?')} s.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"({', '.join(machine['cpu_flags'])}), {machine['memory_gib']} GiB; Python "
        f"{machine['python']}, TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
        f"FastAPI {machine['fastapi']}, uvicorn {machine['uvicorn']}; {machine['wrk']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}.",
        "",
        f"Load generator: {results['plan']['loadgen']}; "
        f"{results['plan']['duration_s']} s per level.",
        "",
    ]
    probe = results.get("loadgen_probe", [])
    if probe:
        best = max(probe, key=lambda level: level["rps"])
        parts += [
            f"Loadgen probe (constant-answer server): {best['rps']:.0f} req/s at "
            f"c={best['concurrency']}, wrk using {best['loadgen_cpu_s'] / best['duration_s']:.2f} "
            "of a core.",
            "",
        ]
    return parts


def _model_section(name: str, model: dict[str, Any]) -> list[str]:
    """One model: its compute ceiling, the photo workload where there is one, its levels."""
    compute = model.get("compute", {})
    parts = [
        f"### {name}: {compute.get('arch', '?')} {compute.get('input', '')}, "
        f"{compute.get('parameters', 0):,} parameters",
        "",
        f"Compute ceiling: {compute.get('images_per_s', 0):.0f} img/s at batch "
        f"{compute.get('best_batch_size')} ({compute.get('ms_per_image_at_best')} ms/img); "
        "per batch size (serve / service's predict, img/s): "
        + ", ".join(
            f"{row['batch_size']}: {row['serve_images_per_s']:.0f} / "
            f"{row['predict_images_per_s']:.0f}"
            for row in compute.get("rows", [])
        )
        + ".",
        "",
    ]
    decode = model.get("decode")
    if decode:
        workload = model.get("workload", {})
        sizes = workload.get("jpeg_bytes") or [decode["mean_jpeg_bytes"]]
        parts += [
            f"Workload: {decode['photos']} distinct 640x480 JPEG photos "
            f"({min(sizes) / 1000:.0f}-{max(sizes) / 1000:.0f} KB, "
            f"{workload.get('source', 'real photographs')}), one per request, cycled. "
            f"This machine's JPEG decode rate on one core (Pillow, full size, one thread, "
            f"the same photos): {decode['decode_per_s_one_core']:.0f}/s "
            f"({decode['decode_ms']} ms each); with the resize to the model input: "
            f"{decode['decode_resize_per_s_one_core']:.0f}/s.",
            "",
        ]
    return [*parts, level_table(model), ""]


def _columns_note(plan: dict[str, Any]) -> str:
    repeated = " and ".join(f"c={c}" for c in plan.get("repeated_concurrencies", []))
    repeats = (
        f" Points at {repeated or 'every level'} measured {plan['repeats']} times, interleaved; "
        "the run with the median rate is shown (all rates in results.json)."
        if plan.get("repeats", 1) > 1
        else ""
    )
    return (
        "Columns: req/s and latency percentiles from wrk; mean batch from the service's "
        "`imgcls_batch_size`; CPU ms/req = the server's CPU time (all processes and threads) "
        "per answered request; each reference as req/s with, in brackets, service ÷ reference "
        "(images/s); other load = cores used meanwhile by processes outside the "
        "benchmark (the machine is shared). References: bare ceiling = minimal FastAPI app, "
        "Pillow decode + resize, constant answer (`bench/bare_app.py`); bare unbatched = the "
        "same + one SavedModel call per request in the thread pool; own-stack ceiling = the "
        "service's server stack and upload path without a model (`bench/ceiling_app.py`); "
        "service unbatched = `IMGCLS_MAX_BATCH_SIZE=1`." + repeats
    )


def summary_markdown(results: dict[str, Any]) -> str:
    parts = _run_header(results)
    for name, model in results.get("models", {}).items():
        parts += _model_section(name, model)
    parts += [_columns_note(results.get("plan", {})), ""]
    cpu_budget = results.get("budget")
    if cpu_budget:
        parts += ["### Per-request CPU budget (digits, `python -m service`, py-spy)", ""]
        if "skipped" in cpu_budget:
            parts += [f"Skipped: {cpu_budget['skipped']}.", ""]
        else:
            parts += [budget_table(cpu_budget), ""]
    parts += ["### Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for row in goals(results):
        verdict = {True: "yes", False: "**no**", None: "–"}[row["met"]]
        parts.append(f"| {row['goal']} | {_fmt(row['value'])} | {row['target']} | {verdict} |")
    knobs = knob_table(results)
    if knobs:
        parts += ["", "### Settings (one changed at a time from the defaults)", "", knobs]
    return "\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Throughput and p99 against concurrency, service beside its references; one row per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a project dependency
        return None
    models = results.get("models", {})
    if not models:
        return None
    figure, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    styles = {
        "service": "o-",
        "unbatched": "s--",
        "ceiling": "^:",
        "bare_ceiling": "v:",
        "bare_unbatched": "d--",
    }
    colors = {
        "service": "C1",
        "unbatched": "C2",
        "ceiling": "C0",
        "bare_ceiling": "C4",
        "bare_unbatched": "C3",
    }
    names = {server.name: server.label for server in references.SERVERS}
    for row, (name, model) in enumerate(models.items()):
        rate_axis, p99_axis = axes[row]
        for run, levels in model.get("runs", {}).items():
            single = [level for level in levels if level["images_per_request"] == 1]
            xs = [level["concurrency"] for level in single]
            style = {"color": colors.get(run), "label": names.get(run, run)}
            rate_axis.plot(
                xs, [level["images_per_s"] for level in single], styles.get(run, "x-"), **style
            )
            p99_axis.plot(xs, [level["p99_ms"] for level in single], styles.get(run, "x-"), **style)
        compute = model.get("compute", {}).get("images_per_s")
        if compute:
            rate_axis.axhline(
                compute, color="grey", linestyle="-.", label="compute ceiling (in-process)"
            )
        rate_axis.set(
            title=f"{name}: throughput",
            xlabel="concurrent requests",
            ylabel="images/s",
            xscale="log",
        )
        p99_axis.set(
            title=f"{name}: p99 latency",
            xlabel="concurrent requests",
            ylabel="ms",
            xscale="log",
            yscale="log",
        )
        for axis in (rate_axis, p99_axis):
            axis.set_xticks([1, 8, 32, 64, 128], labels=["1", "8", "32", "64", "128"])
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
