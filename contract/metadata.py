"""The model repository's contract: ``models/<name>/<version>/metadata.json`` and its checks.

Training and the service both import it (it imports neither TensorFlow nor Keras). Training
writes :class:`ModelMetadata` last, after every other file of a version is on disk; the service
loads a version only when :func:`verify_version_dir` accepts it, so a half-written, tampered or
foreign folder is never served."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.checksums import sha256_file
from contract.drift import DriftBaseline
from contract.evaluation import Evaluation
from contract.names import SERVE_ENDPOINT
from contract.runtimes import RUNTIMES_DIR, RuntimeReport

METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 1
#: What every exported SavedModel takes on its ``serve`` endpoint: raw RGB pixels.
SERVING_INPUT = "float32 RGB pixel values 0..255, shape (batch, any height, any width, 3)"


class InvalidModelVersionError(Exception):
    """A version folder that must not be served; ``str(err)`` says why."""


class InputSpec(BaseModel):
    """The network's input after the in-model preprocessing (resize, colour, rescale)."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(gt=0, description="pixels")
    width: int = Field(gt=0, description="pixels")
    channels: Literal[1, 3]
    color_mode: Literal["grayscale", "rgb"]
    serving_input: str = SERVING_INPUT


class DataSource(BaseModel):
    """One source of a run's training data, with its own counts: a ``--data`` folder or the
    bundled digits (an item of :attr:`DataSummary.sources`)."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="the --data folder as given, or 'sklearn:digits'")
    files: int = Field(ge=0, description="image files found (by name) in it")
    skipped_files: int = Field(
        default=0, ge=0, description="of them, unreadable files skipped, each with a warning"
    )
    class_counts: dict[str, int] = Field(
        description="readable images per class of this source (its own classes only), all splits"
    )


class DataSummary(BaseModel):
    """What a run trained on, stored as ``metadata.training["data"]`` (absent in older versions).

    Read it back with :attr:`ModelMetadata.data_summary`.
    """

    model_config = ConfigDict(extra="allow")

    source: str = Field(
        description="'sklearn:digits', the --data folder, or several --data folders joined by ' + '"
    )
    files: int = Field(ge=0, description="image files found (by name) in the folder(s)")
    skipped_files: int = Field(ge=0, description="unreadable files skipped, each with a warning")
    class_counts: dict[str, int] = Field(description="readable images per class, all splits")
    imbalance_ratio: float = Field(ge=0, le=1, description="smallest class / largest class")
    input_shape: list[int] = Field(description="height, width, channels of the network input")
    input_shape_reason: str = Field(description="how the input shape was chosen")
    class_weights: dict[str, float] | None = Field(
        default=None, description="--class-weight balanced: loss weight per class"
    )
    sources: list[DataSource] | None = Field(
        default=None,
        description="every source of the data, in --data order, with its own counts (several "
        "--data folders are merged by class name; the fields above are their totals); absent in "
        "versions published before training on several folders",
    )


class ModelMetadata(BaseModel):
    """Everything a server or a person needs to know about one published version."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    created_at: datetime
    class_names: list[str] = Field(min_length=2)
    input: InputSpec
    arch: str
    parameter_count: int = Field(ge=0)
    endpoints: list[str] = Field(default_factory=lambda: [SERVE_ENDPOINT])
    training: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    drift_baseline: DriftBaseline | None = Field(
        default=None,
        description="predictions on the test split, for the service's drift gauges (absent in "
        "versions published before drift monitoring)",
    )
    evaluation: Evaluation | None = Field(
        default=None,
        description="the evaluation gate: this version against the model's stable version on "
        "the same examples, and whether it is blessed (absent in versions published before the "
        "gate: those count as blessed)",
    )
    runtimes: RuntimeReport | None = Field(
        default=None,
        description="the network compiled for other runtimes, each measured against the "
        "SavedModel (absent in versions published before compiled runtimes, or without one)",
    )
    files: dict[str, str] = Field(
        description="relative path -> sha256 hex of every other file, except runtimes/ (each "
        "artifact lists its own)"
    )

    @property
    def blessed(self) -> bool:
        """Whether unpinned traffic may reach this version without someone pinning it."""
        return self.evaluation is None or self.evaluation.blessed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_summary(self) -> DataSummary | None:
        """The training data's :class:`DataSummary`, or None for versions published without one."""
        raw = self.training.get("data")
        return DataSummary.model_validate(raw) if isinstance(raw, dict) else None


