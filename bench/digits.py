"""The digits workload: one real handwritten digit, a 540-byte 28x28 PNG, and its wrk scripts.

Shared by ``python -m bench`` and ``python -m bench.budget`` (which loads the service with the
same PNG).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import loadgen

if TYPE_CHECKING:
    import numpy as np


def digit_png() -> bytes:
    """One real 28x28 handwritten digit (a 7 from scikit-learn's set) as PNG bytes."""
    from PIL import Image

    from training.data import digit_images

    images, labels = digit_images()
    buffer = io.BytesIO()
    Image.fromarray(images[labels == 7][0]).save(buffer, format="PNG")
    return buffer.getvalue()


def digit_tensor() -> np.ndarray:
    """The same digit as a V2 ``images`` tensor: UINT8 [1, 28, 28, 3] (grey repeated into RGB,
    as a client of the Open Inference Protocol sends an image)."""
    import numpy as np

    from training.data import digit_images

    images, labels = digit_images()
    grey = images[labels == 7][0]
    return np.repeat(grey[None, :, :, None], 3, axis=-1).astype(np.uint8)


def write_scripts(folder: Path, png: bytes, counts: Iterable[int]) -> dict[int, Path]:
    """A wrk script per count: a request of that many copies of ``png``; count -> script."""
    return {
        n: loadgen.write_script(folder, [(f"digit-{i}.png", png) for i in range(n)], f"x{n}")
        for n in counts
    }
