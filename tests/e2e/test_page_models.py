"""The page's model picker in a real headless Chromium: it lists every model of the repository
with its versions and labels, and classifies with the model and version the user picked.

Repository: digits 1 and 2 (``stable: 1``, ``canary: 2`` with weight 0) and ``other`` (the same
network with spelled-out class names, so an answer shows which model gave it). Same browser
set-up as tests/e2e/conftest.py (Debian's Chromium, no request leaves 127.0.0.1).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import TIMEOUT_MS, RequestLog, wait_for_cards
from tests.helpers.models import republish
from tests.helpers.servers import Server, start_server, stop_server
from training.data import load_digits_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CONFIG = """\
models:
  digits:
    labels:
      stable: 1
      canary: {version: 2, weight: 0}
"""


@pytest.fixture(scope="module")
def picker_server(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("page-models") / "models"
    shutil.copytree(trained_repo, models)
    assert republish(models, 1) == 2
    assert republish(models, 1, as_name="other", class_names=WORDS) == 1
    (models / "serving.yaml").write_text(CONFIG)
    server = start_server(models, tmp_path_factory.mktemp("page-models-logs"))
    yield server
    stop_server(server)


@pytest.fixture()
def tab(browser: Any, picker_server: Server) -> Iterator[tuple[Any, RequestLog]]:
    log = RequestLog(picker_server.url)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", log.handle)
    page = context.new_page()
    yield page, log
    context.close()


def seven_png(path: Path) -> Path:
    test = load_digits_data(0.1).test
    index = int(np.flatnonzero(test.labels == 7)[0])
    buffer = io.BytesIO()
    Image.fromarray(test.images[index, ..., 0]).resize((84, 84)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def options(page: Any, select: str) -> list[str]:
    return page.eval_on_selector_all(f"{select} option", "els => els.map(e => e.textContent)")


def test_the_picker_lists_models_versions_and_labels_and_routes_by_them(
    tab: tuple[Any, RequestLog], picker_server: Server, tmp_path: Path
) -> None:
    page, log = tab
    seven = seven_png(tmp_path / "seven.png")
    page.goto(picker_server.url + "/")
    page.locator("#model-info").filter(has_text="test accuracy").wait_for()
    assert options(page, "#model-select") == ["digits (default)", "other"]
    # stable names version 1: it is the default for unpinned requests, not the newest (2).
    assert options(page, "#version-select") == [
        "default (version 1)",
        "version 2",
        "version 1",
        "canary → version 2",
        "stable → version 1",
    ]

    # Another model: its own class names come back, through its own route.
    page.select_option("#model-select", "other")
    page.locator("#model-info").filter(has_text="Model other, version 1").wait_for()
    page.set_input_files("#file-input", str(seven))
    card = wait_for_cards(page, 1).first
    assert card.get_attribute("data-state") == "done", card.inner_text()
    assert card.locator(".top-label").inner_text() == "seven"
    assert any("/explain?top_k=3&model=other" in url for url in log.urls)

    # A label of the default model: pinned to the version it names.
    page.select_option("#model-select", "digits")
    page.select_option("#version-select", "l:canary")
    page.locator("#model-info").filter(has_text="Model digits, version 2").wait_for()
    page.set_input_files("#file-input", str(seven))
    card = wait_for_cards(page, 2).first
    assert card.get_attribute("data-state") == "done", card.inner_text()
    assert card.locator(".top-label").inner_text() == "7"
    assert card.locator(".result-meta").inner_text().startswith("version 2 ")
    assert any("model=digits&version_label=canary" in url for url in log.urls)
    # The report follows the choice.
    assert any("/models/digits/versions/2/report/" in url for url in log.urls)
    assert log.outside() == []
