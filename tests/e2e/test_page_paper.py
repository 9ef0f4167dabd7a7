"""The page's paper mode in a real headless Chromium: dark ink on a white canvas is read like
light ink on black, and the explanation shows what the network saw.

Same browser set-up as tests/e2e/conftest.py (Debian's Chromium, no request leaves
127.0.0.1); skipped without Playwright or Chromium, FAILED when ``CI=true``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.helpers.browser import RequestLog, wait_for_cards
from tests.helpers.servers import Server

pytestmark = pytest.mark.e2e

SEVEN = [(60, 50), (220, 50), (200, 90), (170, 150), (140, 210), (120, 250)]  # canvas pixels


def draw(tab: Any, points: list[tuple[int, int]], offset: tuple[int, int] = (0, 0)) -> None:
    """One mouse stroke through ``points`` (canvas pixels, 280x280 canvas shown at 280x280)."""
    box = tab.locator("#canvas").bounding_box()
    x0, y0 = box["x"] + offset[0], box["y"] + offset[1]
    tab.mouse.move(x0 + points[0][0], y0 + points[0][1])
    tab.mouse.down()
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        for step in range(1, 6):
            tab.mouse.move(x0 + ax + (bx - ax) * step / 5, y0 + ay + (by - ay) * step / 5)
    tab.mouse.up()


def canvas_stats(tab: Any) -> dict[str, int]:
    return tab.locator("#canvas").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let dark = 0, light = 0;
             for (let i = 0; i < d.length; i += 4) {
               if (d[i] < 64) dark++;
               if (d[i] > 192) light++;
             }
             return {dark, light}; }"""
    )


def test_a_seven_drawn_dark_on_white_is_read_like_one_drawn_light_on_black(
    page: tuple[Any, RequestLog], server: Server
) -> None:
    tab, log = page
    tab.goto(server.url + "/")
    tab.locator("#model-info").filter(has_text="test accuracy").wait_for()
    assert "dark ink on white" in tab.locator("#canvas-hint").inner_text().lower()

    labels = {}
    for count, (mode, offset) in enumerate([("paper", (0, 0)), ("chalk", (-40, 20))], 1):
        tab.check(f'input[name="ink"][value="{mode}"]')
        assert tab.locator("#canvas").get_attribute("data-ink") == mode
        draw(tab, SEVEN, offset)  # the chalk one smaller-looking: moved left and down
        stats = canvas_stats(tab)
        ink, background = (
            (stats["dark"], stats["light"]) if mode == "paper" else (stats["light"], stats["dark"])
        )
        assert ink > 2000 and background > 40000, (mode, stats)
        tab.click("#classify-drawing")
        card = wait_for_cards(tab, count).first
        assert card.get_attribute("data-state") == "done", card.inner_text()
        labels[mode] = card.locator(".top-label").inner_text()
        seen = card.locator("img.network-input")
        assert seen.is_visible()
        assert seen.evaluate("img => img.complete && img.naturalWidth") == 28
        tab.click("#clear-drawing")

    assert labels == {"paper": "7", "chalk": "7"}
    assert log.outside() == []
