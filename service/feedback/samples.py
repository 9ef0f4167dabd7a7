"""One model's captured samples: append-only segment files of the inputs and their records.

A model's capture folder (``<capture dir>/<model>/``) holds segments. Each is a pair of files
owned by the one writer (a worker process's capture thread) that appends to it:

* ``<segment>.seg``: the images exactly as they arrived (pixel tensors as PNG), back to back;
* ``<segment>.idx``: one JSON line per sample, appended after its bytes are in the ``.seg``:
  ``{"id": ..., "offset": ..., "length": ..., "suffix": ..., "record": {...}}``, where
  ``record`` is the sidecar record (id, model, version, the label served, top-k scores, time).

Why not one file per sample: creating, renaming and deleting two small files per sample cost
the kernel about as much CPU as the request itself at capture rate 1; a segment takes a whole
batch of samples in two appends (BENCHMARKS.md, "Capture (issue 19)"). Crash safety comes from
the order of the appends: a line names bytes that are already written, and a torn last line (a
crash mid-append) is not a sample. Only appends, reads and deletions of whole files are used,
so the folder may be shared by every worker and every replica (a ``ReadWriteMany`` volume).

A segment's name starts with its creation time (ns), so names sort oldest first. The byte budget
drops whole segments, oldest first, whoever wrote them; a writer whose segment was dropped starts
a new one. Lookups (feedback) read the index files newest first.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SEGMENT_SUFFIX: Final = ".seg"
INDEX_SUFFIX: Final = ".idx"
#: A segment is closed once it holds this share of the budget (so the budget drops at most that
#: much at once), and at most :data:`SEGMENT_MAX_BYTES`.
SEGMENT_SHARE: Final = 1 / 16
SEGMENT_MAX_BYTES: Final = 64 * 1024 * 1024
#: Seconds a segment takes new samples at most (oldest-first stays close to the truth).
SEGMENT_MAX_AGE_S: Final = 300.0
#: Seconds between two scans of the folder for the bytes every writer holds (sooner when this
#: writer's own count says the budget is full).
SCAN_INTERVAL_S: Final = 1.0
#: Ids a writer remembers to skip a reused one (a client resending its ``X-Request-Id``).
RECENT_IDS: Final = 65_536
#: Longest file suffix (``png``, ``jpg``, ``webp``, ...) an index line may name.
MAX_SUFFIX_CHARS: Final = 8
#: Longest index line read back, bytes (a record is a few hundred).
MAX_INDEX_LINE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """A captured sample, to add or read back: the id, the image's bytes as they arrived and
    their file suffix (without the dot), and the sidecar record (JSON-ready)."""

    id: str
    data: bytes
    suffix: str
    record: dict[str, Any]


#: What became of a sample given to :meth:`SegmentWriter.add`.
STORED: Final = "stored"
DUPLICATE_ID: Final = "duplicate_id"  # its id was stored recently: the first one stays
OVER_BUDGET: Final = "over_budget"  # larger than the whole budget


@dataclass(frozen=True, slots=True)
class Added:
    """What one :meth:`SegmentWriter.add` did: each sample's outcome (:data:`STORED`,
    :data:`DUPLICATE_ID`, :data:`OVER_BUDGET`), and the bytes the folder holds, all writers."""

    outcomes: list[str]
    folder_bytes: int


def model_folder(capture_dir: Path, model: str) -> Path:
    """Where ``model``'s captured samples live under ``capture_dir``."""
    return capture_dir / model