def checksum_tree(version_dir: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``version_dir`` except metadata.json itself and the
    compiled artifacts under ``runtimes/`` (checked one by one when served: a damaged artifact
    must cost its speed, not the version).

    Raises InvalidModelVersionError on a symbolic link: a version must be self-contained, and a
    link could point the server at files outside the model repository.
    """
    checksums: dict[str, str] = {}
    for root, dirs, files in os.walk(version_dir):
        if Path(root) == version_dir and RUNTIMES_DIR in dirs:
            dirs.remove(RUNTIMES_DIR)  # not walked: its links are refused when it is served
        for entry in [*dirs, *files]:
            if (Path(root) / entry).is_symlink():
                rel = (Path(root) / entry).relative_to(version_dir)
                raise InvalidModelVersionError(
                    f"{rel} is a symbolic link; versions must be self-contained"
                )
        for file_name in files:
            path = Path(root) / file_name
            rel_name = path.relative_to(version_dir).as_posix()
            if rel_name != METADATA_FILE:
                checksums[rel_name] = sha256_file(path)
    return dict(sorted(checksums.items()))


def write_metadata(version_dir: Path, metadata: ModelMetadata) -> Path:
    """Write metadata.json durably (temp file, fsync, rename) and return its path."""
    target = version_dir / METADATA_FILE
    tmp = version_dir / f".{METADATA_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(metadata.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Parse metadata.json without checking the files; raises InvalidModelVersionError."""
    path = version_dir / METADATA_FILE
    if path.is_symlink() or not path.is_file():
        raise InvalidModelVersionError(f"no {METADATA_FILE} (incomplete or still being published)")
    try:
        return ModelMetadata.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelVersionError(f"{METADATA_FILE} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidModelVersionError(f"{METADATA_FILE} field {where!r}: {first['msg']}") from exc


def verify_version_dir(version_dir: Path, *, repository_root: Path | None = None) -> ModelMetadata:
    """Return the metadata of a complete, untampered version, or raise InvalidModelVersionError.

    Checks, in order: the folder resolves inside ``repository_root`` (no symlink escapes), its
    name is the version in metadata.json, every listed file exists with its recorded SHA-256, and
    no unlisted file was added.
    """
    if repository_root is not None:
        root = repository_root.resolve()
        resolved = version_dir.resolve()
        if version_dir.is_symlink() or not resolved.is_relative_to(root):
            raise InvalidModelVersionError(
                f"{version_dir} resolves outside the model repository {root}"
            )
    metadata = read_metadata(version_dir)
    if str(metadata.version) != version_dir.name:
        raise InvalidModelVersionError(
            f"folder {version_dir.name!r} holds version {metadata.version} "
            f"according to {METADATA_FILE}"
        )
    if not metadata.files:
        raise InvalidModelVersionError(f"{METADATA_FILE} lists no files")
    actual = checksum_tree(version_dir)
    for rel, expected in metadata.files.items():
        if rel not in actual:
            raise InvalidModelVersionError(f"file {rel} listed in {METADATA_FILE} is missing")
        if actual[rel] != expected:
            raise InvalidModelVersionError(f"checksum mismatch for {rel}")
    extra = sorted(set(actual) - set(metadata.files))
    if extra:
        raise InvalidModelVersionError(f"unlisted file(s) present: {', '.join(extra[:3])}")
    return metadata


def list_versions(model_dir: Path) -> list[int]:
    """Integer version folders under ``models/<name>/``, ascending; temp folders are ignored."""
    if not model_dir.is_dir():
        return []
    versions = []
    for entry in model_dir.iterdir():
        if entry.name.isdigit() and entry.is_dir() and int(entry.name) >= 1:
            versions.append(int(entry.name))
    return sorted(versions)
