"""``python -m training.digits_folder DIR``: the bundled digits as a folder ``train.py --data``
reads, the same pixels, refusing to mix them into a folder that holds other files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.processes import run_module
from training.data import digit_images, load_folder_data
from training.digits_folder import main


def test_writes_every_bundled_digit_as_a_png_that_training_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "digits"
    assert main([str(target)]) == 0

    assert capsys.readouterr().out == (
        f"wrote 1797 PNG files into 10 class folders under {target}\n"
    )
    assert sorted(p.name for p in target.iterdir()) == [str(d) for d in range(10)]
    assert len(list(target.glob("*/*.png"))) == 1797
    images, labels = digit_images()
    for index in (0, 5, 1796):
        path = target / str(labels[index]) / f"{index}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(path)), images[index])

    data = load_folder_data(target, val_split=0.1, test_split=0.15)
    assert data.class_names == [str(d) for d in range(10)]
    assert data.class_counts == {str(d): int(n) for d, n in enumerate(np.bincount(labels))}
    assert data.listing_skipped == 0 and data.default_input_shape == (28, 28, 1)


def test_the_folder_is_the_same_data_every_time(tmp_path: Path) -> None:
    for name in ("first", "second"):
        assert main([str(tmp_path / name)]) == 0
    fingerprints = {
        load_folder_data(tmp_path / name, val_split=0.1).fingerprint for name in ("first", "second")
    }
    assert len(fingerprints) == 1


def test_a_folder_holding_files_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "busy"
    (target / "cats").mkdir(parents=True)
    (target / "cats" / "tom.png").write_bytes(b"not ours")

    assert main([str(target)]) == 2
    assert capsys.readouterr().err == (
        f"error: {target} is not empty; choose a new folder or pass --force\n"
    )
    assert sorted(p.name for p in target.iterdir()) == ["cats"]

    assert main([str(target), "--force"]) == 0
    assert (target / "cats" / "tom.png").read_bytes() == b"not ours"  # others' files stay
    assert len(list(target.glob("[0-9]/*.png"))) == 1797

    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    assert main([str(a_file), "--force"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


@pytest.mark.e2e  # runs python -m training.digits_folder
def test_runs_as_a_module(tmp_path: Path) -> None:
    done = run_module("training.digits_folder", str(tmp_path / "d"), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote 1797 PNG files into 10 class folders under {tmp_path}/d"
    assert done.stderr == ""
