"""Feedback: true labels attached to predictions, stored as the training data of the next version.

A labelled example lands in ``<feedback dir>/<model>/<label>/<id>.<ext>``, exactly the layout
``train.py --data`` reads (one sub-folder per class), and its provenance (version, the label the
service answered, the outcome) in ``<feedback dir>/<model>/.records/<id>.json``: a hidden folder,
which the training folder scan skips. A captured prediction (:mod:`service.feedback.capture`)
is copied there from its model's capture segments when its feedback arrives (the capture itself
expires with the capture budget); an example sent with its label is stored directly.

Every path component is checked here: ids against the id pattern, labels against
:func:`check_label`; model names come from the repository, never from the client.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from service.feedback.capture import encoded
from service.feedback.ids import is_prediction_id
from service.feedback.samples import Sample, SampleReader, model_folder
from service.serving.errors import (
    AlreadyLabelled,
    CaptureUnavailable,
    InvalidInput,
    UnknownLabel,
    UnknownPrediction,
)

#: Outcomes of one labelled example (``imgcls_feedback_total``'s ``outcome``).
CORRECT: Final = "correct"
WRONG: Final = "wrong"
NEW_CLASS: Final = "new_class"
OUTCOMES: Final = (CORRECT, WRONG, NEW_CLASS)
#: The hidden folder of provenance records (hidden: ``train.py --data`` skips it).
RECORDS_DIR: Final = ".records"
RECORD_SUFFIX: Final = ".json"
TMP_PREFIX: Final = ".tmp-"
#: Longest label, in characters.
MAX_LABEL_CHARS: Final = 64
#: Largest sidecar record read back, bytes.
MAX_RECORD_BYTES: Final = 64 * 1024
#: Characters a label may not hold: path separators, NUL, and other control characters.
_FORBIDDEN = frozenset("/\\\0") | {chr(c) for c in range(32)} | {chr(127)}
#: Known classes listed in an error message at most.
MAX_LABELS_SHOWN: Final = 50


def check_label(label: object) -> str:
    """``label`` when it can be a class folder's name, else :class:`InvalidInput` saying why."""
    if not isinstance(label, str) or not label.strip():
        raise InvalidInput("label must be a non-empty string: the true class of the image")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidInput(f"label is {len(label)} characters; at most {MAX_LABEL_CHARS}")
    if label.startswith(".") or label != label.strip() or any(c in _FORBIDDEN for c in label):
        raise InvalidInput(
            f"label {label[:MAX_LABEL_CHARS]!r} cannot be a class folder name: no '/', '\\', "
            "control characters, surrounding spaces or leading '.'"
        )
    return label


def outcome_of(label: str, predicted: str, class_names: Sequence[str], new_class: bool) -> str:
    """``correct``, ``wrong`` or ``new_class`` for a true ``label`` of a prediction."""
    if label in class_names:
        return CORRECT if label == predicted else WRONG
    if new_class:
        return NEW_CLASS
    shown = ", ".join(class_names[:MAX_LABELS_SHOWN])
    more = f" (and {len(class_names) - MAX_LABELS_SHOWN} more)" if len(class_names) > 50 else ""
    raise UnknownLabel(
        f"label {label!r} is not a class of this model; known labels: {shown}{more}. Send "
        '"new_class": true to store it for the next training (no accuracy is counted for it)'
    )


@dataclass(frozen=True, slots=True)
class CapturedPrediction:
    """A captured prediction's sidecar record, read back."""

    id: str
    model: str
    version: int
    label: str  # the class the service answered
    suffix: str  # the image's file suffix, without the dot
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Labelled:
    """Where one labelled example was stored, and what it says about the version."""

    id: str
    model: str
    version: int
    predicted: str
    label: str
    outcome: str
    path: Path

    def answer(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "predicted": self.predicted,
            "outcome": self.outcome,
        }


