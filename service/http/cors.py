"""CORS whose refusals are JSON like every other error: ``{"detail": "..."}`` that says what to fix.

Starlette's :class:`~starlette.middleware.cors.CORSMiddleware` answers a preflight it refuses with
``400 text/plain "Disallowed CORS origin"``. :class:`JSONCORSMiddleware` keeps its decisions and
headers (only the public ``preflight_response`` hook is overridden) and rewrites the body of a
refusal: which origin, method or header was refused, what is allowed, and which setting allows
more (``IMGCLS_CORS_ORIGINS``).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

#: The setting that lists the allowed origins (comma-separated).
ORIGINS_SETTING = "IMGCLS_CORS_ORIGINS"

#: Headers describing the plain-text body; the JSON response sets its own.
_BODY_HEADERS = frozenset({"content-type", "content-length"})


class JSONCORSMiddleware(CORSMiddleware):
    """:class:`CORSMiddleware` whose refused preflights answer 400 JSON ``{"detail": ...}``."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's answer; a refusal (400) gets a JSON body naming what was refused."""
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in _BODY_HEADERS
        }
        return JSONResponse(
            {"detail": self.refusal_detail(request_headers)},
            status_code=response.status_code,
            headers=headers,
        )

    def refusal_detail(self, request_headers: Headers) -> str:
        """One sentence per refused part of the preflight, each with what is allowed instead."""
        origin = request_headers.get("origin", "")
        method = request_headers.get("access-control-request-method", "")
        requested = request_headers.get("access-control-request-headers")
        problems: list[str] = []
        if not self.is_allowed_origin(origin=origin):
            allowed = ", ".join(self.allow_origins) or "none"
            problems.append(
                f"origin {origin!r} is not allowed to call this API cross-origin; allowed "
                f"origins: {allowed} (add it to {ORIGINS_SETTING}, comma-separated)"
            )
        if method not in self.allow_methods:
            problems.append(
                f"method {method!r} is not allowed; allowed methods: "
                + ", ".join(self.allow_methods)
            )
        if requested is not None and not self.allow_all_headers:
            refused = [
                name.strip()
                for name in requested.lower().split(",")
                if name.strip() not in self.allow_headers
            ]
            if refused:
                problems.append(
                    "request header(s) "
                    + ", ".join(repr(name) for name in refused)
                    + " not allowed; allowed headers: "
                    + ", ".join(sorted(self.allow_headers))
                )
        if (
            request_headers.get("access-control-request-private-network") is not None
            and not self.allow_private_network
        ):
            problems.append("private-network access is not allowed")
        if not problems:  # a future Starlette check we do not know about
            problems.append("the CORS preflight was refused")
        return "CORS preflight refused: " + "; ".join(problems)
