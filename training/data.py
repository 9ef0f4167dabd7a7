"""Training data: scikit-learn's bundled digits (in memory), or a folder of class sub-folders
(streamed from disk).

* The digits are small: :func:`load_digits_data` returns :class:`ImageData`, uint8 RGB arrays of
  one size (raw pixels, exactly what the exported model's ``serve`` endpoint takes).
* A folder can be any size: :func:`load_folder_data` lists its files and labels once (classes
  and files sorted, so nothing depends on the order the file system lists them), checks every
  file's header cheaply, fingerprints the contents in chunks, chooses the input size from a
  sample of headers, and splits the FILES into train / validation / test
  (:class:`FolderData`). Several folders (``--data a --data b``) are merged by class NAME: the
  classes are the union of their sub-folder names, and each folder is split on its own, so a
  folder's held-out files are the same whether it is trained alone or with others.
  :func:`make_file_dataset` then streams one split through tf.data: read + decode + resize in
  parallel with the very function the service decodes uploads with
  (:func:`contract.decoding.decode_image`), batch, prefetch; nothing holds every image at once.
* Every tf.data pipeline of a run is built here: :func:`make_datasets` gives the (train, val,
  test) pipelines of either kind (in memory: :func:`make_dataset`), applying the augmenters of
  :mod:`training.augment` to the training split, and :func:`with_class_weights` adds sample
  weights. TensorFlow is imported only when a pipeline is built.

Both test splits are fixed (their own seeds, never ``--seed``) so every run on the same data is
scored on the same held-out images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from contract.decoding.decode import decode_image
from contract.decoding.errors import ImageError
from contract.decoding.files import IMAGE_SUFFIXES, read_header
from contract.decoding.probe import HEADER_BYTES, check_header
from training.errors import UserError

logger = logging.getLogger(__name__)

DIGITS_SIZE = 28  # pixels; the 8x8 scikit-learn digits are upscaled to an MNIST-like 28x28
TEST_SPLIT_SEED = 1234  # fixed: the held-out set never depends on --seed
#: Largest ``width * height`` of a training image, in pixels (Pillow's own bomb threshold);
#: larger files are skipped with a warning. The service has its own, smaller, upload limit.
MAX_TRAINING_PIXELS = 89_478_485
#: Headers read (with Pillow, no pixel data) to choose the input size when none is given.
SAMPLE_HEADERS = 256
#: The longest side, in pixels, of an input size chosen from the data; larger medians are
#: scaled down to it (aspect ratio kept), and the log and metadata say so.
MAX_AUTO_SIDE = 224
#: A class with fewer images than this fraction of the largest class gets a warning.
IMBALANCE_WARN_RATIO = 0.10
#: Bytes of decoded images a ``--cache``d training split may hold in its shuffle buffer.
SHUFFLE_BUFFER_BYTES = 64 * 1024 * 1024
#: Most file names the shuffle buffer of a streamed (uncached) training split holds.
MAX_PATH_SHUFFLE_BUFFER = 100_000
_CHUNK_BYTES = 1 << 20  # fingerprint read size
GIVEN_SHAPE = "from --input-shape"  # FolderData.input_shape_reason when the user chose it


class DataError(UserError):
    """A user mistake in the data (missing folder, no images, one class): one line, exit 2."""


@dataclass(frozen=True)
class Split:
    """Images (N, H, W, 3) uint8 RGB and labels (N,) int32."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ImageData:
    """A dataset ready for training, with what the published metadata needs to say about it."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    default_input_shape: tuple[int, int, int]  # (height, width, channels) of the network input
    fingerprint: str  # sha256 over the source images and labels
    source: str  # "sklearn:digits" or the folder path
    skipped_files: int = 0


def digit_images(size: int = DIGITS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, size, size) grey images, light ink on
    black, upscaled bilinearly from 8x8; and their labels 0..9. Real data, no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack(
        [
            np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
            for img in small
        ]
    )
    return big, digits.target.astype(np.int32)


def load_digits_data(val_split: float, test_split: float = 0.2) -> ImageData:
    """The bundled digits with a fixed, stratified train / validation / test split."""
    gray, labels = digit_images()
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    fingerprint = hashlib.sha256(gray.tobytes() + labels.tobytes()).hexdigest()
    train, val, test = _split(rgb, labels, val_split, test_split)
    return ImageData(
        train=train,
        val=val,
        test=test,
        class_names=[str(d) for d in range(10)],
        default_input_shape=(DIGITS_SIZE, DIGITS_SIZE, 1),
        fingerprint=fingerprint,
        source="sklearn:digits",
    )


@dataclass(frozen=True)
class FileSplit:
    """Image files (paths under their ``--data`` folder as given, as str) and their labels (N,)
    int32; ``sources`` (N,) is the index into :attr:`FolderData.sources` of each file's folder
    (None: every file is from the one folder)."""

    files: tuple[str, ...]
    labels: np.ndarray
    sources: np.ndarray | None = None

    def source_indices(self) -> np.ndarray:
        """:attr:`sources`, or zeros (the one folder) when there are none."""
        if self.sources is None:
            return np.zeros(len(self.files), dtype=np.int32)
        return self.sources

    def __len__(self) -> int:
        return len(self.files)


class DecodeFailures:
    """Files whose header passed but whose decode failed while streaming; thread-safe.

    Each file is warned about once (an epoch revisits it, the warning does not repeat); the
    count goes into the metadata's ``skipped_files`` with the files refused while listing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, str] = {}

    def record(self, path: str, reason: str) -> None:
        """Note that ``path`` could not be decoded (``reason``); warns the first time only."""
        with self._lock:
            if path in self._files:
                return
            self._files[path] = reason
        logger.warning("skipped unreadable image %s: %s", path, reason)

    @property
    def files(self) -> dict[str, str]:
        """path -> reason, for every file that failed so far."""
        with self._lock:
            return dict(self._files)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)


