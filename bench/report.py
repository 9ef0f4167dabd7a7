"""Turn a run's results (the JSON ``python -m bench`` writes) into tables, goals and a plot.

Every figure is put beside a reference from the same run: service / HTTP ceiling, service /
unbatched, service / compute ceiling, p99 / p50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DIGITS = "digits"

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


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured value, target and verdict."""
    rows: list[dict[str, Any]] = []
    models = results.get("models", {})
    digits = models.get(DIGITS, {}).get("runs", {})

    def add(name: str, value: float | None, target: float, at_least: bool) -> None:
        met = None if value is None else (value >= target if at_least else value <= target)
        rows.append(
            {
                "goal": name,
                "value": None if value is None else round(value, 3),
                "target": f"{'>=' if at_least else '<='} {target:g}",
                "met": met,
            }
        )

    def rps(run: str, c: int, images: int = 1, model: dict[str, Any] = digits) -> float | None:
        level = find(model.get(run, []), c, images)
        return None if level is None else level["images_per_s"]

    add(
        "digits c=32: service / HTTP ceiling",
        ratio(rps("service", 32), rps("ceiling", 32)),
        0.80,
        True,
    )
    add(
        "digits c=32: service / unbatched",
        ratio(rps("service", 32), rps("unbatched", 32)),
        3.0,
        True,
    )
    for name, model in models.items():
        if name == DIGITS:
            continue
        compute = model.get("compute", {}).get("images_per_s")
        add(
            f"{name} c=32: service / compute ceiling",
            ratio(rps("service", 32, model=model["runs"]), compute),
            0.85,
            True,
        )
    for name, model in models.items():
        runs = model.get("runs", {})
        one = find(runs.get("service", []), 1)
        one_unbatched = find(runs.get("unbatched", []), 1)
        add(
            f"{name} c=1: p50 service / p50 unbatched",
            ratio(one and one["p50_ms"], one_unbatched and one_unbatched["p50_ms"]),
            1.2,
            False,
        )
        level = find(runs.get("service", []), 64)
        add(
            f"{name} c=64: service p99 / p50",
            ratio(level and level["p99_ms"], level and level["p50_ms"]),
            4.0,
            False,
        )
    return rows


def level_table(model: dict[str, Any]) -> str:
    """One row per load level: the service beside its references."""
    runs = model.get("runs", {})
    service = runs.get("service", [])
    compute = model.get("compute", {}).get("images_per_s")
    lines = [
        "| conc. | img/req | service req/s | img/s | p50 ms | p95 ms | p99 ms | mean batch "
        "| unbatched req/s | p50 ms | p99 ms | HTTP ceiling req/s | p99 ms "
        "| svc / ceiling | svc / unbatched | svc / compute | other load |",
        "|" + "---|" * 17,
    ]
    for level in service:
        c, n = level["concurrency"], level["images_per_request"]
        unbatched = find(runs.get("unbatched", []), c, n)
        ceiling = find(runs.get("ceiling", []), c, n)
        lines.append(
            "| "
            + " | ".join(
                [
                    str(c),
                    str(n),
                    _fmt(level["rps"], 0),
                    _fmt(level["images_per_s"], 0),
                    _fmt(level["p50_ms"]),
                    _fmt(level["p95_ms"]),
                    _fmt(level["p99_ms"]),
                    _fmt(level.get("mean_batch_size"), 1),
                    _fmt(unbatched and unbatched["rps"], 0),
                    _fmt(unbatched and unbatched["p50_ms"]),
                    _fmt(unbatched and unbatched["p99_ms"]),
                    _fmt(ceiling and ceiling["rps"], 0),
                    _fmt(ceiling and ceiling["p99_ms"]),
                    _fmt(ratio(level["images_per_s"], ceiling and ceiling["images_per_s"])),
                    _fmt(ratio(level["images_per_s"], unbatched and unbatched["images_per_s"])),
                    _fmt(ratio(level["images_per_s"], compute)),
                    _fmt(level.get("extra", {}).get("other_load_cores"), 2),
                ]
            )
            + " |"
        )
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
            versus = ratio(level["rps"], base and base["rps"])
            cells += [
                f"{level['rps']:.0f} ({_fmt(versus)})",
                f"{level['p50_ms']:.1f} / {level['p99_ms']:.1f}",
            ]
        setting = ", ".join(f"`{k}={v}`" for k, v in entry["settings"].items())
        kind = "HTTP ceiling" if entry.get("kind") == "ceiling" else "service"
        lines.append(f"| {entry['model']} | {kind} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any]) -> str:
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
    for name, model in results.get("models", {}).items():
        compute = model.get("compute", {})
        parts += [
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
            level_table(model),
            "",
        ]
    parts += [
        "Columns: req/s and latency percentiles from wrk; mean batch from the service's "
        "`imgcls_batch_size`; other load = cores used meanwhile by processes outside the "
        "benchmark (the machine is shared); ratios are images/s over the reference's.",
        "",
    ]
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
    styles = {"service": "o-", "unbatched": "s--", "ceiling": "^:"}
    colors = {"service": "C1", "unbatched": "C2", "ceiling": "C0"}
    names = {
        "service": "service (batched)",
        "unbatched": "unbatched (max_batch_size=1)",
        "ceiling": "HTTP ceiling (no model)",
    }
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
