"""The production-feedback loop without a server: captured samples built in memory, a capture
writer's reports recorded, a clock the test moves, and what a folder holds on disk."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.feedback.capture import CaptureSample, CaptureWriter
from service.feedback.samples import Sample, SampleReader, model_folder

CLASS_NAMES = [str(digit) for digit in range(10)]
#: 2024-05-01T12:00:00+00:00, the ``time`` of every sample unless a test says otherwise.
SAMPLE_TIME = 1_714_564_800.0


def probabilities_for(top: int, num_classes: int = 10, confidence: float = 0.9) -> np.ndarray:
    """Probabilities with class ``top`` first (``confidence``), the rest falling off by index."""
    rest = np.arange(num_classes, 0, -1, dtype=np.float64)
    rest[top] = 0.0
    probabilities = rest / rest.sum() * (1.0 - confidence)
    probabilities[top] = confidence
    return probabilities


def sample(
    sample_id: str,
    data: bytes | np.ndarray,
    *,
    model: str = "digits",
    version: int = 1,
    top: int = 7,
    class_names: Sequence[str] = CLASS_NAMES,
    time: float = SAMPLE_TIME,
) -> CaptureSample:
    """A captured prediction of ``data`` answered with class ``top``."""
    return CaptureSample(
        id=sample_id,
        model=model,
        version=version,
        data=data,
        probabilities=probabilities_for(top, len(class_names)),
        class_names=list(class_names),
        time=time,
    )


class RecordingObserver:
    """What a :class:`CaptureWriter` reports, as the metrics would see it."""

    def __init__(self) -> None:
        self.captured_by_model: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.bytes_by_model: dict[str, int] = {}
        self.writable: list[bool] = []

    def captured(self, model: str, count: int = 1) -> None:
        self.captured_by_model[model] += count

    def capture_skipped(self, model: str, reason: str, count: int = 1) -> None:
        self.skipped[(model, reason)] += count

    def capture_bytes(self, model: str, size: int) -> None:
        self.bytes_by_model[model] = size

    def capture_writable(self, writable: bool) -> None:
        self.writable.append(writable)


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def capture_now(root: Path, *samples: CaptureSample, max_bytes: int = 1 << 30) -> None:
    """Write ``samples`` under ``root`` with a real writer, and wait until they are on disk."""
    writer = CaptureWriter(
        root, max_bytes_per_model=max_bytes, queue_size=len(samples), observer=RecordingObserver()
    )
    for one in samples:
        assert writer.offer(one)
    writer.start()
    writer.stop()


def captured(root: Path, model: str = "digits") -> dict[str, Sample]:
    """``model``'s captured samples under the capture folder ``root``, by id (oldest first);
    empty when nothing was captured for it."""
    reader = SampleReader(model_folder(root, model))
    ids = reader.ids()  # first: a writer may append between the two passes, never remove here
    found = {sample.id: sample for sample in reader.samples()}
    missing = [sample_id for sample_id in ids if sample_id not in found]
    assert not missing, f"index lines name bytes that are not there: {missing[:3]}"
    return {sample_id: found[sample_id] for sample_id in ids}


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (its path relative to ``folder``, posix) and its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
