"""``--normalize-digits`` / ``--handwriting-augment``: on for the bundled digits, off for
``--data``, refused where they cannot work (one ``error:`` line, exit 2, via UserError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.errors import UserError
from training.train import build_parser, resolve_digit_options


def resolved(*argv: str, shape: tuple[int, int, int] = (28, 28, 1)) -> tuple[bool, bool]:
    args = build_parser().parse_args(list(argv))
    resolve_digit_options(args, shape)
    return args.normalize_digits, args.handwriting_augment


def test_the_bundled_digits_get_normalisation_and_handwriting_augmentation_by_default() -> None:
    assert resolved() == (True, True)
    assert resolved("--no-handwriting-augment") == (True, False)
    assert resolved("--no-normalize-digits") == (False, False)


def test_a_data_folder_gets_neither_unless_asked(tmp_path: Path) -> None:
    assert resolved("--data", str(tmp_path)) == (False, False)
    assert resolved("--data", str(tmp_path), "--normalize-digits") == (True, False)
    assert resolved("--data", str(tmp_path), shape=(64, 64, 3)) == (False, False)


def test_the_bundled_digits_on_an_rgb_input_are_not_normalised_by_default() -> None:
    assert resolved(shape=(28, 28, 3)) == (False, False)


@pytest.mark.parametrize(
    ("argv", "shape", "needle"),
    [
        (["--normalize-digits"], (28, 28, 3), "grayscale"),
        (["--data", "somewhere", "--handwriting-augment"], (28, 28, 1), "bundled digits only"),
    ],
)
def test_combinations_that_cannot_work_are_user_errors(
    argv: list[str], shape: tuple[int, int, int], needle: str
) -> None:
    with pytest.raises(UserError, match=needle):
        resolved(*argv, shape=shape)
