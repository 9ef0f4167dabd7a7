"""Explanations of one image: the model's own ``gradcam`` and ``feature_maps`` endpoints, drawn.

The numbers come from the SavedModel (training/explain.py publishes the endpoints); this module
only calls them and turns their arrays into PNGs and a small JSON grid. Explanations never go
through the batcher: a :class:`~service.serving.bounded.BoundedRunner` runs them on ONE
dedicated thread, one at a time, with a short bounded wait list, so a burst of explanations
cannot take the model from /predict.
"""

from __future__ import annotations

import base64
import io
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from contract.names import FEATURE_MAPS_ENDPOINT, GRADCAM_ENDPOINT
from service.serving.inference import top_k
from service.serving.model_store import LoadedModel

__all__ = [
    "colorize",
    "explain_image",
    "network_input_image",
    "png_base64",
]

#: Overlays are scaled up by an integer factor to about this many pixels on the longer side.
OVERLAY_TARGET_PX = 224
#: Feature-map tiles per layer; beyond it the most active channels are kept.
MAX_TILES_PER_LAYER = 32
#: Tiles larger than this (pixels, longer side) are scaled down to keep the JSON small.
MAX_TILE_PX = 64
GRID_DECIMALS = 3

T = TypeVar("T")
_CROP_OUTLINE = (0, 200, 255)  # cyan: not on the inferno map, visible on black and white

# Anchor colours of matplotlib's "inferno" map at 0, 1/4, 1/2, 3/4, 1 (dark = cold, light = hot).
_INFERNO = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


# --------------------------------------------------------------------------------- rendering


def png_base64(image: Image.Image) -> str:
    """PNG bytes of ``image``, base64 (ASCII) for JSON."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def colorize(values: np.ndarray) -> np.ndarray:
    """Values 0..1 of any shape -> uint8 RGB (shape + (3,)) on the inferno colour map."""
    scaled = np.clip(values, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.minimum(np.floor(scaled).astype(np.int64), len(_INFERNO) - 2)
    frac = (scaled - low)[..., None]
    rgb = _INFERNO[low] * (1.0 - frac) + _INFERNO[low + 1] * frac
    return np.asarray(np.round(rgb), dtype=np.uint8)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, crop: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """The heatmap (h, w, values 0..1) over ``image`` (H, W, 3, 0..255), scaled up for display.

    The input is scaled with nearest-neighbour (its pixels are what the model received), the
    heatmap bilinearly; hot regions are opaque, cold ones let the image through. ``crop``
    (top, left, bottom, right as fractions of the image) outlines the part the network saw
    after digit normalisation, in a thin cyan line (left out when it is the whole image).
    """
    height, width = image.shape[:2]
    factor = max(1, round(OVERLAY_TARGET_PX / max(height, width)))
    size = (width * factor, height * factor)
    base = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").resize(
        size, Image.Resampling.NEAREST
    )
    heat = Image.fromarray(heatmap.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    heat_values = np.clip(np.asarray(heat), 0.0, 1.0)
    alpha = (0.15 + 0.6 * heat_values)[..., None]
    blended = np.asarray(base, dtype=np.float32) * (1.0 - alpha) + colorize(heat_values) * alpha
    result = Image.fromarray(np.round(blended).astype(np.uint8), "RGB")
    if crop is not None and crop != (0.0, 0.0, 1.0, 1.0):
        top, left, bottom, right = crop
        box = (
            round(left * size[0]),
            round(top * size[1]),
            round(right * size[0]) - 1,
            round(bottom * size[1]) - 1,
        )
        ImageDraw.Draw(result).rectangle(box, outline=_CROP_OUTLINE, width=1)
    return result


def network_input_image(pixels: np.ndarray) -> Image.Image:
    """The picture the network's first layer saw, (h, w, 1 or 3) 0..255, as an image."""
    clipped = np.round(np.clip(pixels, 0.0, 255.0)).astype(np.uint8)
    if clipped.shape[-1] == 1:
        return Image.fromarray(clipped[..., 0], "L")
    return Image.fromarray(clipped, "RGB")


