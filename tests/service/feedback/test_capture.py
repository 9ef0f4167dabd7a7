"""Tests for service.feedback.capture: what lands on disk for a captured prediction (the image as
it arrived, its sidecar record), the per-model byte budget, and the skips that keep the request
path from ever waiting on, or failing because of, a disk. The writer's reports go to a recording
observer; pauses are timed by a fake clock."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.feedback.capture import RETRY_AFTER_S, STALE_TMP_S, CaptureWriter
from tests.helpers.feedback import (
    FakeClock,
    RecordingObserver,
    capture_now,
    files_under,
    read_json,
    sample,
)
from tests.helpers.images import digit_png, noise_png, solid_jpeg

pytestmark = pytest.mark.timeout(60)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MakeWriter = Callable[..., CaptureWriter]


def png_blob(size: int, fill: int = 0) -> bytes:
    """Bytes a sniffer takes for a PNG, exactly ``size`` long (the writer never decodes them)."""
    return PNG_MAGIC + bytes([fill]) * (size - len(PNG_MAGIC))


@pytest.fixture()
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_writer(
    tmp_path: Path, observer: RecordingObserver, clock: FakeClock
) -> Iterator[MakeWriter]:
    """``make_writer(max_bytes=..., queue_size=..., root=...)``; every writer stopped after."""
    writers: list[CaptureWriter] = []

    def make(
        *, max_bytes: int = 1 << 30, queue_size: int = 16, root: Path | None = None
    ) -> CaptureWriter:
        writer = CaptureWriter(
            root if root is not None else tmp_path / "captured",
            max_bytes_per_model=max_bytes,
            queue_size=queue_size,
            observer=observer,
            clock=clock,
        )
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.stop()


def sample_files(folder: Path) -> dict[str, int]:
    """Finished files of a model's capture folder (temporary ones excluded) and their sizes."""
    return {p.name: p.stat().st_size for p in folder.iterdir() if not p.name.startswith(".")}


def assert_records_name_their_images(folder: Path) -> None:
    """Every record names an image that exists, and every image has its record."""
    names = set(sample_files(folder))
    records = {name for name in names if name.endswith(".json")}
    for record in records:
        assert read_json(folder / record)["file"] in names, record
    images = names - records
    assert {name.rsplit(".", 1)[0] for name in images} == {r[: -len(".json")] for r in records}


