"""``python -m service.feedback FOLDER [--export DIR]``: the captured samples of one model's
capture folder (``IMGCLS_CAPTURE_DIR/<model>``), one record per line, oldest first; or, with
``--export``, each image and its record written out as files (a privacy audit, a look at what
arrives)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.feedback.samples import SampleReader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.feedback",
        description="List (or export) the captured samples of one model's capture folder.",
    )
    parser.add_argument("folder", type=Path, help="e.g. data/captured/digits")
    parser.add_argument(
        "--export", type=Path, metavar="DIR", help="write <id>.<suffix> and <id>.json into DIR"
    )
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder (a model's folder under IMGCLS_CAPTURE_DIR)")
    if args.export is not None:
        args.export.mkdir(parents=True, exist_ok=True)
    count = 0
    for sample in SampleReader(args.folder).samples():
        count += 1
        if args.export is None:
            print(json.dumps(sample.record))
            continue
        (args.export / f"{sample.id}.{sample.suffix}").write_bytes(sample.data)
        (args.export / f"{sample.id}.json").write_text(json.dumps(sample.record, indent=1) + "\n")
    if args.export is not None:
        print(f"{count} samples written to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
