"""The two models under test, trained or built once and then reused.

* ``digits``: the default model. ``models/digits`` is used when it holds a version; otherwise
  the real CLI (``python training/train.py``) trains one into the benchmark's cache folder
  (``bench/results/models``, git-ignored), where later runs find it.
* the compute-heavy model (default ``vgg16`` at 48x48x3, 10 classes): random weights, no
  training, published with :func:`training.export.publish` like any version, so the service
  loads it the normal way. ``python -m bench.models heavy --models-dir D --arch A --side N``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.servers import ROOT

DIGITS = "digits"


def has_version(models_dir: Path, name: str) -> bool:
    """True when ``models_dir/name`` holds at least one published version."""
    return any((models_dir / name).glob("*/metadata.json"))


def newest_version_dir(models_dir: Path, name: str) -> Path:
    versions = [
        int(path.parent.name)
        for path in (models_dir / name).glob("*/metadata.json")
        if path.parent.name.isdigit()
    ]
    return models_dir / name / str(max(versions))


def _run(command: list[str]) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def ensure_digits(cache_dir: Path, preferred: Path | None = None) -> Path:
    """The models folder holding ``digits``: ``preferred`` (default ``models/``) when it has a
    version, else ``cache_dir`` (trained there with the real CLI if empty)."""
    preferred = preferred if preferred is not None else ROOT / "models"
    if has_version(preferred, DIGITS):
        return preferred
    if not has_version(cache_dir, DIGITS):
        print(f"training {DIGITS} into {cache_dir} (about 30 s) ...", flush=True)
        _run(
            [
                sys.executable,
                "training/train.py",
                "--models-dir",
                str(cache_dir),
                "--run-dir",
                str(cache_dir / ".runs" / DIGITS),
                "--verbose",
                "0",
            ]
        )
    return cache_dir


def heavy_name(arch: str, side: int) -> str:
    return f"{arch}-{side}"


def ensure_heavy(cache_dir: Path, arch: str, side: int) -> Path:
    """The models folder holding the compute-heavy model (published on first use)."""
    if not has_version(cache_dir, heavy_name(arch, side)):
        print(f"publishing {heavy_name(arch, side)} (random weights) ...", flush=True)
        _run(
            [
                sys.executable,
                "-m",
                "bench.models",
                "heavy",
                "--models-dir",
                str(cache_dir),
                "--arch",
                arch,
                "--side",
                str(side),
            ]
        )
    return cache_dir


def publish_heavy(models_dir: Path, arch: str, side: int, num_classes: int = 10) -> Path:
    """Build ``arch`` at ``side`` x ``side`` x 3 with random weights and publish it."""
    import keras

    from contract.metadata import InputSpec
    from training.architectures import build
    from training.export import export_saved_model, publish

    keras.utils.set_random_seed(0)
    model = build(arch, (side, side, 3), num_classes)
    _, path = publish(
        models_dir=models_dir,
        name=heavy_name(arch, side),
        write_artifacts=lambda tmp: export_saved_model(model, tmp),
        input_spec=InputSpec(height=side, width=side, channels=3, color_mode="rgb"),
        class_names=[str(i) for i in range(num_classes)],
        arch=arch,
        parameter_count=int(model.count_params()),
        training={"note": "random weights: a benchmark model, never trained"},
        data_fingerprint="",
        metrics={},
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models")
    sub = parser.add_subparsers(dest="command", required=True)
    heavy = sub.add_parser("heavy", help="publish the compute-heavy model (random weights)")
    heavy.add_argument("--models-dir", type=Path, required=True)
    heavy.add_argument("--arch", default="vgg16")
    heavy.add_argument("--side", type=int, default=48)
    args = parser.parse_args(argv)
    print(publish_heavy(args.models_dir, args.arch, args.side))
    return 0


if __name__ == "__main__":
    sys.exit(main())
