"""The training report published beside each version, in ``<version>/report/``.

- ``curves.png``: loss and accuracy per epoch, training vs validation;
- ``confusion_matrix.png`` and ``confusion_matrix.json``: counts on the held-out test split;
- ``per_class.json``: precision, recall, F1 and support per class;
- ``filters.png``: the first convolution layer's kernels (what the network learned to look for).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import (
    CONFUSION_MATRIX_FILE,
    CONFUSION_MATRIX_JSON,
    CURVES_FILE,
    FILTERS_FILE,
    PER_CLASS_FILE,
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or CI
    import matplotlib.pyplot as plt

    return plt


def write_report(
    report_dir: Path,
    *,
    history: dict[str, list[float]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    first_conv_kernels: np.ndarray | None,
) -> list[Path]:
    """Write every report file; returns their paths. ``first_conv_kernels`` is (f, f, c, n_f)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_curves(history, report_dir / CURVES_FILE),
        *confusion(y_true, y_pred, class_names, report_dir),
        per_class_metrics(y_true, y_pred, class_names, report_dir / PER_CLASS_FILE),
    ]
    if first_conv_kernels is not None:
        written.append(plot_filters(first_conv_kernels, report_dir / FILTERS_FILE))
    return written


def plot_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch for the training and validation splits."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def confusion(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], report_dir: Path
) -> list[Path]:
    """Confusion matrix (rows: true class, columns: predicted) as PNG and JSON."""
    from sklearn.metrics import confusion_matrix

    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    json_path = report_dir / CONFUSION_MATRIX_JSON
    json_path.write_text(json.dumps({"class_names": list(class_names), "matrix": matrix.tolist()}))

    plt = _pyplot()
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(labels, class_names, rotation=90 if len(class_names) > 10 else 0)
    ax.set_yticks(labels, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > threshold else "black",
            )
    ax.set_title("test split")
    fig.tight_layout()
    png_path = report_dir / CONFUSION_MATRIX_FILE
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return [png_path, json_path]


def per_class_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    """Precision, recall, F1 and support per class, plus macro and weighted averages."""
    from sklearn.metrics import classification_report

    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    path.write_text(json.dumps(report, indent=2))
    return path


def plot_filters(kernels: np.ndarray, path: Path, max_filters: int = 64) -> Path:
    """Tile the first conv layer's kernels, each min-max scaled; RGB when it sees 3 channels."""
    plt = _pyplot()
    f_h, f_w, channels, count = kernels.shape
    count = min(count, max_filters)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        kernel = kernels[..., index].astype(np.float64)
        span = kernel.max() - kernel.min()
        kernel = (kernel - kernel.min()) / span if span > 0 else np.zeros_like(kernel)
        if channels == 3:
            ax.imshow(kernel, interpolation="nearest")
        else:
            ax.imshow(kernel.mean(axis=-1), cmap="gray", interpolation="nearest")
    fig.suptitle(
        f"first-layer filters ({f_h}x{f_w}x{channels}, {kernels.shape[-1]} filters)", fontsize=8
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
