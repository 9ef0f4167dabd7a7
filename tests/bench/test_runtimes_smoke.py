"""``bench.runtimes`` without a model or a server: its bookkeeping and its report.

The run itself (``python -m bench.runtimes --quick``, a few minutes) is not repeated here.
"""

from __future__ import annotations

from typing import Any

from bench import runtimes


def test_rotated_starts_each_round_elsewhere() -> None:
    items = ["savedmodel", "openvino-fp32", "openvino-int8"]
    assert runtimes.rotated(items, 0) == items
    assert runtimes.rotated(items, 4) == ["openvino-fp32", "openvino-int8", "savedmodel"]
    assert runtimes.rotated([], 3) == []


def test_compile_time_is_read_from_the_training_log() -> None:
    log = "... INFO training: compiled runtimes in 13.9 s\npublished models/digits/2"
    assert runtimes.compiled_seconds(log) == 13.9
    assert runtimes.compiled_seconds("no runtimes compiled") is None


def _level(concurrency: int, rps: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "rps": rps,
        "images_per_s": rps,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "mean_batch_size": 8.0,
        "extra": {"other_load_cores": 0.1},
    }


def test_the_summary_states_each_goal_and_its_distance() -> None:
    row = {"model": "digits", "threads": 1, "batch_size": 1}
    results: dict[str, Any] = {
        "command": "python -m bench.runtimes --quick",
        "started_at": "2026-12-03 15:00 UTC",
        "elapsed_s": 100.0,
        "openvino": "2026.4.1",
        "compiled_runtime": "auto",
        "machine": {
            "cpu_model": "CPU",
            "usable_cores": 2,
            "cpu_flags": ["avx2"],
            "tensorflow": "2.21.0",
            "loadavg_at_start": [0.5, 0.5, 0.5],
        },
        "plan": {"duration_s": 1, "repeats": 1, "startup_rounds": 1},
        "in_process": {
            "rounds": 1,
            "seconds_per_timing": 0.1,
            "threads": [1],
            "batch_sizes": [1],
            "other_load_cores": {"median": 0.1, "min": 0.0, "max": 0.2},
            "rows": [
                {**row, "runtime": "savedmodel", "images_per_s": 100.0},
                {**row, "runtime": "openvino-int8", "images_per_s": 250.0},
            ],
        },
        "checks": {
            "digits": [
                {
                    "artifact": "openvino-int8",
                    "top1_agreement": 1.0,
                    "max_abs_difference": 0.04,
                    "passed": True,
                    "reason": "",
                }
            ]
        },
        "end_to_end": {
            "photos": {
                "runtimes": {"savedmodel": {"name": "savedmodel"}, "auto": {"name": "int8"}},
                "runs": {
                    "savedmodel": [_level(32, 250.0)],
                    "auto": [_level(32, 280.0)],
                    "bare_ceiling": [_level(32, 100.0)],
                },
                "x_bare_ceiling": {"savedmodel": {"32": 2.5}, "auto": {"32": 2.8}},
            }
        },
        "publish": {},
    }
    results["goals"] = runtimes.goals(results)
    assert results["goals"][0]["met"] is False
    assert results["goals"][0]["distance"] == 0.2
    summary = runtimes.summary_markdown(results)
    assert "| openvino-int8 | 250 (2.50) | 1.0000 | 0.04 | yes |" in summary
    assert "**no** (0.20 short)" in summary
