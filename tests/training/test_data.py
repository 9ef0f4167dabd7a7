"""Streaming a --data folder (training.data): listing, split, pipeline, bad input, and the
published model against the live service.

Every folder is generated here: a few hundred small images of three digit classes in every
supported format and many modes (L, LA, RGB, RGBA, P, I;16, CMYK), of different sizes, with
damaged files mixed in.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contract.decoding.decode import decode_image
from contract.metadata import DataSummary, verify_version_dir
from tests.helpers.processes import run_train
from training.data import (
    DataError,
    DecodeFailures,
    FolderData,
    FolderSource,
    check_data_folders,
    class_weights,
    load_folder_data,
    make_datasets,
    make_file_dataset,
    remember_decode_failures,
    split_by_class,
)
from training.data import digit_images as digits

pytestmark = pytest.mark.timeout(600)

CLASSES = {"zero": 0, "one": 1, "seven": 7}
PER_CLASS = 70
# (suffix, Pillow format, mode the digit is stored in)
VARIANTS: list[tuple[str, str, str]] = [
    (".png", "PNG", "L"),
    (".png", "PNG", "LA"),
    (".png", "PNG", "RGB"),
    (".png", "PNG", "RGBA"),
    (".png", "PNG", "P"),
    (".png", "PNG", "I;16"),
    (".jpg", "JPEG", "L"),
    (".jpg", "JPEG", "RGB"),
    (".jpeg", "JPEG", "CMYK"),
    (".webp", "WEBP", "RGB"),
    (".bmp", "BMP", "RGB"),
    (".gif", "GIF", "P"),
]
MAX_PIXELS = 100_000_000


def digit_file(gray: np.ndarray, size: int, mode: str) -> Image.Image:
    image = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    if mode == "I;16":
        return Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    if mode == "P":
        return image.convert("RGB").quantize(64)
    return image.convert(mode)


def make_folder(
    root: Path, *, order_seed: int = 0, per_class: int = PER_CLASS, damaged: bool = True
) -> Path:
    """Three classes of digit images in every variant; files written in a seeded random order
    (so two calls with other ``order_seed`` create the same files in different orders)."""
    images, labels = digits()
    rng = np.random.default_rng(0)  # content never depends on order_seed
    jobs: list[tuple[Path, Image.Image, str]] = []
    for name, digit in CLASSES.items():
        for i, gray in enumerate(images[labels == digit][:per_class]):
            suffix, fmt, mode = VARIANTS[i % len(VARIANTS)]
            size = int(rng.choice([14, 20, 28, 36, 50]))
            jobs.append(
                (root / name / f"{name}-{i:03d}{suffix}", digit_file(gray, size, mode), fmt)
            )
    random.Random(order_seed).shuffle(jobs)
    for path, image, fmt in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    if damaged:
        noisy = Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8))
        noisy.save(root / "seven" / "truncated.jpg", "JPEG", quality=90)
        whole = (root / "seven" / "truncated.jpg").read_bytes()
        (root / "seven" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # header intact
        (root / "one" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        (root / "zero" / "notes.txt").write_text("ignored: not an image name")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("stream") / "digits3")


def relative(data: FolderData, split: str, root: Path) -> list[str]:
    return [Path(f).relative_to(root).as_posix() for f in getattr(data, split).files]


def collect(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def test_listing_checks_headers_fingerprints_and_chooses_the_input_shape(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="training.data"):
        data = load_folder_data(folder, val_split=0.1, test_split=0.15)

    assert data.class_names == ["one", "seven", "zero"]
    # garbage.png is refused by its header; truncated.jpg's header is fine, so it is listed.
    assert data.listing_skipped == 1
    assert sum(data.class_counts.values()) == 3 * PER_CLASS + 1
    assert len(data.train) + len(data.val) + len(data.test) == 3 * PER_CLASS + 1
    assert "garbage.png" in caplog.text and "skipped unreadable image" in caplog.text
    # Median of the sampled sizes; colour because the P/RGB/CMYK files decode as RGB.
    assert data.default_input_shape[2] == 3
    assert data.default_input_shape[:2] in {(20, 20), (28, 28), (36, 36)}
    assert "median of" in data.input_shape_reason and "sampled header" in data.input_shape_reason
    assert "input shape" in caplog.text and data.input_shape_reason in caplog.text
    assert len(data.fingerprint) == 64


def test_the_streamed_pixels_are_the_serving_decoders_pixels(folder: Path) -> None:
    data = load_folder_data(folder, val_split=0.1, test_split=0.15, input_shape=(28, 28, 3))
    failures = data.failures
    for split in (data.val, data.test, data.train):
        dataset = make_file_dataset(
            split, image_size=(28, 28), batch_size=16, shuffle=False, seed=0, failures=failures
        )
        pixels, labels = collect(dataset)
        kept = [i for i, f in enumerate(split.files) if f not in failures.files]
        assert pixels.dtype == np.float32 and pixels.shape == (len(kept), 28, 28, 3)
        np.testing.assert_array_equal(labels, split.labels[kept])
        for row, index in enumerate(kept):
            path = Path(split.files[index])
            served = decode_image(path.read_bytes(), target_size=(28, 28), max_pixels=40_000_000)
            np.testing.assert_array_equal(pixels[row], served.array, err_msg=str(path))
    # The truncated JPEG passed the header check and failed while streaming: dropped, counted.
    assert [Path(f).name for f in failures.files] == ["truncated.jpg"]
    assert data.skipped_files == 2


def test_a_file_failing_to_decode_is_warned_about_once_and_dropped(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = load_folder_data(folder, val_split=0.1, test_split=0.15, input_shape=(16, 16, 1))
    split = next(
        s for s in (data.train, data.val, data.test) if any("truncated" in f for f in s.files)
    )
    failures = DecodeFailures()
    dataset = make_file_dataset(
        split, image_size=(16, 16), batch_size=8, shuffle=True, seed=3, failures=failures
    )
    with caplog.at_level(logging.WARNING, logger="training.data"):
        counts = [sum(int(y.shape[0]) for _, y in dataset) for _epoch in range(3)]

    assert counts == [len(split) - 1] * 3
    assert caplog.text.count("truncated.jpg") == 1
    assert len(failures) == 1


def test_cache_holds_the_decoded_split_and_is_read_back(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = load_folder_data(copy, val_split=0.1, test_split=0.15, input_shape=(20, 20, 3))
    cache = tmp_path / "cache" / "val"

    def pipeline(cache_file: Path | None) -> Any:
        return make_file_dataset(
            data.val,
            image_size=(20, 20),
            batch_size=7,
            shuffle=False,
            seed=0,
            failures=data.failures,
            cache_file=cache_file,
        )

    plain = collect(pipeline(None))
    cached_first = collect(pipeline(cache))
    assert sorted(p.name for p in cache.parent.iterdir()) == [
        "val.data-00000-of-00001",
        "val.index",
    ]
    shutil.rmtree(copy)  # the images are gone: only the cache can answer now
    cached_again = collect(pipeline(cache))
    for got in (cached_first, cached_again):
        np.testing.assert_array_equal(got[0], plain[0])
        np.testing.assert_array_equal(got[1], plain[1])


def test_the_split_is_stable_across_runs_and_file_creation_orders(tmp_path: Path) -> None:
    first = make_folder(tmp_path / "a" / "data", order_seed=1, damaged=False)
    second = make_folder(tmp_path / "b" / "data", order_seed=2, damaged=False)
    runs = [
        load_folder_data(first, val_split=0.1, test_split=0.15),
        load_folder_data(first, val_split=0.1, test_split=0.15),
        load_folder_data(second, val_split=0.1, test_split=0.15),
    ]
    roots = [first, first, second]
    for split in ("train", "val", "test"):
        names = [relative(run, split, root) for run, root in zip(runs, roots, strict=True)]
        assert names[0] == names[1] == names[2]
    assert runs[0].fingerprint == runs[1].fingerprint == runs[2].fingerprint
    assert runs[0].default_input_shape == runs[2].default_input_shape
    # Stratified by construction: every class in every split, in proportion.
    for split in ("val", "test"):
        counts = np.bincount(getattr(runs[0], split).labels, minlength=3)
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1
    # Changing one file's content changes the fingerprint, never the split.
    victim = second / "one" / "one-000.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    changed = load_folder_data(second, val_split=0.1, test_split=0.15)
    assert changed.fingerprint != runs[2].fingerprint
    assert relative(changed, "test", second) == relative(runs[2], "test", second)


def test_split_sizes_and_small_classes() -> None:
    labels = np.array([0] * 100 + [1] * 20 + [2] * 2 + [3] * 1)
    train, val, test = split_by_class(labels, ["a", "b", "c", "d"], val_split=0.1, test_split=0.2)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(labels.size))
    assert np.bincount(labels[test], minlength=4).tolist() == [20, 4, 0, 0]
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 2, 0, 0]
    assert np.bincount(labels[train], minlength=4).tolist() == [70, 14, 2, 1]


def test_imbalance_is_reported_and_balanced_weights_even_it_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, labels = digits()
    for name, digit, count in (("big", 3, 60), ("small", 4, 5)):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i, gray in enumerate(images[labels == digit][:count]):
            Image.fromarray(gray).save(tmp_path / "d" / name / f"{i}.png")
    with caplog.at_level(logging.INFO, logger="training.data"):
        data = load_folder_data(tmp_path / "d", val_split=0.1, test_split=0.15)

    assert data.class_counts == {"big": 60, "small": 5}
    assert "class small has 5 image(s), under 10% of the largest class (60)" in caplog.text
    assert "--class-weight balanced" in caplog.text
    assert data.default_input_shape == (28, 28, 1)  # every header grey
    weights = class_weights(data.train.labels, 2)
    counts = np.bincount(data.train.labels)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])  # equal total weight
    assert weights[0] * counts[0] + weights[1] * counts[1] == pytest.approx(counts.sum())


def test_large_images_get_a_capped_input_size_that_says_so(tmp_path: Path) -> None:
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (tmp_path / "p" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (640, 480), colour).save(tmp_path / "p" / name / f"{i}.jpg")
    data = load_folder_data(tmp_path / "p", val_split=0.2, test_split=0.2)
    assert data.default_input_shape == (168, 224, 3)
    assert "480x640" in data.input_shape_reason and "224 pixels" in data.input_shape_reason
    given = load_folder_data(tmp_path / "p", val_split=0.2, test_split=0.2, input_shape=(64, 64, 1))
    assert (
        given.default_input_shape == (64, 64, 1)
        and given.input_shape_reason == "from --input-shape"
    )


def test_a_folder_of_non_images_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "x" / name).mkdir(parents=True)
        (tmp_path / "x" / name / "readme.png").write_text("hello")
        (tmp_path / "x" / name / "data.jpg").write_bytes(os.urandom(300))
    with pytest.raises(DataError, match="no readable images"):
        load_folder_data(tmp_path / "x", val_split=0.1)


def test_a_symlink_loop_is_walked_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = make_folder(tmp_path / "loop", per_class=12, damaged=False)
    (data_dir / "one" / "again").symlink_to(data_dir / "one", target_is_directory=True)
    (data_dir / "seven" / "self.png").symlink_to(data_dir / "seven" / "self.png")  # file loop
    with caplog.at_level(logging.WARNING, logger="training.data"):
        data = load_folder_data(data_dir, val_split=0.1, test_split=0.15)
    assert data.class_counts == {"one": 12, "seven": 12, "zero": 12}
    assert "symbolic link loop" in caplog.text


def _cli(*args: str, tmp: Path) -> Any:
    return run_train(
        *args,
        "--models-dir",
        str(tmp / "models"),
        "--run-dir",
        str(tmp / "run"),
        "--epochs",
        "1",
        "--verbose",
        "0",
    )


@pytest.mark.e2e  # runs training/train.py
def test_cli_survives_every_kind_of_bad_input(tmp_path: Path) -> None:
    data_dir = make_folder(tmp_path / "messy", per_class=24)
    (data_dir / "empty-class").mkdir()
    (data_dir / "lonely").mkdir()
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(data_dir / "lonely" / "only.png")
    (data_dir / "zero" / "loop").symlink_to(data_dir / "zero", target_is_directory=True)
    (data_dir / "one" / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02"
    )

    done = _cli("--data", str(data_dir), "--class-weight", "balanced", tmp=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "empty-class has no jpg/png/webp/bmp/gif images" in done.stderr
    assert "class lonely has only 1 image(s)" in done.stderr
    assert "symbolic link loop" in done.stderr
    assert done.stderr.count("truncated.jpg") == 1 and done.stderr.count("garbage.png") == 1
    assert "huge.png" in done.stderr
    metadata = verify_version_dir(tmp_path / "models" / "messy" / "1")
    summary = metadata.data_summary
    assert isinstance(summary, DataSummary)
    assert metadata.class_names == ["lonely", "one", "seven", "zero"]
    assert summary.skipped_files == 3 == metadata.training["skipped_files"]
    assert summary.class_counts["lonely"] == 1
    # truncated.jpg (its header reads, its data does not) counts as skipped, not as a seven.
    assert summary.class_counts["seven"] == 24
    assert summary.files == sum(summary.class_counts.values()) + summary.skipped_files
    assert summary.imbalance_ratio == pytest.approx(1 / 24, abs=1e-3)
    assert summary.class_weights is not None and summary.class_weights["lonely"] > 10
    assert summary.input_shape == [metadata.input.height, metadata.input.width, 3]
    assert summary.input_shape[2] == 3 and "median of" in summary.input_shape_reason


@pytest.mark.e2e  # runs training/train.py
def test_the_same_folder_gives_the_same_counts_with_a_reused_cache(tmp_path: Path) -> None:
    """A file whose header reads but whose data does not is counted once (skipped), and a
    second run that reuses the --cache (never decoding that file again) counts it the same."""
    data_dir = make_folder(tmp_path / "counted", per_class=12)
    cache = tmp_path / "cache"
    summaries = []
    for run in ("first", "second"):
        done = _cli("--data", str(data_dir), "--cache", str(cache), tmp=tmp_path / run)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count("truncated.jpg") == 1, done.stderr[-3000:]
        summary = verify_version_dir(tmp_path / run / "models" / "counted" / "1").data_summary
        assert isinstance(summary, DataSummary)
        summaries.append(summary)
    first, second = summaries
    files = 3 * 12 + 2  # garbage.png (refused when listed) and truncated.jpg (fails to decode)
    for summary in summaries:
        assert summary.files == files == sum(summary.class_counts.values()) + 2
        assert summary.skipped_files == 2
        assert summary.class_counts == {"one": 12, "seven": 12, "zero": 12}
    assert first.class_counts == second.class_counts and first.files == second.files


@pytest.mark.e2e  # runs training/train.py
@pytest.mark.parametrize(
    ("build", "message"),
    [
        ("nonimages", "no readable images"),
        ("oneclass", "only one class"),
        ("loop-only", "no jpg/png/webp/bmp/gif images"),
    ],
)
def test_cli_refuses_unusable_folders_with_one_line(
    build: str, message: str, tmp_path: Path
) -> None:
    root = tmp_path / build
    if build == "nonimages":
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            (root / name / "x.jpg").write_text("not a jpeg")
    elif build == "oneclass":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "a" / "x.png")
        (root / "b" / "y.png").write_bytes(b"broken")
    else:
        (root / "a").mkdir(parents=True)
        (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    done = _cli("--data", str(root), tmp=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.e2e  # trains, then serves
def test_published_model_predicts_on_the_test_files_what_predict_returns(
    folder: Path, tmp_path: Path, server_factory: Any
) -> None:
    import tensorflow as tf

    data_dir = tmp_path / "served"
    shutil.copytree(folder, data_dir)
    done = _cli("--data", str(data_dir), "--input-shape", "28,28,1", tmp=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    version_dir = tmp_path / "models" / "served" / "1"
    metadata = verify_version_dir(version_dir)
    model = tf.saved_model.load(str(version_dir))

    data = load_folder_data(data_dir, val_split=0.1, test_split=0.15, input_shape=(28, 28, 1))
    pixels, _ = collect(
        make_file_dataset(
            data.test,
            image_size=(28, 28),
            batch_size=32,
            shuffle=False,
            seed=0,
            failures=data.failures,
        )
    )
    files = [f for f in data.test.files if f not in data.failures.files]
    expected = model.serve(pixels).numpy()
    assert metadata.training["examples"]["test"] == len(files)

    # The SavedModel serves (not a compiled artifact, which answers within the equivalence rule,
    # not within 2e-6): what is compared here is the service's decoding with training's.
    server = server_factory(tmp_path / "models", model_name="served", runtime="savedmodel")
    with server.client() as client:
        for start in range(0, len(files), 8):
            chunk = files[start : start + 8]
            response = client.post(
                "/predict",
                params={"top_k": 3},
                files=[("file", (Path(f).name, Path(f).read_bytes())) for f in chunk],
            )
            assert response.status_code == 200, response.text
            for offset, result in enumerate(response.json()["results"]):
                scores = {p["label"]: p["score"] for p in result["predictions"]}
                want = expected[start + offset]
                assert result["predictions"][0]["label"] == metadata.class_names[int(want.argmax())]
                for index, name in enumerate(metadata.class_names):
                    assert scores[name] == pytest.approx(float(want[index]), abs=2e-6)


def test_metadata_without_a_data_summary_still_loads() -> None:
    """Versions published before the data summary existed validate, and say they have none."""
    from datetime import datetime, timezone

    from contract.metadata import InputSpec, ModelMetadata

    common: dict[str, Any] = {
        "name": "old",
        "version": 1,
        "created_at": datetime.now(timezone.utc),
        "class_names": ["a", "b"],
        "input": InputSpec(height=28, width=28, channels=1, color_mode="grayscale"),
        "arch": "simple",
        "parameter_count": 1,
        "files": {"saved_model.pb": "0" * 64},
    }
    old = ModelMetadata.model_validate_json(
        ModelMetadata(**common, training={"epochs": 3}).model_dump_json()
    )
    assert old.data_summary is None
    summary = DataSummary(
        source="/data",
        files=3,
        skipped_files=1,
        class_counts={"a": 1, "b": 1},
        imbalance_ratio=1.0,
        input_shape=[28, 28, 1],
        input_shape_reason="from --input-shape",
    )
    new = ModelMetadata.model_validate_json(
        ModelMetadata(**common, training={"data": summary.model_dump()}).model_dump_json()
    )
    assert new.data_summary == summary


@pytest.mark.parametrize("class_weighted", [False, True])
def test_the_imbalance_warning_suggests_class_weights_only_when_not_used(
    class_weighted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from training.data import _report_imbalance

    with caplog.at_level(logging.WARNING, logger="training.data"):
        _report_imbalance({"rare": 1, "common": 50}, class_weighted=class_weighted)
    assert "class rare has 1 image(s)" in caplog.text
    assert ("consider --class-weight balanced" in caplog.text) is not class_weighted


# -- several --data folders, merged by class name ------------------------------------------------


def documented_fingerprint(root: Path) -> str:
    """The fingerprint of one folder as documented: sha256 over every image file (classes and
    files sorted) of its relative path, size and content."""
    import hashlib

    digest = hashlib.sha256()
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name[0] != "."):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}:
                continue
            content = path.read_bytes()
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(str(len(content)).encode() + b"\0" + content)
    return digest.hexdigest()


def feedback_folder(root: Path, counts: dict[str, int]) -> Path:
    """A folder like data/feedback/<model>/: ``counts[label]`` digit PNGs per label, and the
    hidden ``.records/`` the service keeps beside them (an image in it too: never read)."""
    images, _labels = digits()
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(images[100 + i]).save(root / label / f"req{i}.png")
    (root / ".records").mkdir(parents=True)
    (root / ".records" / "req0.json").write_text('{"id": "req0"}')
    Image.fromarray(images[0]).save(root / ".records" / "stray.png")
    return root


def split_names(data: FolderData) -> dict[str, list[str]]:
    return {split: list(getattr(data, split).files) for split in ("train", "val", "test")}


def test_one_folder_keeps_its_documented_fingerprint_and_splits(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "one", per_class=12, damaged=False)
    alone = load_folder_data(root, val_split=0.1, test_split=0.15)
    listed = load_folder_data([root], val_split=0.1, test_split=0.15)

    assert alone.fingerprint == listed.fingerprint == documented_fingerprint(root)
    assert split_names(alone) == split_names(listed)
    assert alone.source == str(root)
    everything = [*alone.train.files, *alone.val.files, *alone.test.files]
    labels = np.concatenate([alone.train.labels, alone.val.labels, alone.test.labels])
    order = np.argsort(everything)
    expected = split_by_class(labels[order], alone.class_names, val_split=0.1, test_split=0.15)
    for split, indices in zip(("train", "val", "test"), expected, strict=True):
        assert sorted(getattr(alone, split).files) == [sorted(everything)[i] for i in indices]
    assert alone.sources == (
        FolderSource(
            path=str(root),
            files=36,
            skipped_files=0,
            class_counts={"one": 12, "seven": 12, "zero": 12},
        ),
    )


def test_folders_merge_by_class_name_and_each_keeps_its_own_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_folder(tmp_path / "base", per_class=12, damaged=False)
    feedback = feedback_folder(tmp_path / "feedback", {"seven": 4, "two": 3})
    alone = load_folder_data(base, val_split=0.1, test_split=0.15)
    with caplog.at_level(logging.INFO, logger="training.data"):
        merged = load_folder_data([base, feedback], val_split=0.1, test_split=0.15)

    def in_base(name: str) -> bool:
        return name.startswith(f"{base}{os.sep}")

    assert merged.class_names == ["one", "seven", "two", "zero"]  # the union, sorted
    assert merged.source == f"{base} + {feedback}"
    assert merged.class_counts == {"one": 12, "seven": 16, "two": 3, "zero": 12}
    assert [(s.path, s.files, s.class_counts) for s in merged.sources] == [
        (str(base), 36, {"one": 12, "seven": 12, "zero": 12}),
        (str(feedback), 7, {"seven": 4, "two": 3}),  # .records/ never read
    ]
    for split in ("train", "val", "test"):
        part = getattr(merged, split)
        for name, label in zip(part.files, part.labels, strict=True):
            assert Path(name).parent.name == merged.class_names[label]
        # The base folder's held-out files do not move when feedback joins it.
        assert [f for f in part.files if in_base(f)] == list(getattr(alone, split).files)
    assert any(f.startswith(f"{feedback}{os.sep}") for f in merged.test.files)
    assert f"folder {feedback}: images per class" in caplog.text

    again = load_folder_data([base, feedback], val_split=0.1, test_split=0.15)
    assert again.fingerprint == merged.fingerprint
    assert merged.fingerprint not in {alone.fingerprint, documented_fingerprint(feedback)}
    Image.fromarray(digits()[0][5]).save(feedback / "two" / "req9.png")  # new feedback arrives
    grown = load_folder_data([base, feedback], val_split=0.1, test_split=0.15)
    assert grown.fingerprint != merged.fingerprint
    assert [f for f in grown.test.files if in_base(f)] == list(alone.test.files)


def test_a_folder_of_one_class_or_none_joins_a_merge_but_is_refused_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_folder(tmp_path / "base", per_class=6, damaged=False)
    one_class = feedback_folder(tmp_path / "fb1", {"seven": 2})
    empty = feedback_folder(tmp_path / "fb0", {})  # only .records/ so far
    with caplog.at_level(logging.WARNING, logger="training.data"):
        merged = load_folder_data([base, one_class, empty], val_split=0.1, test_split=0.15)

    assert merged.class_counts == {"one": 6, "seven": 8, "zero": 6}
    assert [s.files for s in merged.sources] == [18, 2, 0]
    assert f"{empty} has no class sub-folders" in caplog.text
    assert f"class seven in {one_class} has only 2 image(s)" in caplog.text
    with pytest.raises(DataError, match="only one class"):
        load_folder_data(one_class, val_split=0.1)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_folder_data(empty, val_split=0.1)


def test_the_same_or_nested_folders_are_refused(tmp_path: Path) -> None:
    base = make_folder(tmp_path / "base", per_class=4, damaged=False)
    for folders in ([base, base], [base, tmp_path / "base" / ".." / "base"], [base, base / "one"]):
        with pytest.raises(DataError, match="overlap"):
            load_folder_data(folders, val_split=0.1)
    with pytest.raises(DataError, match="does not exist"):
        check_data_folders([base, tmp_path / "missing"])


def test_decode_failures_are_counted_per_folder_and_recalled_from_the_cache(
    tmp_path: Path,
) -> None:
    """Two folders with a file of the same relative path that fails to decode: each is counted
    in its own folder, and a run that reuses the --cache recalls both."""
    folders = [make_folder(tmp_path / name, per_class=8) for name in ("a", "b")]
    cache = tmp_path / "cache"

    def run() -> FolderData:
        data = load_folder_data(folders, val_split=0.1, test_split=0.15, input_shape=(16, 16, 1))
        datasets = make_datasets(
            data, batch_size=8, image_size=(16, 16), seed=0, augment=False, cache_dir=cache
        )
        for dataset in datasets:
            collect(dataset)
        remember_decode_failures(data, cache, (16, 16))
        return data

    first, second = run(), run()  # the second decodes nothing: the cache answers

    broken = sorted(str(folder / "seven" / "truncated.jpg") for folder in folders)
    assert sorted(first.failures.files) == sorted(second.failures.files) == broken
    for data in (first, second):
        for source in data.readable_sources():
            # garbage.png (refused when listed) and truncated.jpg (failed to decode)
            assert source.skipped_files == 2 and source.files == 3 * 8 + 2
            assert source.class_counts == {"one": 8, "seven": 8, "zero": 8}
        assert data.readable_class_counts() == {"one": 16, "seven": 16, "zero": 16}