class FeedbackStore:
    """The capture and feedback folders, for the feedback routes (blocking file I/O: run it off
    the event loop)."""

    def __init__(self, capture_dir: Path, feedback_dir: Path) -> None:
        self.capture_dir = capture_dir
        self.feedback_dir = feedback_dir

    def find(self, prediction_id: str, models: Iterable[str]) -> CapturedPrediction:
        """The captured prediction ``prediction_id`` among ``models``' captures."""
        if not is_prediction_id(prediction_id):
            raise InvalidInput(
                "id must be a prediction id this service answered with (the X-Request-Id "
                "header, or a result's \"id\"): letters, digits, '_' and '-', 1-64 characters, "
                "optionally '.<image index>'"
            )
        for model in models:
            done = self._record_path(model, prediction_id)
            if done.is_file():
                previous = _read_record(done)
                raise AlreadyLabelled(
                    f"prediction {prediction_id} of {model!r} already has its true label "
                    f"({previous.get('label')!r}); feedback is taken once per prediction"
                )
            sample = self._captured(model, prediction_id)
            if sample is None:
                continue
            try:
                return CapturedPrediction(
                    id=prediction_id,
                    model=model,
                    version=int(sample.record["version"]),
                    label=str(sample.record["label"]),
                    suffix=sample.suffix,
                    record=sample.record,
                )
            except (KeyError, TypeError, ValueError):
                break  # a damaged record: as good as expired
        raise UnknownPrediction(
            f"no captured prediction {prediction_id}: it was not captured (capture is off, or "
            "this prediction was not sampled: IMGCLS_CAPTURE_RATE), or it expired (the capture "
            "budget, IMGCLS_CAPTURE_MAX_BYTES, dropped it). Send the image with its label to "
            "POST /models/{name}/feedback instead"
        )

    def label_prediction(
        self,
        prediction_id: str,
        label: str,
        new_class: bool,
        models: Iterable[str],
        classes_of: Callable[[str, int], Sequence[str]],
    ) -> Labelled:
        """Attach the true ``label`` to a captured prediction: check it, find the capture among
        ``models``, judge the answer against the classes of the version that gave it
        (``classes_of(model, version)``), and move the example into the labelled folder."""
        check_label(label)
        captured = self.find(prediction_id, models)
        classes = classes_of(captured.model, captured.version)
        outcome = outcome_of(label, captured.label, classes, new_class)
        return self.label_captured(captured, label, outcome)

    def label_captured(self, captured: CapturedPrediction, label: str, outcome: str) -> Labelled:
        """Move a captured prediction's image into the labelled folder, with its record."""
        labelled = Labelled(
            captured.id,
            captured.model,
            captured.version,
            captured.label,
            label,
            outcome,
            self.feedback_dir / captured.model / label / f"{captured.id}.{captured.suffix}",
        )
        sample = self._captured(captured.model, captured.id)
        if sample is None:
            raise UnknownPrediction(
                f"the captured image of prediction {captured.id} is gone (expired)"
            )
        try:
            labelled.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(labelled.path, sample.data)
            self._write_record(labelled, "capture", captured.record)
        except OSError as exc:
            raise _unavailable(exc) from None
        # The capture itself stays until the budget drops it (segments are append-only): a
        # second feedback for it finds the provenance record and is refused (409).
        return labelled

    def _captured(self, model: str, prediction_id: str) -> Sample | None:
        """``model``'s captured sample ``prediction_id``, or None (never captured, expired, or
        no capture folder)."""
        try:
            return SampleReader(model_folder(self.capture_dir, model)).get(prediction_id)
        except OSError:
            return None

    def store_direct(
        self,
        prediction_id: str,
        model: str,
        version: int,
        data: bytes,
        predicted: str,
        label: str,
        outcome: str,
    ) -> Labelled:
        """Store an example sent with its label (already classified by ``version``)."""
        raw, suffix = encoded(data)
        labelled = Labelled(
            prediction_id,
            model,
            version,
            predicted,
            label,
            outcome,
            self.feedback_dir / model / label / f"{prediction_id}.{suffix}",
        )
        if self._record_path(model, prediction_id).exists():
            raise AlreadyLabelled(
                f"an example with id {prediction_id} is already stored for {model!r}; send "
                "another X-Request-Id (or none)"
            )
        try:
            labelled.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(labelled.path, raw)
            self._write_record(labelled, "direct", {})
        except OSError as exc:
            raise _unavailable(exc) from None
        return labelled

    def _record_path(self, model: str, prediction_id: str) -> Path:
        return self.feedback_dir / model / RECORDS_DIR / f"{prediction_id}{RECORD_SUFFIX}"

    def _write_record(self, labelled: Labelled, source: str, captured: dict[str, Any]) -> None:
        path = self._record_path(labelled.model, labelled.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **labelled.answer(),
            "file": labelled.path.relative_to(self.feedback_dir / labelled.model).as_posix(),
            "source": source,
            "time": datetime.now(UTC).isoformat(),
            "captured": captured or None,
        }
        write_atomically(path, json.dumps(record, indent=1).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name in ``path``'s folder, then rename it to ``path``: a
    reader (or training) never sees half a file."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
        record = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
    except (OSError, ValueError):
        record = None
    return record if isinstance(record, dict) else {}


def _unavailable(exc: OSError) -> CaptureUnavailable:
    return CaptureUnavailable(
        f"the feedback folder cannot be written ({exc.strerror or exc}); the example was not "
        "stored, retry later"
    )
