"""Captured inference inputs: a sampled share of what clients sent, kept for feedback.

:meth:`CaptureWriter.offer` is all the request path does: one ``put_nowait`` on a bounded queue
(a full queue skips the sample and counts it; a request never waits for a disk). One writer
thread wakes once per batch of samples and appends the batch to each model's open segment
(:mod:`service.feedback.samples`: two appends per batch, not two files per sample): the image
exactly as it arrived (a pixel tensor as PNG) and its sidecar record (id, model, version, the
label served, top-k scores, time), the record after its image, so a crash never leaves a record
naming a half image. Each model's folder is kept under a byte budget by dropping the oldest
segments.

When writes fail (full disk, unwritable folder) the service keeps serving: capture pauses for
:data:`RETRY_AFTER_S`, skipped samples are counted, the ``writable`` hook says 0, and one log
line per pause says why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from contract.decoding.probe import sniff_format
from service.feedback.samples import (
    DUPLICATE_ID,
    OVER_BUDGET,
    STORED,
    Sample,
    SegmentWriter,
    model_folder,
)

logger = logging.getLogger(__name__)

#: Seconds capture pauses after a failed write before trying again (and between log lines).
RETRY_AFTER_S = 60.0
#: Samples written per wake-up of the writer thread, at most.
WRITE_BATCH = 256
#: Samples prepared between two hand-overs of the GIL to the request threads.
YIELD_EVERY = 16
#: Seconds the writer sleeps after a batch, so that the next one gathers while it sleeps.
WRITE_PAUSE_S = 0.02
#: Scores kept in a sidecar record.
RECORD_TOP_K = 5
#: File name suffix per sniffed image format.
SUFFIXES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}


class CaptureObserver(Protocol):
    """What the writer reports (the service's metrics implement it)."""

    def captured(self, model: str, count: int = 1) -> None: ...
    def capture_skipped(self, model: str, reason: str, count: int = 1) -> None: ...
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
        self._segments: dict[str, SegmentWriter] = {}  # the writer thread's, by model
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
            samples = [sample for sample in batch if sample is not _STOP]
            try:
                if samples:
                    self._write_batch(samples)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(samples) < len(batch):
                for model in list(self._segments):
                    self._close(model)
                return
            # Let samples gather: one wake-up and one append per batch, not per sample.
            time.sleep(WRITE_PAUSE_S)

    # --- the writer thread -------------------------------------------------------------------
    def _write_batch(self, samples: list[CaptureSample]) -> None:
        """Store ``samples``: one append per model."""
        by_model: dict[str, list[CaptureSample]] = {}
        for sample in samples:
            by_model.setdefault(sample.model, []).append(sample)
        for model, group in by_model.items():
            if self._paused_until and self._clock() < self._paused_until:
                self._observer.capture_skipped(model, "write_error", len(group))
                continue
            try:
                self._write_model(model, group)
            except OSError as exc:
                self._close(model)
                self._observer.capture_skipped(model, "write_error", len(group))
                self._pause(exc)
            except Exception:  # a bug must not end the thread: every later sample would queue up
                logger.exception("capture of %d samples of %s failed", len(group), model)
                self._close(model)
                self._observer.capture_skipped(model, "write_error", len(group))

    def _write_model(self, model: str, samples: list[CaptureSample]) -> None:
        rows: list[Sample] = []
        for index, sample in enumerate(samples):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                # Hand the GIL to the event loop now and then: a batch of hundreds of samples
                # would otherwise hold it for a whole switch interval (5 ms) at a time.
                time.sleep(0)
            data, suffix = encoded(sample.data)
            rows.append(Sample(sample.id, data, suffix, record_of(sample, suffix, len(data))))
        segments = self._segments.get(model)
        if segments is None:
            segments = SegmentWriter(
                model_folder(self.root, model), self.max_bytes_per_model, self._clock
            )
            self._segments[model] = segments
        added = segments.add(rows)
        if self._paused_until:
            self._paused_until = 0.0
            self._observer.capture_writable(True)
            logger.info("capture writes to %s work again", self.root)
        outcomes = Counter(added.outcomes)
        if outcomes[STORED]:
            self._observer.captured(model, outcomes[STORED])
        for reason in (DUPLICATE_ID, OVER_BUDGET):  # a reused X-Request-Id; a huge sample
            if outcomes[reason]:
                self._observer.capture_skipped(model, reason, outcomes[reason])
        self._observer.capture_bytes(model, added.folder_bytes)

    def _close(self, model: str) -> None:
        """Close ``model``'s open segment (a new one is opened at the next write: the folder
        may have been repaired meanwhile)."""
        segments = self._segments.pop(model, None)
        if segments is not None:
            with contextlib.suppress(OSError):
                segments.close()

    def _pause(self, exc: OSError) -> None:
        self._observer.capture_writable(False)
        self._paused_until = self._clock() + RETRY_AFTER_S
        logger.warning(
            "cannot write captured inputs under %s (%s); capture pauses for %g s, the service "
            "keeps serving",
            self.root,
            exc.strerror or exc,
            RETRY_AFTER_S,
        )


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


def record_of(sample: CaptureSample, suffix: str, size: int) -> dict[str, Any]:
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
        "suffix": suffix,
        "bytes": size,
    }
