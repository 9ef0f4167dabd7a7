"""Fixtures of the page tests: a headless Debian Chromium driven by Playwright, and a page on the
shared server whose every request is logged (and aborted unless it stays on 127.0.0.1).

Needs Playwright for Python and Debian's Chromium (``make test`` installs both; never
``playwright install``). Missing either: skipped, or FAILED when ``CI=true``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.browser import CHROMIUM, TIMEOUT_MS, RequestLog
from tests.helpers.processes import missing_tool
from tests.helpers.servers import Server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("Playwright for Python is not installed: pip install -e '.[dev]'")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing_tool(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root in containers, where Chromium's sandbox can't start.
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield instance
        instance.close()


@pytest.fixture()
def page(browser: Any, server: Server) -> Iterator[tuple[Any, RequestLog]]:
    log = RequestLog(server.url)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route("**/*", log.handle)
    page = context.new_page()
    page.on("request", lambda request: log.urls.append(request.url))
    yield page, log
    context.close()
