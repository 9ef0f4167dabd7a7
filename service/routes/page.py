"""``GET /``: the web page, and ``GET /static/{name}``: its script and style sheet.

Plain files from ``service/static/``, served by name from a fixed list (nothing else on disk is
reachable). The page needs nothing from outside this service, and its Content-Security-Policy
says so to the browser: scripts, styles, images and requests from this origin only (images also
from ``data:``/``blob:``, for the explanations and the user's own files).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from service.http.errors import ClientError

router = APIRouter(tags=["page"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: The only files served, with their media types.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the code: revalidate instead of serving a stale page.
    "Cache-Control": "no-cache",
}


def _static(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ClientError(404, f"no static file {name[:60]!r}; the page is at /")
    return Response((STATIC_DIR / name).read_bytes(), media_type=media_type, headers=_HEADERS)


@router.get("/", summary="The web page: classify and explain images", include_in_schema=False)
async def index() -> Response:
    return _static("index.html")


@router.get("/static/{name}", summary="The page's script and style sheet", include_in_schema=False)
async def static(name: str) -> Response:
    return _static(name)
