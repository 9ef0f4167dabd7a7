"""Tests for service.serving.explain without a model: the drawing helpers (the explanation
thread's admission is :mod:`service.serving.bounded`'s, tested in ``test_bounded.py``)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from service.serving.explain import (
    MAX_TILE_PX,
    MAX_TILES_PER_LAYER,
    colorize,
    feature_map_tiles,
    overlay,
)


def test_colorize_maps_cold_to_dark_and_hot_to_light() -> None:
    rgb = colorize(np.array([[0.0, 0.5, 1.0, 7.0, -1.0]]))
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    luminance = rgb[0].astype(int).sum(axis=1)
    assert luminance[0] < luminance[1] < luminance[2]
    assert (rgb[0, 3] == rgb[0, 2]).all() and (rgb[0, 4] == rgb[0, 0]).all()  # clipped


def test_overlay_scales_small_inputs_up_and_puts_the_heat_where_the_map_is_hot() -> None:
    image = np.zeros((28, 28, 3), np.float32)
    heat = np.zeros((14, 14), np.float32)
    heat[:3, :3] = 1.0  # hot top-left corner
    drawn = np.asarray(overlay(image, heat), dtype=int)
    assert drawn.shape == (224, 224, 3)
    assert drawn[:20, :20].sum() > 10 * drawn[-40:, -40:].sum()
    assert overlay(np.zeros((200, 300, 3), np.float32), heat).size == (300, 200)


def test_feature_map_tiles_keep_the_most_active_channels_in_order() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((100, 100, 40)).astype(np.float32)
    maps[..., 5] = 0.0  # a dead channel: low mean, dropped
    maps[..., 39] += 5.0  # the most active: kept
    layer = feature_map_tiles("conv1", maps)
    channels = [tile["channel"] for tile in layer["tiles"]]
    assert len(channels) == MAX_TILES_PER_LAYER and channels == sorted(channels)
    assert 39 in channels and 5 not in channels
    assert (layer["height"], layer["width"], layer["channels"]) == (100, 100, 40)
    tile = Image.open(io.BytesIO(base64.b64decode(layer["tiles"][0]["png"])))
    assert tile.mode == "L" and max(tile.size) == MAX_TILE_PX

    flat = feature_map_tiles("conv2", np.zeros((7, 7, 2), np.float32))
    black = Image.open(io.BytesIO(base64.b64decode(flat["tiles"][0]["png"])))
    assert np.asarray(black).max() == 0 and flat["tiles"][0]["max"] == 0.0