@dataclass(frozen=True)
class FolderSource:
    """One ``--data`` folder of a :class:`FolderData`, with its own counts.

    Attributes:
        path: The folder as given on the command line.
        files: Image files found in it by name (readable or not).
        skipped_files: Of them, files refused while listing (and, in
            :meth:`FolderData.readable_sources`, those that failed to decode while streaming).
        class_counts: Readable images per class it holds (only its own classes).
    """

    path: str
    files: int
    skipped_files: int
    class_counts: dict[str, int]


@dataclass(frozen=True)
class FolderData:
    """Class sub-folders of one or more folders, listed, checked and split by file; nothing
    decoded yet.

    Attributes:
        train, val, test: The file splits (the test split is fixed for the same folder).
        class_names: Sub-folder names (of every folder: the union), sorted; label i is
            ``class_names[i]``.
        default_input_shape: (height, width, channels) of the network input: ``--input-shape``,
            else chosen from a sample of headers (see ``input_shape_reason``).
        input_shape_reason: One sentence saying how the input shape was chosen.
        fingerprint: sha256 over the sorted relative paths, sizes and contents of every file;
            of several folders, sha256 over their own fingerprints in the order given.
        source: The folder path; several folders joined by ``" + "``.
        class_counts: Readable files per class (all splits, every folder).
        listing_skipped: Files refused while listing (no image, damaged header, unreadable).
        sources: Each folder with its own counts, in the order given.
        failures: Files whose decode failed while streaming (filled in as the data flows).
    """

    train: FileSplit
    val: FileSplit
    test: FileSplit
    class_names: list[str]
    default_input_shape: tuple[int, int, int]
    input_shape_reason: str
    fingerprint: str
    source: str
    class_counts: dict[str, int]
    listing_skipped: int = 0
    sources: tuple[FolderSource, ...] = ()
    failures: DecodeFailures = field(default_factory=DecodeFailures)

    @property
    def skipped_files(self) -> int:
        """Unreadable files skipped so far: at listing plus while streaming."""
        return self.listing_skipped + len(self.failures)

    def readable_class_counts(self) -> dict[str, int]:
        """:attr:`class_counts` less the files that failed to decode while streaming, so that
        every file is counted once: as a class's image or as skipped."""
        counts = dict(self.class_counts)
        for _name, _source, class_name in self.failed_files():
            counts[class_name] -= 1
        return counts

    def readable_sources(self) -> list[FolderSource]:
        """:attr:`sources` with the files that failed to decode while streaming moved from their
        class's count to ``skipped_files`` (as :meth:`readable_class_counts` does)."""
        counts = [dict(source.class_counts) for source in self.sources]
        skipped = [source.skipped_files for source in self.sources]
        for _name, source, class_name in self.failed_files():
            counts[source][class_name] -= 1
            skipped[source] += 1
        return [
            dataclasses.replace(source, skipped_files=skipped[i], class_counts=counts[i])
            for i, source in enumerate(self.sources)
        ]

    def failed_files(self) -> list[tuple[str, int, str]]:
        """(file, index of its folder in :attr:`sources`, class name) of every file that failed
        to decode so far."""
        failed = self.failures.files
        if not failed:
            return []
        found: list[tuple[str, int, str]] = []
        for split in (self.train, self.val, self.test):
            for name, label, source in zip(
                split.files, split.labels, split.source_indices(), strict=True
            ):
                if name in failed:
                    found.append((name, int(source), self.class_names[int(label)]))
        return found


