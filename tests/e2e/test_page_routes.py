"""The page's routes over HTTP (no browser): ``/``, ``/static/...`` and the report files."""

from __future__ import annotations

import json

import pytest

from tests.helpers.servers import Server

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_page_and_its_assets_are_served_with_a_same_origin_policy(server: Server) -> None:
    with server.client() as client:
        page = client.get("/")
        script = client.get("/static/app.js")
        style = client.get("/static/style.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    assert '<link rel="stylesheet" href="/static/style.css">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    # Nothing on the page may reach outside this origin (fonts, CDNs, analytics).
    for text in (page.text, script.text, style.text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.htm",
        "/static/..%2Fapp.py",
        "/static/../routes/page.py",
        "/static/%2e%2e/settings.py",
        "/static/",
    ],
)
def test_nothing_but_the_three_page_files_is_served_from_static(server: Server, path: str) -> None:
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 404
    assert "import" not in response.text


def test_report_files_of_the_serving_version_are_served(server: Server) -> None:
    with server.client() as client:
        for name in ("curves.png", "confusion_matrix.png", "filters.png"):
            response = client.get(f"/models/1/report/{name}")
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"] == "image/png"
            assert response.content.startswith(PNG_MAGIC)
        per_class = client.get("/models/1/report/per_class.json")
        matrix = client.get("/models/1/report/confusion_matrix.json")
    assert per_class.headers["content-type"] == "application/json"
    assert set(str(d) for d in range(10)) <= set(per_class.json())
    assert len(json.loads(matrix.content)["matrix"]) == 10


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/models/1/report/metadata.json", "no report file"),
        ("/models/1/report/..%2Fmetadata.json", ""),
        ("/models/1/report/%2e%2e%2f%2e%2e%2fdigits%2f1%2fmetadata.json", ""),
        ("/models/99/report/curves.png", "no version"),
        ("/models/abc/report/curves.png", "no version"),
        ("/models/01x/report/curves.png", "no version"),
        ("/models/1/report/saved_model.pb", "no report file"),
    ],
)
def test_anything_else_under_report_is_404(server: Server, path: str, needle: str) -> None:
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 404, response.text
    assert needle in response.text
    assert not response.content.startswith(PNG_MAGIC)
    assert '"files"' not in response.text  # metadata.json never leaks
