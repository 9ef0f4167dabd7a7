"""``rollout.log``: the append-only record of every rollout decision, beside ``serving.yaml``.

One JSON object per line: ``time`` (Unix seconds), ``model``, ``decision``, ``by``
(``controller`` or ``operator``), ``stable``, ``canary``, ``weight``, ``previous``,
``failures``, ``held``, ``paused``, ``rolled_back`` (version -> reason, every version of the
model ever rolled back), ``reason``, ``checks`` (each with its value, threshold and verdict) and
``requests`` (the interval's count per side). Every line carries the model's whole rollout
state, so the last line of a model is enough to resume from (the controller after a restart)
or to show (``GET /models``), and the file may be rotated like any log: rotation forgets which
versions were rolled back, so they could be tried again.

Lines are appended with one ``write`` on a file opened with ``O_APPEND``: concurrent writers
(the controller, an operator's command) never interleave inside a line, and a torn last line
(a crash mid-write) is skipped by readers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROLLOUT_LOG = "rollout.log"
#: How much of the file's end ``GET /models`` reads, bytes: a day of decisions of a few
#: models at one interval a minute.
TAIL_BYTES = 1 << 20


def journal_path(models_dir: Path) -> Path:
    return models_dir / ROLLOUT_LOG


def append(path: Path, entry: dict[str, Any]) -> None:
    """Append one entry as one line (a single write), then fsync: a decision that was acted
    on is never lost to a crash. A torn last line (a crash mid-write) is ended first, so it
    cannot swallow this one."""
    line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


class Follower:
    """Reads the lines appended since its last read (``tail -f``): the controller sees every
    line an operator's command wrote, in file order, whatever its time stamp. A file that
    shrank was rotated: it is read again from the start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_entries(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size < self._offset:
                    self._offset, self._partial = 0, b""
                handle.seek(self._offset)
                data = handle.read(size - self._offset)
        except FileNotFoundError:
            self._offset, self._partial = 0, b""
            return []
        except OSError as exc:
            logger.warning("cannot read %s: %s", self.path, exc)
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # after the last newline: a line still being written
        return _parse(lines)


def _parse(lines: list[bytes]) -> list[dict[str, Any]]:
    """The entries of ``lines``, in order; a torn line (a crash mid-write, or one cut by a
    tail read) and anything that is not an entry of a model are skipped."""
    found = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("model"), str):
            found.append(entry)
    return found


def last_entries(path: Path, *, tail_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """Model -> its newest entry; the whole file, or only its last ``tail_bytes``. A missing
    file is an empty journal."""
    try:
        with path.open("rb") as handle:
            if tail_bytes is not None:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - tail_bytes))
            data = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return {}
    return {entry["model"]: entry for entry in _parse(data.splitlines())}


def entries(path: Path, model: str | None = None) -> list[dict[str, Any]]:
    """Every readable entry, oldest first (of ``model`` only when given)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    return [entry for entry in _parse(lines) if model is None or entry["model"] == model]