def load_folder_data(
    folders: Path | Sequence[Path],
    *,
    val_split: float,
    test_split: float = 0.15,
    input_shape: tuple[int, int, int] | None = None,
    min_side: int = 1,
    class_weighted: bool = False,
) -> FolderData:
    """List, check, fingerprint and split ``folder/<class>/<image>`` files of any size and mode.

    One pass reads every file in 1 MiB chunks (for the fingerprint) and checks its first bytes
    (:func:`contract.decoding.check_header`: no decode); unreadable files are skipped with one
    warning each. Memory grows with the number of file NAMES only, never with their pixels.

    Several folders are merged by class NAME: the classes are the union of their sub-folder
    names, sorted. Each folder is split on its own (:func:`split_by_class`), so its held-out
    files do not move when another folder is added or grows; one folder alone gives exactly the
    data, fingerprint and splits it always gave. With several, a folder may hold one class only
    or none at all (a warning): the merged data needs two classes.

    Args:
        folders: One folder, or several, each with one sub-folder per class (hidden entries
            ignored; links followed, loops not). They must not overlap.
        val_split, test_split: Fractions of each class held out for validation and for the test.
        input_shape: (height, width, channels), or None to choose it from :data:`SAMPLE_HEADERS`
            headers: the median height and width (scaled down to :data:`MAX_AUTO_SIDE` pixels on
            the longer side, up to ``min_side``), one channel only when every sampled image is grey.
        min_side: Smallest height/width the architecture accepts, in pixels (auto choice only).

    Raises:
        DataError: missing or overlapping folders, no class sub-folders, no readable images,
            fewer than two classes.
    """
    roots = [folders] if isinstance(folders, Path) else list(folders)
    check_data_folders(roots)
    source = " + ".join(str(root) for root in roots)
    listings = [_scan_folder(root, alone=len(roots) == 1) for root in roots]
    files, labels, origins, class_names = _merge_listings(source, listings)
    ok, fingerprint = _check_and_fingerprint_all(roots, files, origins)
    header_sample: list[int] | None = None
    if input_shape is None:
        readable = np.flatnonzero(ok)
        rng = np.random.default_rng(TEST_SPLIT_SEED)
        count = min(len(readable), SAMPLE_HEADERS)
        header_sample = sorted(rng.choice(readable, size=count, replace=False).tolist())
    shape, reason, bad = _choose_input_shape(files, header_sample, input_shape, min_side)
    for index in bad:
        ok[index] = False
    kept = np.flatnonzero(ok)
    if kept.size == 0:
        raise DataError(f"no readable images in {source}")
    kept_files = [str(files[i]) for i in kept]
    kept_labels = np.asarray([labels[i] for i in kept], dtype=np.int32)
    kept_origins = origins[kept]
    present = np.unique(kept_labels)
    if present.size < 2:
        raise DataError(f"{source} has readable images for only one class; need at least two")
    counts = class_counts(kept_labels, class_names)
    for name, count in counts.items():
        if count == 0:
            logger.warning("class %s has no readable images; it is never predicted", name)
    sources = _folder_sources(roots, listings, origins, kept_labels, kept_origins, class_names)
    if len(sources) > 1:
        for item in sources:
            logger.info("folder %s: images per class %s", item.path, item.class_counts)
    _report_imbalance(counts, class_weighted=class_weighted)
    train_idx, val_idx, test_idx = _split_each_folder(
        roots, kept_labels, kept_origins, class_names, val_split=val_split, test_split=test_split
    )

    if val_idx.size == 0 or test_idx.size == 0:
        raise DataError(
            f"{source} has too few images to hold out validation and test images; "
            "give at least one class 3 or more readable images"
        )

    def take(indices: np.ndarray) -> FileSplit:
        return FileSplit(
            tuple(kept_files[i] for i in indices), kept_labels[indices], kept_origins[indices]
        )

    logger.info("input shape %s: %s", "x".join(map(str, shape)), reason)
    return FolderData(
        train=take(train_idx),
        val=take(val_idx),
        test=take(test_idx),
        class_names=class_names,
        default_input_shape=shape,
        input_shape_reason=reason,
        fingerprint=fingerprint,
        source=source,
        class_counts=counts,
        listing_skipped=len(files) - int(kept.size),
        sources=sources,
    )


def check_data_folders(folders: Sequence[Path]) -> None:
    """Each ``--data`` folder exists and is a folder, and none is (inside) another: a file under
    two of them would be listed twice, possibly as two classes and in two splits.

    Raises:
        DataError: the first problem found, in one line.
    """
    for folder in folders:
        if not folder.exists():
            raise DataError(f"data folder {folder} does not exist")
        if not folder.is_dir():
            raise DataError(
                f"{folder} is not a folder; --data expects a folder of class sub-folders"
            )
    resolved = [folder.resolve() for folder in folders]
    for i, first in enumerate(resolved):
        for j in range(i + 1, len(resolved)):
            second = resolved[j]
            if first.is_relative_to(second) or second.is_relative_to(first):
                raise DataError(
                    f"--data {folders[i]} and --data {folders[j]} overlap (the same folder, or "
                    "one inside the other); give each folder once"
                )


