"""What the page tests (tests/e2e/test_page_*.py) share besides the ``browser`` and ``page``
fixtures of tests/e2e/conftest.py: where Chromium is, where screenshots go, the request log that
keeps every request on 127.0.0.1, and waiting for result cards."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from tests.helpers.processes import ROOT

CHROMIUM = os.environ.get("IMGCLS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 30_000


class RequestLog:
    """Every URL the page asks for; anything not on the server's origin is aborted."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.urls: list[str] = []

    def handle(self, route: Any) -> None:
        url = route.request.url
        self.urls.append(url)
        if self.is_local(url):
            route.continue_()
        else:
            route.abort()

    def is_local(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            return True
        return parts.hostname == "127.0.0.1" and f"{parts.scheme}://{parts.netloc}" == self.origin

    def outside(self) -> list[str]:
        return [url for url in self.urls if not self.is_local(url)]


def wait_for_cards(page: Any, count: int) -> Any:
    page.wait_for_function(
        "n => document.querySelectorAll('.result[data-state=done], .result[data-state=error]')"
        ".length >= n",
        arg=count,
    )
    return page.locator(".result")
