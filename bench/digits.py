"""The digits workload: one real handwritten digit, a 540-byte 28x28 PNG, and its wrk scripts.

Shared by ``python -m bench`` and ``python -m bench.budget`` (which loads the service with the
same PNG).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from bench import loadgen


def digit_png() -> bytes:
    """One real 28x28 handwritten digit (a 7 from scikit-learn's set) as PNG bytes."""
    from PIL import Image

    from training.data import digit_images

    images, labels = digit_images()
    buffer = io.BytesIO()
    Image.fromarray(images[labels == 7][0]).save(buffer, format="PNG")
    return buffer.getvalue()


def write_scripts(folder: Path, png: bytes, counts: Iterable[int]) -> dict[int, Path]:
    """A wrk script per count: a request of that many copies of ``png``; count -> script."""
    return {
        n: loadgen.write_script(folder, [(f"digit-{i}.png", png) for i in range(n)], f"x{n}")
        for n in counts
    }
