"""Captured inference inputs: a sampled share of what clients sent, kept on disk for feedback.

:meth:`CaptureWriter.offer` is all the request path does: one ``put_nowait`` on a bounded queue
(a full queue skips the sample and counts it; a request never waits for a disk). One writer
thread stores each sample under ``<capture dir>/<model>/``: the image exactly as it arrived
(``<id>.<ext>``; a pixel tensor as PNG) and then its sidecar record (``<id>.json``: id, model,
version, the label served, top-k scores, time). The record is written to a temporary name and
renamed once its image is complete, so a crash never leaves a record naming a half image. The
thread wakes once per batch of samples, not per sample. Each model's folder is kept under a byte
budget by deleting its oldest samples. (At rate 1 the file creations cost the kernel about as
much CPU as the request itself: BENCHMARKS.md, "Capture (issue 19)".)

When writes fail (full disk, unwritable folder) the service keeps serving: capture pauses for
:data:`RETRY_AFTER_S`, skipped samples are counted, the ``writable`` hook says 0, and one log
line per pause says why.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.decoding.probe import sniff_format

logger = logging.getLogger(__name__)

#: Seconds capture pauses after a failed write before trying again (and between log lines).
RETRY_AFTER_S = 60.0
#: A temporary file older than this (seconds) is a crashed writer's, removed at start.
STALE_TMP_S = 600.0
#: Samples written per wake-up of the writer thread, at most.
WRITE_BATCH = 256
#: Seconds the writer sleeps after a batch, so that the next one gathers while it sleeps.
WRITE_PAUSE_S = 0.02
#: Scores kept in a sidecar record.
RECORD_TOP_K = 5
#: File name suffix per sniffed image format.
SUFFIXES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
RECORD_SUFFIX = ".json"
TMP_PREFIX = ".tmp-"


class CaptureObserver(Protocol):
    """What the writer reports (the service's metrics implement it)."""

    def captured(self, model: str) -> None: ...
    def capture_skipped(self, model: str, reason: str) -> None: ...
    def capture_bytes(self, model: str, size: int) -> None: ...
    def capture_writable(self, writable: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class CaptureSample:
    """One prediction to store: the input as it arrived and what the service answered.

    Attributes:
        id: The prediction id (already checked against the id pattern: safe as a file name).
        model, version: The version that answered.
        data: The encoded image's bytes, or an (H, W, 3) pixel array (0..255) to store as PNG.
        probabilities: (num_classes,) the answer; the record keeps the top-k.
        class_names: The version's classes, index-aligned with ``probabilities``.
        time: When the answer was computed (seconds since the epoch).
    """

    id: str
    model: str
    version: int
    data: bytes | np.ndarray
    probabilities: np.ndarray
    class_names: Sequence[str]
    time: float


_STOP = object()


class CaptureWriter:
    """A bounded queue of samples and the thread that writes them (see the module docstring).

    Args:
        root: The capture folder; each model gets a sub-folder.
        max_bytes_per_model: Budget of each model's folder, bytes (images and records).
        queue_size: Samples that may wait for the writer; more are skipped (``queue_full``).
        observer: Receives counts and sizes (metrics).
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_bytes_per_model: int,
        queue_size: int,
        observer: CaptureObserver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.max_bytes_per_model = max_bytes_per_model
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._observer = observer
        self._clock = clock
        self._paused_until = 0.0
        self._bytes: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        observer.capture_writable(True)

    # --- the request path --------------------------------------------------------------------
    def offer(self, sample: CaptureSample) -> bool:
        """Queue ``sample`` for writing without waiting; False (counted) when it is skipped."""
        if self._paused_until and self._clock() < self._paused_until:
            self._observer.capture_skipped(sample.model, "write_error")
            return False
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self._observer.capture_skipped(sample.model, "queue_full")
            return False
        return True

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s`` seconds), then end the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._thread = None

    def drain(self) -> None:
        """Block until every queued sample is written (tests and shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for sample in batch:
                try:
                    if sample is _STOP:
                        stop = True
                    else:
                        self._write_safely(sample)
                finally:
                    self._queue.task_done()
            if stop:
                return
            # Let samples gather: one wake-up (and GIL hand-over) per batch, not per sample.
            time.sleep(WRITE_PAUSE_S)

    # --- the writer thread -------------------------------------------------------------------
    def _write_safely(self, sample: CaptureSample) -> None:
        try:
            reason = self._write(sample)
        except OSError as exc:
            self._pause(sample.model, exc)
            return
        except Exception:  # a bug must not end the thread: every later sample would queue up
            logger.exception("capture of %s failed", sample.id)
            self._observer.capture_skipped(sample.model, "write_error")
            return
        if reason is not None:
            self._observer.capture_skipped(sample.model, reason)
            return
        if self._paused_until:
            self._paused_until = 0.0
            self._observer.capture_writable(True)
            logger.info("capture writes to %s work again", self.root)
        self._observer.captured(sample.model)

    def _pause(self, model: str, exc: OSError) -> None:
        self._observer.capture_skipped(model, "write_error")
        self._observer.capture_writable(False)
        self._paused_until = self._clock() + RETRY_AFTER_S
        logger.warning(
            "cannot write captured inputs under %s (%s); capture pauses for %g s, the service "
            "keeps serving",
            self.root,
            exc.strerror or exc,
            RETRY_AFTER_S,
        )

    def _write(self, sample: CaptureSample) -> str | None:
        """Store one sample; the skip reason, or None when written."""
        folder = self.root / sample.model
        if sample.model not in self._bytes:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(folder)
            self._bytes[sample.model] = folder_bytes(folder)
        record_path = folder / f"{sample.id}{RECORD_SUFFIX}"
        if record_path.exists():
            return "duplicate_id"  # a client reused its X-Request-Id: the first one stays
        data, suffix = encoded(sample.data)
        record = json.dumps(record_of(sample, f"{sample.id}.{suffix}", len(data))).encode()
        size = len(data) + len(record)
        if size > self.max_bytes_per_model:
            return "over_budget"
        # The image under its own name at once (an image without a record is never read,
        # and the budget counts it), then the record, under a temporary name and renamed:
        # the record appears only once its image is complete.
        try:
            with open(folder / f"{sample.id}.{suffix}", "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return "duplicate_id"
        write_atomically(record_path, record)
        self._bytes[sample.model] += size
        if self._bytes[sample.model] > self.max_bytes_per_model:
            self._bytes[sample.model] = trim_to_budget(folder, self.max_bytes_per_model)
        self._observer.capture_bytes(sample.model, self._bytes[sample.model])
        return None


def encoded(data: bytes | np.ndarray) -> tuple[bytes, str]:
    """The bytes to store and their suffix: an encoded image as it is, pixels as PNG."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        return raw, SUFFIXES.get(sniff_format(raw) or "", "bin")
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(data, dtype=np.float32)), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def record_of(sample: CaptureSample, file_name: str, size: int) -> dict[str, Any]:
    """The sidecar record of a sample (JSON-ready)."""
    probabilities = np.asarray(sample.probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, kind="stable")[:RECORD_TOP_K]
    top = [
        {"label": sample.class_names[int(i)], "score": round(float(probabilities[i]), 6)}
        for i in order
    ]
    return {
        "id": sample.id,
        "model": sample.model,
        "version": sample.version,
        "label": top[0]["label"],
        "top_k": top,
        "time": datetime.fromtimestamp(sample.time, UTC).isoformat(),
        "file": file_name,
        "bytes": size,
    }


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name in ``path``'s folder, then rename it to ``path``."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def folder_bytes(folder: Path) -> int:
    """Bytes of every finished file in ``folder`` (temporary files excluded)."""
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def trim_to_budget(folder: Path, max_bytes: int) -> int:
    """Delete the oldest samples (record first, then image) until ``folder`` holds at most
    ``max_bytes``; the bytes left. Reads the folder itself: other workers write there too."""
    samples: dict[str, list[tuple[int, int, str]]] = {}
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
            total += stat.st_size
            sample_id = entry.name.rsplit(".", 1)[0]
            samples.setdefault(sample_id, []).append((stat.st_mtime_ns, stat.st_size, entry.name))
    oldest_first = sorted(samples.items(), key=lambda item: min(f[0] for f in item[1]))
    for _, files in oldest_first:
        if total <= max_bytes:
            break
        # The record goes first: a record never names a deleted image.
        for _, size, name in sorted(files, key=lambda f: not f[2].endswith(RECORD_SUFFIX)):
            try:
                (folder / name).unlink()
                total -= size
            except FileNotFoundError:  # another worker trimmed it already
                total -= size
    return total


def remove_stale_tmp(folder: Path) -> None:
    """Remove temporary files a crashed writer left (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                try:
                    if now - entry.stat().st_mtime > STALE_TMP_S:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass
