"""API keys: when ``IMGCLS_API_KEYS`` is set, inference routes need one of them."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.requests import Request

from service.http.errors import ClientError


def offered_key(request: Request) -> str:
    """The key a client sent: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    offered = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not offered and auth.lower().startswith("bearer "):
        offered = auth[7:].strip()
    return offered


def check_api_key(request: Request, keys: Sequence[SecretStr]) -> None:
    """With ``keys`` configured, require one of them; 401 otherwise. No keys: open."""
    if not keys:
        return
    offered_bytes = offered_key(request).encode()
    # Compare against every key, in constant time, so timing reveals neither key nor match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered_bytes, key.get_secret_value().encode())
    if not matched:
        raise ClientError(
            401,
            "missing or wrong API key: send it in the X-API-Key header or as "
            "Authorization: Bearer <key>",
            reason="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