def _scan_folder(folder: Path, *, alone: bool = True) -> dict[str, list[Path]]:
    """Class name -> every image file under that class sub-folder, sorted; class names sorted
    (sub-folders without images are left out with a warning).

    Sorting (not the file system's order) fixes the order, so results do not depend on how
    or in which order the files were created. Symbolic links are followed, but a directory is
    visited once: a link loop gets a warning instead of an endless walk. A folder without class
    sub-folders is an error when ``alone``, else (one of several) a warning.
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    class_dirs = [p for p in entries if not p.name.startswith(".") and _is_dir(p)]
    if not class_dirs:
        message = f"{folder} has no class sub-folders (expected {folder}/<class>/<image files>)"
        if alone:
            raise DataError(message)
        logger.warning("%s; it adds no images", message)
    listing: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        images = _walk_images(class_dir)
        if not images:
            logger.warning("class folder %s has no jpg/png/webp/bmp/gif images; ignored", class_dir)
            continue
        listing[class_dir.name] = images
    return listing


def _merge_listings(
    source: str, listings: Sequence[dict[str, list[Path]]]
) -> tuple[list[Path], list[int], np.ndarray, list[str]]:
    """Files of every folder (folder by folder, class by class), their labels in the union of
    the class names (sorted), the index of each file's folder, and the class names."""
    class_names = sorted({name for listing in listings for name in listing})
    label_of = {name: label for label, name in enumerate(class_names)}
    files: list[Path] = []
    labels: list[int] = []
    origins: list[int] = []
    for index, listing in enumerate(listings):
        for name, images in listing.items():
            files.extend(images)
            labels.extend([label_of[name]] * len(images))
            origins.extend([index] * len(images))
    if not files:
        raise DataError(f"no jpg/png/webp/bmp/gif images under {source}")
    if len(class_names) < 2:
        raise DataError(
            f"{source} has image files for only one class ({class_names[0]}); need at least two"
        )
    return files, labels, np.asarray(origins, dtype=np.int32), class_names


def _check_and_fingerprint_all(
    roots: Sequence[Path], files: Sequence[Path], origins: np.ndarray
) -> tuple[np.ndarray, str]:
    """:func:`_check_and_fingerprint` of each folder; one folder keeps its own fingerprint, and
    several get the sha256 of theirs in the order given (so it covers every file of each)."""
    masks: list[np.ndarray] = []
    prints: list[str] = []
    for index, root in enumerate(roots):
        members = np.flatnonzero(origins == index)
        ok, fingerprint = _check_and_fingerprint(root, [files[int(i)] for i in members])
        masks.append(ok)
        prints.append(fingerprint)
    if len(prints) == 1:
        return masks[0], prints[0]
    return np.concatenate(masks), hashlib.sha256("\n".join(prints).encode()).hexdigest()


def _folder_sources(
    roots: Sequence[Path],
    listings: Sequence[dict[str, list[Path]]],
    origins: np.ndarray,
    kept_labels: np.ndarray,
    kept_origins: np.ndarray,
    class_names: list[str],
) -> tuple[FolderSource, ...]:
    """Each folder's files found, files refused while listing, and readable images per class."""
    sources: list[FolderSource] = []
    for index, root in enumerate(roots):
        found = int(np.count_nonzero(origins == index))
        mine = kept_labels[kept_origins == index]
        counts = class_counts(mine, class_names)
        sources.append(
            FolderSource(
                path=str(root),
                files=found,
                skipped_files=found - int(mine.size),
                class_counts={name: counts[name] for name in listings[index]},
            )
        )
    return tuple(sources)