def _tile(values: np.ndarray) -> Image.Image:
    """One feature map (h, w) -> grayscale image, min-max scaled (a flat map is black)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high - low > 1e-12 else np.zeros_like(values)
    tile = Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L")
    longer = max(tile.size)
    if longer > MAX_TILE_PX:
        tile = tile.resize(
            (
                max(1, tile.width * MAX_TILE_PX // longer),
                max(1, tile.height * MAX_TILE_PX // longer),
            ),
            Image.Resampling.BOX,
        )
    return tile


def feature_map_tiles(name: str, maps: np.ndarray) -> dict[str, Any]:
    """One layer's activations (h, w, channels) -> {"layer", sizes, "tiles": [...]}."""
    height, width, channels = maps.shape
    means = maps.reshape(-1, channels).mean(axis=0)
    keep = np.arange(channels)
    if channels > MAX_TILES_PER_LAYER:  # the most active channels, shown in channel order
        keep = np.sort(np.argsort(-means, kind="stable")[:MAX_TILES_PER_LAYER])
    return {
        "layer": name,
        "height": int(height),
        "width": int(width),
        "channels": int(channels),
        "tiles": [
            {
                "channel": int(c),
                "mean": round(float(means[c]), 4),
                "max": round(float(maps[..., c].max()), 4),
                "png": png_base64(_tile(maps[..., c])),
            }
            for c in keep
        ],
    }


# ------------------------------------------------------------------------------ the model call


def explain_image(
    model: LoadedModel, image: np.ndarray, class_index: int, k: int
) -> dict[str, Any]:
    """Explain one image (H, W, 3, float32 0..255) with the model's own endpoints.

    ``class_index`` -1 explains the most probable class. Blocking and CPU-bound: run it on the
    explanation thread (:class:`~service.serving.bounded.BoundedRunner`). Returns the /explain
    JSON body except "model" and "filename".
    """
    import tensorflow as tf

    batch = tf.convert_to_tensor(image[None], dtype=tf.float32)
    out = model.endpoint(GRADCAM_ENDPOINT)(batch, tf.constant([class_index], dtype=tf.int32))
    heatmap = np.asarray(out["heatmap"], dtype=np.float32)[0]
    probabilities = np.asarray(out["probabilities"], dtype=np.float32)[0]
    explained = int(np.asarray(out["class_index"])[0])
    class_names = model.metadata.class_names
    # Versions published since digit normalisation also say what the network saw and which
    # part of the image that was (older versions' endpoints lack these outputs).
    crop: tuple[float, float, float, float] | None = None
    if "crop_box" in out:
        # The network's view of a small, centred digit reaches past the image (the margin
        # around the scaled digit): the part OF THE IMAGE it saw is that box clipped to it.
        top, left, bottom, right = (
            min(1.0, max(0.0, float(v))) for v in np.asarray(out["crop_box"])[0]
        )
        crop = (top, left, bottom, right)
    gradcam: dict[str, Any] = {
        "height": int(heatmap.shape[0]),
        "width": int(heatmap.shape[1]),
        "values": np.round(heatmap.astype(np.float64), GRID_DECIMALS).tolist(),
        "overlay_png": png_base64(overlay(image, heatmap, crop)),
    }
    if crop is not None:
        gradcam["crop"] = dict(
            zip(("top", "left", "bottom", "right"), (round(v, 4) for v in crop), strict=True)
        )
    if "network_input" in out:
        gradcam["network_input_png"] = png_base64(
            network_input_image(np.asarray(out["network_input"], dtype=np.float32)[0])
        )

    layers: list[dict[str, Any]] = []
    if model.has_endpoint(FEATURE_MAPS_ENDPOINT):
        maps = model.endpoint(FEATURE_MAPS_ENDPOINT)(batch)
        # Layer names sort in network order (conv1, conv2 / conv1_1, conv1_2).
        layers = [feature_map_tiles(name, np.asarray(maps[name])[0]) for name in sorted(maps)]

    return {
        "predictions": top_k(probabilities, class_names, k),
        "explained": {
            "label": class_names[explained],
            "index": explained,
            "score": round(float(probabilities[explained]), 6),
        },
        "gradcam": gradcam,
        "feature_maps": layers,
    }
