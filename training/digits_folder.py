"""Write scikit-learn's bundled digits as a folder of class sub-folders, the layout
``train.py --data`` reads, so that they can be trained together with other folders:

    python -m training.digits_folder data/digits
    python training/train.py --data data/digits --data data/feedback/digits \\
        --input-shape 28,28,1 --normalize-digits

Each image (:func:`training.data.digit_images`: 28x28 grey, light ink on black) becomes
``DIR/<digit>/<index>.png``, ``index`` its position (0..1796) in the bundled set. The files are
the same bytes on every run (same Pillow), so the folder's data fingerprint is too. Prints one
line; a user mistake ends with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from training.data import digit_images
from training.errors import UserError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line: the folder, and --force to write into one that holds files."""
    parser = argparse.ArgumentParser(
        prog="python -m training.digits_folder",
        description="Write scikit-learn's bundled digits (1,797 images, 28x28 grey, light ink on "
        "black) as DIR/<digit>/<index>.png, a folder train.py --data reads. Train them with "
        "other folders of the same class names: train.py --data DIR --data data/feedback/digits "
        "(add --input-shape 28,28,1 --normalize-digits for what the default digits model does).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder to write (created)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that is not empty: files of the same name are replaced, other "
        "files are left alone (and train.py --data reads them too)",
    )
    return parser


def check_target(folder: Path, *, force: bool) -> None:
    """Refuse a path that is not a folder, and a non-empty folder unless ``force``: training
    reads every image under it, so stray files would silently join the digits."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    if folder.is_dir() and not force and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty; choose a new folder or pass --force")


def write_digits(folder: Path) -> tuple[int, int]:
    """Write every bundled digit as ``folder/<digit>/<index>.png``; returns (files, classes)."""
    images, labels = digit_images()
    classes = sorted(set(labels.tolist()))
    for digit in classes:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / str(int(label)) / f"{index}.png")
    return len(labels), len(classes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_target(args.dir, force=args.force)
        written, classes = write_digits(args.dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # no permission, disk full: the user's to fix, not a traceback
        print(f"error: cannot write {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {written} PNG files into {classes} class folders under {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