def _split_each_folder(
    roots: Sequence[Path],
    labels: np.ndarray,
    origins: np.ndarray,
    class_names: list[str],
    *,
    val_split: float,
    test_split: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_by_class` of each folder's files on its own, as sorted indices into
    ``labels``: adding a folder never moves another folder's held-out files."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for index, root in enumerate(roots):
        members = np.flatnonzero(origins == index)
        train, val, test = split_by_class(
            labels[members],
            class_names,
            val_split=val_split,
            test_split=test_split,
            where=None if len(roots) == 1 else str(root),
        )
        parts.append((members[train], members[val], members[test]))
    # Folder by folder, each sorted: the concatenation is sorted too.
    train_idx, val_idx, test_idx = (
        np.concatenate([part[k] for part in parts]).astype(np.int64) for k in range(3)
    )
    return train_idx, val_idx, test_idx


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop raises ELOOP on stat in some Pythons
        return False


def _walk_images(class_dir: Path) -> list[Path]:
    """Image files (by suffix) under ``class_dir``, sorted, each real directory walked once."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []

    def onerror(exc: OSError) -> None:
        logger.warning("cannot read %s: %s; skipped", exc.filename, exc.strerror or exc)

    for root, dirs, names in os.walk(class_dir, followlinks=True, onerror=onerror):
        try:
            stat = os.stat(root)
        except OSError as exc:
            logger.warning("cannot read %s: %s; skipped", root, exc.strerror or exc)
            dirs[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            logger.warning(
                "%s leads back to a folder already read (symbolic link loop?); skipped", root
            )
            dirs[:] = []
            continue
        seen.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(root) / name
            try:
                is_file = path.is_file()
            except OSError:
                is_file = False
            if is_file:
                found.append(path)
            else:
                logger.warning(
                    "skipped unreadable image %s: not a regular file (broken link?)", path
                )
    return sorted(found)


def _check_and_fingerprint(folder: Path, files: Sequence[Path]) -> tuple[np.ndarray, str]:
    """Check each file's header and hash every file's relative path, size and content.

    Files are read in :data:`_CHUNK_BYTES` pieces, so memory does not grow with their size.

    Returns:
        A bool mask of the files whose header is a readable supported image, and the sha256 hex.
    """
    digest = hashlib.sha256()
    ok = np.zeros(len(files), dtype=bool)
    for index, path in enumerate(files):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                digest.update(str(size).encode() + b"\0")
                head = handle.read(HEADER_BYTES)
                digest.update(head)
                while chunk := handle.read(_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as exc:
            digest.update(b"unreadable\0")
            logger.warning("skipped unreadable image %s: %s", path, exc.strerror or exc)
            continue
        try:
            check_header(head, max_pixels=MAX_TRAINING_PIXELS)
        except ImageError as exc:
            logger.warning("skipped unreadable image %s: %s", path, exc.detail)
            continue
        ok[index] = True
    return ok, digest.hexdigest()


def _choose_input_shape(
    files: Sequence[Path],
    sample: list[int] | None,
    given: tuple[int, int, int] | None,
    min_side: int,
) -> tuple[tuple[int, int, int], str, list[int]]:
    """The network input (height, width, channels), why, and sampled files found unreadable."""
    if given is not None or sample is None:
        assert given is not None
        return given, GIVEN_SHAPE, []
    sizes: list[tuple[int, int]] = []
    gray: list[bool] = []
    bad: list[int] = []
    for index in sample:
        try:
            header = read_header(files[index], max_pixels=MAX_TRAINING_PIXELS)
        except (ImageError, OSError) as exc:
            detail = exc.detail if isinstance(exc, ImageError) else (exc.strerror or str(exc))
            logger.warning("skipped unreadable image %s: %s", files[index], detail)
            bad.append(index)
            continue
        sizes.append(header.size)
        gray.append(header.grayscale)
    if not sizes:
        return (1, 1, 3), "no readable header", bad  # the caller refuses: no readable images
    median_w = float(np.median([w for w, _ in sizes]))
    median_h = float(np.median([h for _, h in sizes]))
    height, width = max(1, round(median_h)), max(1, round(median_w))
    channels = 1 if all(gray) else 3
    what = (
        f"the median of {len(sizes)} sampled header(s) of {len(files)} file(s) is "
        f"{height}x{width}, {'all grey' if channels == 1 else 'some in colour'}"
    )
    notes: list[str] = []
    if max(height, width) > MAX_AUTO_SIDE:
        scale = MAX_AUTO_SIDE / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        notes.append(f"scaled down to {MAX_AUTO_SIDE} pixels on the longer side")
    (height, width), note = _scaled_up((height, width), min_side)
    notes += [note] if note else []
    reason = (
        what + ("; " + ", ".join(notes) if notes else "") + "; pass --input-shape H,W,C to choose"
    )
    return (height, width, channels), reason, bad


def _scaled_up(size: tuple[int, int], min_side: int) -> tuple[tuple[int, int], str]:
    """``size`` (height, width) scaled up, aspect kept, until both sides reach ``min_side``."""
    height, width = size
    if min(height, width) >= min_side:
        return size, ""
    scale = min_side / min(height, width)
    scaled = (max(min_side, round(height * scale)), max(min_side, round(width * scale)))
    return scaled, f"scaled up to the architecture's minimum of {min_side} pixels"


def with_min_side(data: FolderData, min_side: int) -> FolderData:
    """``data`` with a data-chosen input shape scaled up to ``min_side`` pixels if smaller (a
    shape from ``--input-shape`` is left alone: the architecture then refuses it, saying why)."""
    if data.input_shape_reason == GIVEN_SHAPE:
        return data
    size, note = _scaled_up(data.default_input_shape[:2], min_side)
    if not note:
        return data
    shape = (*size, data.default_input_shape[2])
    reason = data.input_shape_reason.replace(
        "; pass --input-shape", f"; {note}; pass --input-shape"
    )
    logger.info("input shape %s: %s", "x".join(map(str, shape)), reason)
    return dataclasses.replace(data, default_input_shape=shape, input_shape_reason=reason)


def _report_imbalance(counts: dict[str, int], *, class_weighted: bool = False) -> None:
    """Log images per class; warn for every class under 10% of the largest (suggesting
    ``--class-weight balanced`` only when the run does not use it already)."""
    logger.info("images per class: %s", counts)
    largest = max(counts.values())
    advice = (
        "--class-weight balanced weighs it up; more data would help"
        if class_weighted
        else "consider --class-weight balanced or more data"
    )
    for name, count in counts.items():
        if 0 < count < IMBALANCE_WARN_RATIO * largest:
            logger.warning(
                "class %s has %d image(s), under %d%% of the largest class (%d); %s",
                name,
                count,
                round(IMBALANCE_WARN_RATIO * 100),
                largest,
                advice,
            )


def split_by_class(
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    val_split: float,
    test_split: float,
    where: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train / validation / test indices into ``labels``, fixed for the same files.

    Within each class (files in sorted order) a permutation seeded by :data:`TEST_SPLIT_SEED`
    and the class NAME (not its index: adding a class leaves the others' splits alone) takes
    ``round(n * test_split)`` files for the test and ``round(n * val_split)`` for validation,
    at least one each for classes of three or more images; a class of one or two images stays
    in training (with a warning, naming the folder ``where`` the files are when given).

    Returns:
        Sorted index arrays (train, val, test).
    """
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        n = members.size
        if n == 0:
            continue
        seed = [TEST_SPLIT_SEED, zlib.crc32(name.encode("utf-8", "surrogateescape"))]
        order = members[np.random.default_rng(seed).permutation(n)]
        if n < 3:
            logger.warning(
                "class %s%s has only %d image(s): all used for training, none for validation or "
                "test",
                name,
                f" in {where}" if where else "",
                n,
            )
            train.append(order)
            continue
        n_test = max(1, round(n * test_split))
        n_val = max(1, round(n * val_split))
        if n - n_test - n_val < 1:
            n_test, n_val = 1, 1
        test.append(order[:n_test])
        val.append(order[n_test : n_test + n_val])
        train.append(order[n_test + n_val :])

    def merged(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    return merged(train), merged(val), merged(test)


def make_file_dataset(
    split: FileSplit,
    *,
    image_size: tuple[int, int],
    batch_size: int,
    shuffle: bool,
    seed: int,
    failures: DecodeFailures,
    cache_file: Path | None = None,
    max_pixels: int = MAX_TRAINING_PIXELS,
) -> Any:
    """A tf.data pipeline streaming one split from disk: ``(images, labels)`` batches.

    paths -> [shuffle paths] -> read + :func:`contract.decoding.decode_image` (the service's
    decoder, through ``tf.numpy_function``, ``num_parallel_calls=AUTOTUNE``: Pillow releases the
    GIL while it decodes and resizes) -> drop files that fail (one warning each, counted in
    ``failures``) -> [cache to ``cache_file`` -> shuffle a bounded buffer] -> batch -> prefetch.

    Args:
        split: Files and labels; their order is kept when ``shuffle`` is False.
        image_size: (height, width) of the decoded images, in pixels.
        batch_size: Images per batch (the last one may be smaller).
        shuffle: Reshuffle every epoch (seeded by ``seed``).
        seed: Seed of the file order and the shuffle.
        failures: Where files that fail to decode are recorded.
        cache_file: Cache the decoded split in this file (prefix), or None to decode every epoch.
        max_pixels: Largest accepted ``width * height`` of a file, in pixels.

    Returns:
        A ``tf.data.Dataset`` of (float32 ``(N, height, width, 3)`` RGB 0..255, int32 ``(N,)``):
        exactly the pixels ``service.images.decode_image`` gives the service for the same files.
    """
    import tensorflow as tf

    height, width = image_size
    files = list(split.files)
    labels = np.asarray(split.labels, dtype=np.int32)
    if shuffle and files:
        # A fixed first permutation, so that even a bounded buffer mixes the class-sorted list.
        order = np.random.default_rng(seed).permutation(len(files))
        files = [files[i] for i in order]
        labels = labels[order]

    def decode(path: bytes) -> tuple[np.ndarray, np.bool_]:
        name = os.fsdecode(path)
        try:
            with open(name, "rb") as handle:
                data = handle.read()
            pixels = decode_image(data, target_size=(height, width), max_pixels=max_pixels).array
        except ImageError as exc:
            failures.record(name, exc.detail)
        except OSError as exc:
            failures.record(name, exc.strerror or str(exc))
        else:
            return pixels, np.True_
        return np.zeros((height, width, 3), dtype=np.float32), np.False_

    def load(path: Any, label: Any) -> tuple[Any, Any, Any]:
        pixels, ok = tf.numpy_function(decode, [path], [tf.float32, tf.bool], stateful=False)
        pixels.set_shape((height, width, 3))
        ok.set_shape(())
        return pixels, label, ok

    paths = tf.constant(files, dtype=tf.string) if files else tf.zeros((0,), dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle and cache_file is None:
        buffer = max(1, min(len(files), MAX_PATH_SHUFFLE_BUFFER))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(_is_decoded).map(_drop_flag)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(cache_file))
        if shuffle:
            per_image = height * width * 3 * 4
            buffer = max(batch_size, min(len(files), SHUFFLE_BUFFER_BYTES // per_image))
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _is_decoded(pixels: Any, label: Any, ok: Any) -> Any:
    return ok


def _drop_flag(pixels: Any, label: Any, ok: Any) -> tuple[Any, Any]:
    return pixels, label


# ---------------------------------------------------------------------------------------
# The run's tf.data pipelines (every one in this module; augmenters from training.augment)
# ---------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def _augmented(ds: Any, seed: int) -> Any:
    """``--augment``: :func:`training.augment.geometric` on every ``(images, labels)`` batch."""
    import tensorflow as tf

    from training.augment import geometric

    augmenter = geometric(seed)
    return ds.map(
        lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
    )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
    handwriting: bool = False,
) -> Any:
    """tf.data pipeline of in-memory arrays: cache the uint8 arrays, shuffle, batch, float32,
    augment, prefetch. Yields float32 ``(N, H, W, C)`` 0..255 and the labels as given.

    ``handwriting``: :func:`training.augment.handwriting` variants (new ones every epoch);
    ``augment``: :func:`training.augment.geometric`, after them."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if handwriting:
        from training.augment import handwriting as handwriting_variants

        # One stateless seed per batch, different every epoch, reproducible from --seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (handwriting_variants(batch[0], s), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if augment:
        ds = _augmented(ds, seed)
    return ds.prefetch(tf.data.AUTOTUNE)


def _checked_cache_dir(cache_dir: Path) -> Path:
    """Create ``--cache DIR`` if needed; a folder that cannot be written is a user mistake."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--cache {cache_dir}: {exc.strerror or exc}") from exc
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise UserError(f"--cache {cache_dir}: the folder is not writable")
    return cache_dir


def _folder_datasets(
    data: FolderData,
    *,
    batch_size: int,
    image_size: tuple[int, int],
    seed: int,
    augment: bool,
    cache_dir: Path | None,
) -> tuple[Any, Any, Any]:
    """Streamed (train, val, test) pipelines of a folder, see :func:`make_file_dataset`.
    ``cache_dir`` caches each split's decoded images in a file named after the data
    fingerprint and the image size (so changed data or another input size never reads a
    stale cache)."""
    # Files that fail to decode are dropped while streaming, so a split's length is unknown
    # until it has been read once; Keras warns at the end of every such pass as if the data
    # had run out early. It has not: every readable file was used.
    warnings.filterwarnings(
        "ignore", message="Your input ran out of data", category=UserWarning, module="keras"
    )
    if cache_dir is not None:
        cache_dir = _checked_cache_dir(cache_dir)
        _recall_decode_failures(data, decode_failures_file(data, cache_dir, image_size))
    height, width = image_size

    def cache_file(split: str) -> Path | None:
        if cache_dir is None:
            return None
        return cache_dir / f"{split}-{data.fingerprint[:16]}-{height}x{width}"

    train_ds, val_ds, test_ds = (
        make_file_dataset(
            getattr(data, split),
            image_size=image_size,
            batch_size=batch_size,
            shuffle=split == "train",
            seed=seed,
            failures=data.failures,
            cache_file=cache_file(split),
        )
        for split in SPLITS
    )
    if augment:
        train_ds = _augmented(train_ds, seed)
    return train_ds, val_ds, test_ds


def decode_failures_file(data: FolderData, cache_dir: Path, image_size: tuple[int, int]) -> Path:
    """Where a ``--cache`` keeps the files that failed to decode beside the decoded images: a
    reused cache never decodes them again, yet the run must count them the same."""
    height, width = image_size
    return cache_dir / f"failures-{data.fingerprint[:16]}-{height}x{width}.json"


def remember_decode_failures(
    data: FolderData, cache_dir: Path, image_size: tuple[int, int]
) -> None:
    """Write the decode failures seen so far (every split read once) beside the cache, each
    under its path relative to its folder (``<i>/<path>`` for the i-th of several folders: the
    same relative path may fail in two), so a moved folder still finds them."""
    several = len(data.sources) > 1
    failures: dict[str, str] = {}
    reasons = data.failures.files
    for name, index, _class_name in data.failed_files():
        relative = os.path.relpath(name, data.sources[index].path)
        failures[f"{index}/{relative}" if several else relative] = reasons[name]
    path = decode_failures_file(data, cache_dir, image_size)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(failures, indent=1, sort_keys=True))
    os.replace(partial, path)


def _recall_decode_failures(data: FolderData, path: Path) -> None:
    """Record the failures an earlier run with the same cache saw (each warned about again)."""
    try:
        failures = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s (%s); decode failures are counted afresh", path, exc)
        return
    # The file's name holds the data fingerprint, which covers the folders' order: index i
    # names the same folder it named when the file was written.
    roots = [Path(source.path) for source in data.sources]
    for key, reason in sorted(failures.items()):
        index, _, relative = key.partition("/") if len(roots) > 1 else ("0", "/", key)
        if not (index.isdigit() and int(index) < len(roots) and relative):
            logger.warning("%s names no folder of this run (%s); ignored", path, key)
            continue
        data.failures.record(str(roots[int(index)] / relative), str(reason))


def make_datasets(
    data: ImageData | FolderData,
    *,
    batch_size: int,
    image_size: tuple[int, int],
    seed: int,
    augment: bool,
    handwriting: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Any, Any, Any]:
    """The (train, val, test) tf.data pipelines of a run; only train is shuffled and augmented.

    Args:
        data: The bundled digits (:func:`make_dataset`, in memory) or a folder
            (:func:`make_file_dataset`, streamed).
        batch_size: Images per batch: the GLOBAL batch (per replica times replicas).
        image_size: (height, width) a folder's images are decoded to, in pixels (the digits
            keep their own size: the model resizes).
        seed: Seed of the shuffles and the augmentation.
        augment: ``--augment``: :func:`training.augment.geometric` on the training split.
        handwriting: ``--handwriting-augment``: :func:`training.augment.handwriting` on the
            training split (the digits only).
        cache_dir: ``--cache DIR`` for a folder's decoded images (the digits stay in memory).

    Raises:
        UserError: ``cache_dir`` cannot be created or written.
    """
    if isinstance(data, FolderData):
        return _folder_datasets(
            data,
            batch_size=batch_size,
            image_size=image_size,
            seed=seed,
            augment=augment,
            cache_dir=cache_dir,
        )
    train_ds, val_ds, test_ds = (
        make_dataset(
            getattr(data, split).images,
            getattr(data, split).labels,
            batch_size=batch_size,
            shuffle=split == "train",
            augment=augment and split == "train",
            seed=seed,
            handwriting=handwriting and split == "train",
        )
        for split in SPLITS
    )
    return train_ds, val_ds, test_ds


def with_class_weights(dataset: Any, weights: dict[int, float]) -> Any:
    """``(x, y)`` batches -> ``(x, y, sample_weight)`` with each label's class weight: works
    under every distribution strategy, unlike ``fit(class_weight=...)``."""
    import tensorflow as tf

    table = tf.constant([weights[c] for c in range(len(weights))], dtype=tf.float32)
    return dataset.map(lambda x, y: (x, y, tf.gather(table, y)))


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``--class-weight balanced``: ``n / (num_classes * n_c)`` per class (scikit-learn's rule);
    classes absent from ``labels`` get 0 (they contribute no loss anyway)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = int(np.count_nonzero(counts))
    total = float(counts.sum())
    return {
        c: (total / (present * float(counts[c])) if counts[c] else 0.0) for c in range(num_classes)
    }


def _split(
    images: np.ndarray, labels: np.ndarray, val_split: float, test_split: float
) -> tuple[Split, Split, Split]:
    """Stratified train / validation / test split (stratification dropped for tiny classes)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    stratify_ok = counts[counts > 0].min() >= 3
    if not stratify_ok:
        logger.warning("some class has fewer than 3 images; splitting without stratification")
    indices = np.arange(len(labels))
    rest, test_idx = train_test_split(
        indices,
        test_size=test_split,
        random_state=TEST_SPLIT_SEED,
        stratify=labels if stratify_ok else None,
    )
    val_fraction = val_split / (1.0 - test_split)
    train_idx, val_idx = train_test_split(
        rest,
        test_size=val_fraction,
        random_state=TEST_SPLIT_SEED + 1,
        stratify=labels[rest] if stratify_ok else None,
    )
    return tuple(Split(images[idx], labels[idx]) for idx in (train_idx, val_idx, test_idx))  # type: ignore[return-value]


def class_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Images per class name, for logs and metadata."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}