class SegmentWriter:
    """Appends one writer's samples to its segments in ``folder``, within ``max_bytes`` for the
    whole folder (every writer's segments). Blocking file I/O: the capture thread's.

    Args:
        folder: The model's capture folder (created when missing).
        max_bytes: The folder's budget, bytes.
        clock: Seconds, monotonic (segment age and scan interval; tests pass their own).
    """

    def __init__(
        self, folder: Path, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._clock = clock
        self._segment_bytes = max(1, min(int(max_bytes * SEGMENT_SHARE), SEGMENT_MAX_BYTES))
        self._data: int | None = None  # file descriptors of the open segment's two files
        self._index: int | None = None
        self._name = ""
        self._opened_at = 0.0
        self._written = 0  # bytes in the open segment (data and index)
        self._data_bytes = 0  # bytes in the open segment's .seg: the next sample's offset
        self._scanned_bytes = 0  # the folder's bytes at the last scan ...
        self._unscanned = 0  # ... plus what this writer added since
        self._scanned_at: float | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, samples: Sequence[Sample]) -> Added:
        """Append ``samples`` (two writes), then keep the folder within the budget."""
        seen: set[str] = set()
        fresh = []
        for sample in samples:  # not stored lately, nor earlier in this batch
            fresh.append(sample.id not in self._recent and sample.id not in seen)
            seen.add(sample.id)
        outcomes = [STORED if new else DUPLICATE_ID for new in fresh]
        if any(fresh):
            data, index = self._segment()
            offset = self._data_bytes
            blobs: list[bytes] = []
            lines: list[bytes] = []
            for position, sample in enumerate(samples):
                if not fresh[position]:
                    continue
                entry = {
                    "id": sample.id,
                    "offset": offset,
                    "length": len(sample.data),
                    "suffix": sample.suffix,
                    "record": sample.record,
                }
                line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
                if len(sample.data) + len(line) > self.max_bytes:
                    outcomes[position] = OVER_BUDGET
                    continue
                self._remember(sample.id)
                blobs.append(sample.data)
                lines.append(line)
                offset += len(sample.data)
            blob, text = b"".join(blobs), b"".join(lines)
            # The bytes first, then the lines that name them.
            _write_all(data, blob)
            self._data_bytes += len(blob)
            _write_all(index, text)
            self._written += len(blob) + len(text)
            self._unscanned += len(blob) + len(text)
        return Added(outcomes, self._keep_budget())

    def close(self) -> None:
        for fd in (self._data, self._index):
            if fd is not None:
                os.close(fd)
        self._data = self._index = None

    def _segment(self) -> tuple[int, int]:
        """The open segment's files; a new segment when it is full, old, or was dropped."""
        if self._data is not None and self._index is not None:
            full = self._written >= self._segment_bytes
            old = self._clock() - self._opened_at >= SEGMENT_MAX_AGE_S
            dropped = os.fstat(self._index).st_nlink == 0
            if not (full or old or dropped):
                return self._data, self._index
            self.close()
        self._name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._data = os.open(self.folder / f"{self._name}{SEGMENT_SUFFIX}", flags, 0o644)
        try:
            self._index = os.open(self.folder / f"{self._name}{INDEX_SUFFIX}", flags, 0o644)
        except BaseException:
            self.close()
            raise
        self._opened_at = self._clock()
        self._written = self._data_bytes = 0
        return self._data, self._index

    def _keep_budget(self) -> int:
        """The folder's bytes after dropping its oldest segments while over the budget."""
        now = self._clock()
        due = self._scanned_at is None or now - self._scanned_at >= SCAN_INTERVAL_S
        if not due and self._scanned_bytes + self._unscanned <= self.max_bytes:
            return self._scanned_bytes + self._unscanned
        segments = segment_sizes(self.folder)
        total = sum(segments.values())
        for name in sorted(segments):
            if total <= self.max_bytes:
                break
            # The index first: a line never names a deleted segment's bytes for long.
            for suffix in (INDEX_SUFFIX, SEGMENT_SUFFIX):
                # missing_ok: another writer dropped it already
                (self.folder / f"{name}{suffix}").unlink(missing_ok=True)
            total -= segments[name]
        self._scanned_bytes, self._unscanned, self._scanned_at = total, 0, now
        return total

    def _remember(self, sample_id: str) -> None:
        self._recent[sample_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def segment_sizes(folder: Path) -> dict[str, int]:
    """Bytes of each segment in ``folder`` (its ``.seg`` and ``.idx`` together), by name."""
    sizes: dict[str, int] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name, dot, suffix = entry.name.rpartition(".")
            if not dot or f".{suffix}" not in (SEGMENT_SUFFIX, INDEX_SUFFIX):
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            sizes[name] = sizes.get(name, 0) + size
    return sizes


class SampleReader:
    """Reads a model's captured samples (any writer's), for feedback and tools."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, sample_id: str) -> Sample | None:
        """The newest sample ``sample_id``, or None when it is not (or no longer) here."""
        needle = b'{"id":' + json.dumps(sample_id).encode() + b","
        for name in reversed(self._segments()):
            try:
                index = (self.folder / f"{name}{INDEX_SUFFIX}").read_bytes()
            except FileNotFoundError:
                continue  # dropped by the budget meanwhile
            at = index.rfind(needle)
            while at > 0 and index[at - 1 : at] != b"\n":  # only at the start of a line
                at = index.rfind(needle, 0, at)
            if at < 0:
                continue
            end = index.find(b"\n", at)
            entry = _entry(index[at : end + 1]) if end >= 0 else None
            if entry is not None:
                return self._read(name, entry)
        return None

    def ids(self) -> list[str]:
        """Every stored id, oldest segment first, in the order written."""
        return [entry["id"] for _, entry in self._entries()]

    def samples(self) -> Iterator[Sample]:
        """Every stored sample, oldest segment first, in the order written: one pass over the
        folder (``get`` per id would read every index again for each sample)."""
        for name, entry in self._entries():
            sample = self._read(name, entry)
            if sample is not None:  # its segment was dropped meanwhile, or is short
                yield sample

    def _entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(segment name, index entry) of every whole index line, oldest segment first."""
        for name in self._segments():
            try:
                index = (self.folder / f"{name}{INDEX_SUFFIX}").read_bytes()
            except FileNotFoundError:
                continue  # dropped by the budget meanwhile
            for line in index.splitlines(keepends=True):
                entry = _entry(line)
                if entry is not None:
                    yield name, entry

    def total_bytes(self) -> int:
        return sum(segment_sizes(self.folder).values()) if self.folder.is_dir() else 0

    def _segments(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(segment_sizes(self.folder))

    def _read(self, name: str, entry: dict[str, Any]) -> Sample | None:
        try:
            with open(self.folder / f"{name}{SEGMENT_SUFFIX}", "rb") as handle:
                handle.seek(entry["offset"])
                data = handle.read(entry["length"])
        except FileNotFoundError:
            return None
        if len(data) != entry["length"]:
            return None
        return Sample(entry["id"], data, entry["suffix"], entry["record"])


def _entry(line: bytes) -> dict[str, Any] | None:
    """An index line's entry, or None for a torn or damaged line."""
    if not line.endswith(b"\n") or len(line) > MAX_INDEX_LINE_BYTES:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("id"), str)
        or not isinstance(entry.get("offset"), int)
        or not isinstance(entry.get("length"), int)
        or not isinstance(entry.get("suffix"), str)
        or not (entry["suffix"].isascii() and entry["suffix"].isalnum())
        or len(entry["suffix"]) > MAX_SUFFIX_CHARS
        or not isinstance(entry.get("record"), dict)
        or entry["offset"] < 0
        or entry["length"] < 0
    ):
        return None
    return entry
