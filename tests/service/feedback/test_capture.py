"""Tests for service.feedback.capture: what is stored for a captured prediction (the image as it
arrived, its sidecar record) in its model's sample database, the per-model byte budget shared by
every writer, and the skips that keep the request path from ever waiting on, or failing because
of, a disk. The writer's reports go to a recording observer; pauses are timed by a fake clock."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.feedback.capture import RETRY_AFTER_S, CaptureWriter
from service.feedback.samples import SampleReader, model_folder
from tests.helpers.feedback import (
    FakeClock,
    RecordingObserver,
    capture_now,
    captured,
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


def held_bytes(root: Path, model: str = "digits") -> int:
    """Bytes of ``model``'s capture folder on disk, as the budget counts them."""
    return SampleReader(model_folder(root, model)).total_bytes()


def write_one(writer: CaptureWriter, sample_id: str, data: bytes, model: str = "digits") -> None:
    assert writer.offer(sample(sample_id, data, model=model))
    writer.drain()


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
    stored = captured(tmp_path)
    assert list(stored) == ["req1"]
    assert stored["req1"].data == data
    assert stored["req1"].suffix == suffix
    assert stored["req1"].record["suffix"] == suffix
    # One segment: the bytes and the index, nothing else.
    assert sorted(p.suffix for p in (tmp_path / "digits").iterdir()) == [".idx", ".seg"]
    assert next((tmp_path / "digits").glob("*.seg")).read_bytes() == data


@pytest.mark.parametrize("channels", [3, 1])
def test_a_pixel_array_is_stored_as_a_png_of_the_rounded_pixels(
    tmp_path: Path, channels: int
) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.uniform(-20.0, 280.0, (6, 5, channels)).astype(np.float32)
    pixels[0, 0] = 12.4
    pixels[0, 1] = 200.6
    capture_now(tmp_path, sample("px", pixels))
    stored = captured(tmp_path)["px"]
    assert stored.suffix == "png"
    with Image.open(io.BytesIO(stored.data)) as image:
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
    record = captured(tmp_path)["req-7.2"].record
    assert record["id"] == "req-7.2"
    assert record["model"] == "digits"
    assert record["version"] == 3
    assert record["label"] == "7"
    assert record["time"] == "2024-05-01T12:00:00+00:00"
    assert record["suffix"] == "png"
    assert record["bytes"] == len(data)
    top_k = record["top_k"]
    assert [entry["label"] for entry in top_k] == ["7", "0", "1", "2", "3"]
    scores = [entry["score"] for entry in top_k]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(0.9)
    assert set(record) == {"id", "model", "version", "label", "top_k", "time", "suffix", "bytes"}


def test_models_get_their_own_folders(tmp_path: Path) -> None:
    capture_now(tmp_path, sample("a", digit_png()), sample("b", digit_png(1), model="letters"))
    assert list(captured(tmp_path, "digits")) == ["a"]
    assert list(captured(tmp_path, "letters")) == ["b"]
    assert model_folder(tmp_path, "letters") == tmp_path / "letters"
    assert sorted(p.suffix for p in (tmp_path / "letters").iterdir()) == [".idx", ".seg"]


def test_a_batch_is_stored_in_arrival_order(tmp_path: Path) -> None:
    capture_now(tmp_path, *(sample(f"s{i}", digit_png(i % 10)) for i in range(40)))
    stored = captured(tmp_path)
    assert list(stored) == [f"s{i}" for i in range(40)]
    assert all(stored[f"s{i}"].data == digit_png(i % 10) for i in range(40))


# --- the byte budget -------------------------------------------------------------------------


def test_the_oldest_samples_go_first_and_the_model_stays_within_budget(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(max_bytes=5000, root=root)
    writer.start()
    write_one(writer, "other", png_blob(1000), model="letters")  # the oldest, another model's
    for index in range(6):
        write_one(writer, f"s{index}", png_blob(1000, fill=index))
        assert held_bytes(root) <= 5000
        assert observer.bytes_by_model["digits"] == held_bytes(root)

    # Each sample is 1000 bytes of image and about 350 of index line: three fit in 5000.
    stored = captured(root)
    assert list(stored) == ["s3", "s4", "s5"]
    assert [s.data for s in stored.values()] == [png_blob(1000, fill=i) for i in (3, 4, 5)]
    assert list(captured(root, "letters")) == ["other"]
    assert observer.captured_by_model["digits"] == 6  # trimmed ones were written, then expired
    assert not observer.skipped


def test_writers_of_several_workers_share_one_budget(
    tmp_path: Path, make_writer: MakeWriter
) -> None:
    root = tmp_path / "captured"
    first, second = make_writer(max_bytes=5000, root=root), make_writer(max_bytes=5000, root=root)
    first.start()
    second.start()
    for index in range(8):
        write_one(first if index % 2 else second, f"s{index}", png_blob(1000, fill=index))
    assert list(captured(root)) == ["s5", "s6", "s7"]
    assert held_bytes(root) <= 5000


def test_a_restarted_writer_counts_what_is_stored_already(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    for index in range(3):  # three earlier runs of the service
        capture_now(root, sample(f"old{index}", png_blob(1000)))
    writer = make_writer(max_bytes=5000, root=root)
    writer.start()
    write_one(writer, "new", png_blob(1000))
    assert list(captured(root)) == ["old1", "old2", "new"]
    assert observer.bytes_by_model["digits"] == held_bytes(root)


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
    assert list(captured(root)) == ["small"]
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
    write_one(writer, "dup", digit_png(2))  # in a later batch too
    stored = captured(root)
    assert list(stored) == ["dup"]
    assert stored["dup"].data == first
    assert stored["dup"].record["label"] == "3"
    assert observer.skipped == {("digits", "duplicate_id"): 2}
    assert observer.captured_by_model["digits"] == 1
    assert observer.bytes_by_model["digits"] == held_bytes(root)


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
    assert list(captured(root)) == ["first"]


def test_stop_writes_what_was_queued(
    tmp_path: Path, make_writer: MakeWriter, observer: RecordingObserver
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(queue_size=3, root=root)
    for index in range(3):
        assert writer.offer(sample(f"q{index}", digit_png(index)))
    writer.start()
    writer.stop()
    assert {key: value.data for key, value in captured(root).items()} == {
        f"q{i}": digit_png(i) for i in range(3)
    }
    assert observer.captured_by_model["digits"] == 3


def test_a_reader_sees_whole_batches_while_the_writer_writes(
    tmp_path: Path, make_writer: MakeWriter
) -> None:
    root = tmp_path / "captured"
    writer = make_writer(queue_size=512, root=root)
    writer.start()
    write_one(writer, "first", digit_png())
    reader = SampleReader(model_folder(root, "digits"))
    for index in range(300):
        assert writer.offer(sample(f"s{index}", digit_png(index % 10)))
    seen = [len(reader.ids()) for _ in range(50)]
    writer.drain()
    assert len(reader.ids()) == 301
    assert seen == sorted(seen)  # never a row that later vanishes
    for sample_id, stored in captured(root).items():  # no half-written row, ever
        assert stored.record["id"] == sample_id and stored.record["bytes"] == len(stored.data)


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
    assert list(captured(root)) == ["d"]
    assert observer.writable == [True, False, True]
    assert observer.captured_by_model["digits"] == 1
    assert observer.skipped == {("digits", "write_error"): 3}
