"""``python -m training.compile models/<name>/<version> ...``: compile versions published
before compiled runtimes (or again, on another machine), in place.

The version's Keras weights are built back into its architecture, its test split and a
calibration sample of its training split are made again from the options and data it recorded
(the same seed gives the same split; the data's fingerprint must match), and
:func:`training.runtimes.compile_runtimes` writes, checks and times the artifacts. The version's
own files are left as they were; ``runtimes/`` and then ``metadata.json`` are replaced.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from contract.metadata import (
    InvalidModelVersionError,
    ModelMetadata,
    verify_version_dir,
    write_metadata,
)
from contract.runtimes import RUNTIMES_DIR, RuntimeReport
from training.runtimes import (
    CALIBRATION_IMAGES,
    MAX_TEST_IMAGES,
    HeldOut,
    compile_runtimes,
    take_images,
)

logger = logging.getLogger("training")


def compile_version(version_dir: Path) -> RuntimeReport | None:
    """Compile a published version in place: its Keras weights are rebuilt into the model, its
    data split again from the options recorded in its metadata, the artifacts written under
    ``runtimes/`` and ``metadata.json`` replaced (atomically) with their report.

    Raises:
        UserError: the version cannot be compiled (damaged, no weights, data gone).
    """
    from training.errors import UserError

    try:
        metadata = verify_version_dir(version_dir)
    except InvalidModelVersionError as exc:
        raise UserError(f"{version_dir} cannot be compiled: {exc}") from None
    model = rebuild_model(version_dir, metadata)
    test, calibration = recorded_splits(metadata)
    staging = Path(tempfile.mkdtemp(prefix=".compile-", dir=version_dir.parent))
    try:
        # Build in a copy (the SavedModel the artifacts are checked against, by hard links),
        # then move the finished runtimes/ in: a crash leaves the version as it was.
        work = staging / version_dir.name
        shutil.copytree(version_dir, work, copy_function=os.link, ignore=_skip_runtimes)
        report = compile_runtimes(model, work, test, calibration.images)
        if report is None:
            return None
        old = version_dir / RUNTIMES_DIR
        if old.exists():
            shutil.rmtree(old)
        if (work / RUNTIMES_DIR).exists():
            os.replace(work / RUNTIMES_DIR, old)
        write_metadata(version_dir, metadata.model_copy(update={"runtimes": report}))
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _skip_runtimes(directory: str, names: list[str]) -> list[str]:
    return [RUNTIMES_DIR] if RUNTIMES_DIR in names and Path(directory).name.isdigit() else []


def rebuild_model(version_dir: Path, metadata: ModelMetadata) -> Any:
    """The version's Keras model: its architecture built again, its published weights loaded."""
    from training.architectures import build
    from training.errors import UserError
    from training.warm_start import WEIGHTS_FILE

    weights = version_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(
            f"{version_dir} has no {WEIGHTS_FILE} (published before versions carried their "
            "Keras weights): train a new version instead"
        )
    shape = (metadata.input.height, metadata.input.width, metadata.input.channels)
    model = build(
        metadata.arch,
        shape,
        metadata.num_classes,
        normalize_digits=bool(metadata.training.get("normalize_digits")),
    )
    model.load_weights(str(weights))
    return model


def recorded_splits(metadata: ModelMetadata) -> tuple[HeldOut, HeldOut]:
    """(test split, calibration sample of the training split), made again from the data and
    options the version recorded (the same seed gives the same split)."""
    from training.errors import UserError
    from training.train import build_parser, load, make_run_datasets, prepare_devices

    recorded = metadata.training
    summary = metadata.data_summary
    argv: list[str] = []
    if summary is not None and summary.source != "sklearn:digits":
        sources = [s.path for s in summary.sources] if summary.sources else [summary.source]
        for source in sources:
            argv += ["--data", source]
    args = build_parser().parse_args(argv)
    for option in ("seed", "val_split", "test_split", "batch_size", "normalize_digits"):
        if option in recorded:
            setattr(args, option, recorded[option])
    args.input_shape = (metadata.input.height, metadata.input.width, metadata.input.channels)
    args.augment = False
    args.handwriting_augment = False
    args.class_weight = "none"
    args.cache = None
    args.run_dir = Path(tempfile.mkdtemp(prefix="imgcls-compile-"))
    try:
        loaded = load(args)
    except (UserError, OSError) as exc:
        raise UserError(f"cannot read the version's training data again: {exc}") from None
    finally:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    if loaded.data.fingerprint != metadata.data_fingerprint:
        raise UserError(
            "the version's training data changed since it was published (its fingerprint "
            "differs): the test split cannot be made again"
        )
    datasets = make_run_datasets(args, loaded, prepare_devices(args))
    return take_images(datasets.test, MAX_TEST_IMAGES), take_images(
        datasets.train, CALIBRATION_IMAGES
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.compile",
        description="Compile published versions for OpenVINO (fp32, bf16, int8), check each "
        "artifact against the SavedModel on the version's test split and record it in "
        "metadata.json.",
    )
    parser.add_argument("versions", nargs="+", type=Path, help="models/<name>/<version> folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    from training.errors import UserError
    from training.train import EXIT_USER_ERROR, import_tensorflow

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import_tensorflow(show_log=False)
    for version_dir in args.versions:
        try:
            report = compile_version(version_dir)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        if report is None:
            print(f"{version_dir}: not compiled (see the warning above)", file=sys.stderr)
            return 1
        for artifact in report.artifacts:
            verdict = "passed" if artifact.passed else f"not passed: {artifact.reason}"
            print(
                f"{version_dir}/{RUNTIMES_DIR}/{artifact.name}: top-1 agreement "
                f"{artifact.top1_agreement:.4f}, images/s {artifact.images_per_s} "
                f"(SavedModel {report.savedmodel_images_per_s}); {verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
