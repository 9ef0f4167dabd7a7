"""The settings sweep: each setting changed alone, on a fresh server, measured interleaved with
a running server with the defaults, so each row is also a ratio to the defaults.

:data:`DIGITS_KNOBS` and :data:`HEAVY_KNOBS` are what ``python -m bench`` tries (``--no-knobs``
skips them); BENCHMARKS.md says what they showed and why the defaults are what they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import Runner
from bench.references import Served, spec
from bench.servers import ServerProcess, wait_ready

Knob = dict[str, object]
#: (server of the set to change: "service" or "ceiling", the settings changed).
KindKnob = tuple[str, Knob]

DIGITS_KNOBS: list[KindKnob] = [
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

HEAVY_KNOBS: list[KindKnob] = [
    ("service", {"workers": 1}),
    ("service", {"tf_inter_op_threads": 1}),
    ("service", {"tf_intra_op_threads": 1, "tf_inter_op_threads": 1}),
]


def knob_label(settings: Knob) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items()) or "defaults"


def run_knobs(
    runner: Runner,
    baselines: dict[str, ServerProcess],
    knobs: list[KindKnob],
    served: Served,
    logs: Path,
    levels: tuple[int, ...],
    duration_s: int,
    first_index: int = 0,
) -> list[dict[str, Any]]:
    """Each setting alone, on a fresh server of its kind on ``served``, interleaved with the
    running defaults server of the same kind (``baselines[kind]``); one entry per setting.
    ``first_index`` numbers the servers' log files on from earlier sweeps of the run."""
    model = served.model
    entries = []
    for index, (kind, knob) in enumerate(knobs, start=first_index):
        log_name = f"knob-{index}-{model}-{kind}"
        server = wait_ready([spec(kind, served, logs, log_name, **knob)])[0]
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
