"""What one ``python -m bench`` run measures: levels, durations, repeats, which parts run.

``--quick`` shrinks every part of it (a smoke run of the same harness).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from bench.knobs import DIGITS_KNOBS, HEAVY_KNOBS, KindKnob

MULTI_IMAGE = 8  # images per request in the multi-image runs


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
    digits_knobs: list[KindKnob] = field(default_factory=list)
    heavy_knobs: list[KindKnob] = field(default_factory=list)


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
        digits_knobs=list(DIGITS_KNOBS) if knobs else [],
        heavy_knobs=list(HEAVY_KNOBS) if knobs else [],
    )


def describe(plan: Plan, cpu: int | None, image_bytes: int) -> dict[str, Any]:
    """The plan as ``results.json`` records it."""
    return {
        "duration_s": plan.duration_s,
        "levels": list(plan.levels),
        "multi_image": MULTI_IMAGE,
        "multi_levels": list(plan.multi_levels),
        "loadgen": f"wrk 1 thread, <concurrency> keep-alive connections (closed loop), "
        f"pinned to CPU {cpu}; servers unpinned (both cores)",
        "image_bytes": image_bytes,
        "repeats": plan.repeats,
        "repeated_concurrencies": sorted(plan.repeated),
        "photo_levels": list(plan.photo_levels) if plan.photos else [],
    }