# --- what is stored --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "suffix"),
    [(noise_png((9, 7)), "png"), (solid_jpeg(16, 12), "jpg"), (b"no image format I know", "bin")],
    ids=["png", "jpeg", "unknown"],
)
def test_an_encoded_image_is_stored_byte_for_byte_with_its_suffix(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    capture_now(tmp_path, sample("req1", data))
    assert files_under(tmp_path / "digits")[f"req1.{suffix}"] == data
    assert set(files_under(tmp_path)) == {f"digits/req1.{suffix}", "digits/req1.json"}


@pytest.mark.parametrize("channels", [3, 1])
def test_a_pixel_array_is_stored_as_a_png_of_the_rounded_pixels(
    tmp_path: Path, channels: int
) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.uniform(-20.0, 280.0, (6, 5, channels)).astype(np.float32)
    pixels[0, 0] = 12.4
    pixels[0, 1] = 200.6
    capture_now(tmp_path, sample("px", pixels))
    with Image.open(tmp_path / "digits" / "px.png") as image:
        assert image.format == "PNG"
        decoded = np.asarray(image)
    expected = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if channels == 1:
        expected = expected[..., 0]
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.flat[0] == 12 and decoded.reshape(6, 5, -1)[0, 1, 0] == 201


def test_the_sidecar_record_says_what_the_service_answered(tmp_path: Path) -> None:
    data = digit_png()
    capture_now(tmp_path, sample("req-7.2", data, model="digits", version=3, top=7))
    record = read_json(tmp_path / "digits" / "req-7.2.json")
    assert record["id"] == "req-7.2"
    assert record["model"] == "digits"
    assert record["version"] == 3
    assert record["label"] == "7"
    assert record["time"] == "2024-05-01T12:00:00+00:00"
    assert record["file"] == "req-7.2.png"
    assert record["bytes"] == len(data)
    top_k = record["top_k"]
    assert [entry["label"] for entry in top_k] == ["7", "0", "1", "2", "3"]
    scores = [entry["score"] for entry in top_k]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(0.9)
    assert set(record) == {"id", "model", "version", "label", "top_k", "time", "file", "bytes"}


def test_models_get_their_own_folders(tmp_path: Path) -> None:
    capture_now(tmp_path, sample("a", digit_png()), sample("b", digit_png(1), model="letters"))
    assert sorted(files_under(tmp_path)) == [
        "digits/a.json",
        "digits/a.png",
        "letters/b.json",
        "letters/b.png",
    ]


# --- the byte budget -------------------------------------------------------------------------


def test_the_oldest_samples_go_first_and_the_folder_stays_within_budget(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(max_bytes=5000, root=root)
    writer.start()
    old = time.time() - 10_000

    def write(sample_id: str, model: str, mtime: float) -> None:
        assert writer.offer(sample(sample_id, png_blob(1000), model=model))
        writer.drain()
        for path in (root / model).glob(f"{sample_id}.*"):
            os.utime(path, (mtime, mtime))  # an unambiguous age, whatever the clock's grain

    write("other", "letters", old - 100)  # the oldest of all, but another model's
    letters_before = files_under(root / "letters")
    for index in range(6):
        write(f"s{index}", "digits", old + index)
        folder_size = sum(sample_files(root / "digits").values())
        assert folder_size <= 5000
        assert observer.bytes_by_model["digits"] == folder_size

    names = sorted(sample_files(root / "digits"))
    assert names == ["s3.json", "s3.png", "s4.json", "s4.png", "s5.json", "s5.png"]
    assert_records_name_their_images(root / "digits")
    assert files_under(root / "letters") == letters_before
    assert observer.captured_by_model["digits"] == 6  # trimmed ones were written, then expired
    assert not observer.skipped


def test_a_sample_larger_than_the_budget_is_skipped_and_smaller_ones_still_stored(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(max_bytes=2000, root=root)
    writer.start()
    assert writer.offer(sample("huge", png_blob(3000)))
    assert writer.offer(sample("small", png_blob(500)))
    writer.drain()
    assert observer.skipped == {("digits", "over_budget"): 1}
    assert sorted(sample_files(root / "digits")) == ["small.json", "small.png"]
    assert observer.captured_by_model["digits"] == 1


def test_a_reused_id_keeps_the_first_sample(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(root=root)
    writer.start()
    first, second = digit_png(0), digit_png(1)
    assert writer.offer(sample("dup", first, top=3))
    assert writer.offer(sample("dup", second, top=5))
    writer.drain()
    assert files_under(root / "digits") == {
        "dup.png": first,
        "dup.json": (root / "digits" / "dup.json").read_bytes(),
    }
    assert read_json(root / "digits" / "dup.json")["label"] == "3"
    assert observer.skipped == {("digits", "duplicate_id"): 1}
    assert observer.captured_by_model["digits"] == 1


# --- the request path never waits --------------------------------------------------------------


def test_a_full_queue_skips_the_sample_at_once(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(queue_size=1, root=root)
    assert writer.offer(sample("first", digit_png()))
    started = time.perf_counter()
    assert writer.offer(sample("second", digit_png())) is False
    assert writer.offer(sample("third", digit_png())) is False
    assert time.perf_counter() - started < 1.0  # no waiting for the (not started) writer
    assert observer.skipped == {("digits", "queue_full"): 2}
    writer.start()
    writer.stop()
    assert sorted(sample_files(root / "digits")) == ["first.json", "first.png"]


def test_stop_writes_what_was_queued(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(queue_size=3, root=root)
    for index in range(3):
        assert writer.offer(sample(f"q{index}", digit_png(index)))
    writer.start()
    writer.stop()
    assert files_under(root / "digits") == {
        **{f"q{i}.png": digit_png(i) for i in range(3)},
        **{f"q{i}.json": (root / "digits" / f"q{i}.json").read_bytes() for i in range(3)},
    }
    assert observer.captured_by_model["digits"] == 3


def test_stale_temporary_files_are_removed_at_the_first_write(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    folder = tmp_path / "captured" / "digits"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".tmp-99-1-crashed.png", folder / ".tmp-99-2-writing.png"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    now = time.time()
    os.utime(stale, (now - STALE_TMP_S - 60, now - STALE_TMP_S - 60))
    os.utime(fresh, (now - 5, now - 5))
    writer = make_writer(root=tmp_path / "captured")
    writer.start()
    assert writer.offer(sample("a", digit_png()))
    writer.drain()
    assert not stale.exists()
    assert fresh.exists()  # another worker may be writing it right now
    assert observer.bytes_by_model["digits"] == sum(sample_files(folder).values())


# --- an unwritable folder ----------------------------------------------------------------------


def break_root(root: Path) -> None:
    root.write_bytes(b"")  # a file where the folder should be: mkdir fails even for root


def repair_root(root: Path) -> None:
    root.unlink()
    root.mkdir()


# A file where the folder should be: a read-only folder would not stop root (CI's containers).
def test_failing_writes_pause_capture_and_it_resumes_after_the_retry_delay(
    tmp_path: Path,
    make_writer: MakeWriter,
    observer: RecordingObserver,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "captured"
    break_root(root)
    try:
        writer = make_writer(root=root)
        writer.start()
        with caplog.at_level(logging.WARNING, logger="service.feedback.capture"):
            assert writer.offer(sample("a", digit_png()))  # the writer finds out, not the request
            writer.drain()
        assert observer.skipped == {("digits", "write_error"): 1}
        assert observer.writable == [True, False]
        assert [r.getMessage() for r in caplog.records if str(root) in r.getMessage()], (
            "one log line names the folder that cannot be written"
        )

        assert writer.offer(sample("b", digit_png())) is False  # paused: not even queued
        clock.advance(RETRY_AFTER_S - 1)
        assert writer.offer(sample("c", digit_png())) is False
        assert observer.skipped == {("digits", "write_error"): 3}
    finally:
        repair_root(root)

    clock.advance(1)
    assert writer.offer(sample("d", digit_png()))
    writer.drain()
    assert sorted(files_under(root)) == ["digits/d.json", "digits/d.png"]
    assert observer.writable == [True, False, True]
    assert observer.captured_by_model["digits"] == 1
    assert observer.skipped == {("digits", "write_error"): 3}
