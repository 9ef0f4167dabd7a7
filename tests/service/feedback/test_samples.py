"""Tests for service.feedback.samples: the append-only segments a model's captured samples live
in. What a crash mid-append leaves is not a sample, a writer whose segment another worker dropped
goes on in a new one, segments close at their share of the budget, and the CLI lists and exports
what is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.feedback.__main__ import main
from service.feedback.samples import (
    INDEX_SUFFIX,
    SEGMENT_SUFFIX,
    Sample,
    SampleReader,
    SegmentWriter,
)
from tests.helpers.feedback import FakeClock
from tests.helpers.images import digit_png


def new_sample(sample_id: str, data: bytes, label: str = "7") -> Sample:
    return Sample(sample_id, data, "png", {"id": sample_id, "label": label})


def only(folder: Path, suffix: str) -> Path:
    (path,) = folder.glob(f"*{suffix}")
    return path


def test_what_a_writer_appends_is_read_back(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    added = writer.add([new_sample("a", digit_png(1)), new_sample("b", digit_png(2), "2")])
    last = writer.add([new_sample("c", digit_png(3))])
    writer.close()
    assert added.outcomes == ["stored", "stored"]
    reader = SampleReader(tmp_path)
    assert reader.ids() == ["a", "b", "c"]
    b = reader.get("b")
    assert b is not None and (b.data, b.suffix, b.record) == (
        digit_png(2),
        "png",
        {"id": "b", "label": "2"},
    )
    assert reader.get("nope") is None
    on_disk = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert reader.total_bytes() == last.folder_bytes == on_disk
    assert only(tmp_path, SEGMENT_SUFFIX).read_bytes() == digit_png(1) + digit_png(2) + digit_png(3)


def test_a_torn_last_line_is_not_a_sample_and_the_earlier_ones_stay(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    writer.add([new_sample("a", digit_png(1)), new_sample("b", digit_png(2))])
    writer.close()
    index = only(tmp_path, INDEX_SUFFIX)
    index.write_bytes(index.read_bytes()[:-10])  # the crash cut the last line short
    reader = SampleReader(tmp_path)
    assert reader.ids() == ["a"]
    assert reader.get("b") is None
    a = reader.get("a")
    assert a is not None and a.data == digit_png(1)


def test_a_line_naming_bytes_that_are_not_there_is_not_a_sample(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    writer.add([new_sample("a", digit_png(1))])
    writer.close()
    segment = only(tmp_path, SEGMENT_SUFFIX)
    segment.write_bytes(segment.read_bytes()[:-1])
    assert SampleReader(tmp_path).get("a") is None


@pytest.mark.parametrize(
    "damage",
    [
        (b'"suffix":"png"', b'"suffix":"../x"'),  # would name a file outside the label folder
        (b'"offset":0', b'"offset":-5'),
        (b'"record":{', b'"record":[{'),
    ],
    ids=["suffix", "offset", "record"],
)
def test_a_damaged_line_is_not_a_sample(tmp_path: Path, damage: tuple[bytes, bytes]) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    writer.add([new_sample("a", digit_png(1))])
    writer.close()
    index = only(tmp_path, INDEX_SUFFIX)
    assert damage[0] in index.read_bytes()
    index.write_bytes(index.read_bytes().replace(*damage))
    assert SampleReader(tmp_path).get("a") is None


def test_a_writer_whose_segment_was_dropped_goes_on_in_a_new_one(tmp_path: Path) -> None:
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    writer.add([new_sample("a", digit_png(1))])
    for path in tmp_path.iterdir():  # another worker's budget check dropped it
        path.unlink()
    writer.add([new_sample("b", digit_png(2))])
    writer.close()
    reader = SampleReader(tmp_path)
    assert reader.ids() == ["b"]
    b = reader.get("b")
    assert b is not None and b.data == digit_png(2)


def test_segments_close_at_a_sixteenth_of_the_budget_and_after_five_minutes(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    sample_bytes = len(digit_png(1))
    writer = SegmentWriter(tmp_path, max_bytes=16 * 3 * sample_bytes, clock=clock)
    for index in range(4):  # ~1.3 samples' worth each with the index: a new segment per two
        writer.add([new_sample(f"s{index}", digit_png(1))])
    assert len(list(tmp_path.glob(f"*{SEGMENT_SUFFIX}"))) == 2
    clock.advance(301)
    writer.add([new_sample("late", digit_png(1))])
    writer.close()
    assert len(list(tmp_path.glob(f"*{SEGMENT_SUFFIX}"))) == 3
    assert SampleReader(tmp_path).ids() == ["s0", "s1", "s2", "s3", "late"]


def test_of_two_samples_under_one_id_the_newest_is_found(tmp_path: Path) -> None:
    first = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    second = SegmentWriter(tmp_path, max_bytes=1 << 20, clock=FakeClock())
    first.add([new_sample("same", digit_png(1), "1")])
    second.add([new_sample("same", digit_png(2), "2")])  # a client reused its id on another worker
    assert first.add([new_sample("same", digit_png(3), "3")]).outcomes == [
        "duplicate_id"
    ]  # this one's
    first.close()
    second.close()
    found = SampleReader(tmp_path).get("same")
    assert found is not None and found.record["label"] == "2"


def test_the_cli_lists_and_exports_the_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "captured" / "digits"
    writer = SegmentWriter(folder, max_bytes=1 << 20, clock=FakeClock())
    writer.add([new_sample("a", digit_png(1), "1"), new_sample("b", digit_png(2), "2")])
    writer.close()
    assert main([str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": "a", "label": "1"},
        {"id": "b", "label": "2"},
    ]
    out = tmp_path / "export"
    assert main([str(folder), "--export", str(out)]) == 0
    assert "2 samples written" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    assert (out / "b.png").read_bytes() == digit_png(2)
    assert json.loads((out / "a.json").read_text()) == {"id": "a", "label": "1"}
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
