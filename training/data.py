"""Training data: scikit-learn's bundled digits, or a folder of class sub-folders.

Both sources end up as the same thing, :class:`ImageData`: uint8 RGB images of one size
(raw pixels, exactly what the exported model's ``serve`` endpoint takes) with integer labels,
split into train / validation / test. The test split is fixed (its own seed) so that every
run of the same data is scored on the same held-out images.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
#: Pillow decoders allowed for training data (same list as the service's).
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DIGITS_SIZE = 28  # pixels; the 8x8 scikit-learn digits are upscaled to an MNIST-like 28x28
TEST_SPLIT_SEED = 1234  # fixed: the held-out set never depends on --seed
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


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


def load_folder_data(
    folder: Path,
    *,
    val_split: float,
    test_split: float = 0.15,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageData:
    """Read ``folder/<class>/<image>`` files of any size and mode.

    Unreadable files are skipped with one warning each. ``image_size`` (height, width) and
    ``channels`` default to what the data suggests: the median size clamped to 32..128 pixels,
    and grayscale only when every image is grayscale.
    """
    files, labels, class_names = _scan_folder(folder)
    with ThreadPoolExecutor(max_workers=4) as pool:
        probes = list(pool.map(_probe_image, files))
    readable = [i for i, probe in enumerate(probes) if probe is not None]
    if not readable:
        raise DataError(f"no readable images in {folder}")
    if image_size is None:
        heights = np.median([probes[i][1] for i in readable])  # type: ignore[index]
        widths = np.median([probes[i][0] for i in readable])  # type: ignore[index]
        image_size = (int(np.clip(heights, 32, 128)), int(np.clip(widths, 32, 128)))
    if channels is None:
        channels = 1 if all(probes[i][2] for i in readable) else 3  # type: ignore[index]
    height, width = image_size
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(lambda path: _load_image(path, (width, height)), files))
    kept = [i for i, array in enumerate(arrays) if array is not None]
    for i, array in enumerate(arrays):
        if array is None:
            logger.warning("skipped unreadable image %s", files[i])
    skipped = len(files) - len(kept)
    if not kept:
        raise DataError(f"no readable images in {folder}")
    kept_labels = np.array([labels[i] for i in kept], dtype=np.int32)
    if np.unique(kept_labels).size < 2:
        raise DataError(f"{folder} has readable images for only one class; need at least two")
    images = np.stack([arrays[i] for i in kept])  # type: ignore[misc]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    train, val, test = _split(images, kept_labels, val_split, test_split)
    return ImageData(
        train=train,
        val=val,
        test=test,
        class_names=class_names,
        default_input_shape=(height, width, channels),
        fingerprint=digest.hexdigest(),
        source=str(folder),
        skipped_files=skipped,
    )


def _scan_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; --data expects a folder of class sub-folders")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{folder} has no class sub-folders (expected {folder}/<class>/<image files>)"
        )
    files: list[Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    for class_dir in class_dirs:
        images = sorted(
            p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            logger.warning("class folder %s has no jpg/png/webp/bmp/gif images; ignored", class_dir)
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        files.extend(images)
        labels.extend([label] * len(images))
    if not files:
        raise DataError(f"no jpg/png/webp/bmp/gif images under {folder}")
    if len(class_names) < 2:
        raise DataError(
            f"{folder} has images for only one class ({class_names[0]}); need at least two"
        )
    return files, labels, class_names


def _probe_image(path: Path) -> tuple[int, int, bool] | None:
    """(width, height, is_grayscale) from the file's header, or None if it is not an image."""
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            gray = img.mode in GRAY_MODES or (img.mode == "P" and _palette_is_gray(img))
            return img.width, img.height, gray
    except Exception:
        return None


def _load_image(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """Decode one file to uint8 RGB of ``size`` (width, height): first frame, EXIF orientation
    applied, alpha composited over black. None when the file cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as opened:
                opened.seek(0)
                opened.load()
                upright = ImageOps.exif_transpose(opened) or opened
                rgb = _to_rgb(upright).resize(size, Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except Exception:
        return None


def _palette_is_gray(img: Image.Image) -> bool:
    palette = img.getpalette() or []
    triples = np.array(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(np.all(triples[:, 0] == triples[:, 1]) and np.all(triples[:, 1] == triples[:, 2]))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


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
