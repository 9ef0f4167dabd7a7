"""API keys: when ``IMGCLS_API_KEYS`` is set, inference routes need one of them."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.requests import Request

from service.http.errors import ClientError


def offered_key(request: Request) -> str:
    """The key a client sent: ``X-API-Key``, else ``Authorization: Bearer <key>``."""
    return key_offered(
        request.headers.get("x-api-key", ""), request.headers.get("authorization", "")
    )


def key_offered(x_api_key: str, authorization: str) -> str:
    """The key a client sent: ``X-API-Key``, else ``Authorization: Bearer <key>`` (the same
    headers as HTTP or gRPC metadata)."""
    if not x_api_key and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


def key_allowed(offered: str, keys: Sequence[SecretStr]) -> bool:
    """True when no keys are configured or ``offered`` is one of them."""
    if not keys:
        return True
    offered_bytes = offered.encode()
    # Compare against every key, in constant time, so timing reveals neither key nor match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered_bytes, key.get_secret_value().encode())
    return matched


#: What a client without a valid key is told (HTTP headers or gRPC metadata alike).
MISSING_KEY = (
    "missing or wrong API key: send it in the X-API-Key header or as Authorization: Bearer <key>"
)


def check_api_key(request: Request, keys: Sequence[SecretStr]) -> None:
    """With ``keys`` configured, require one of them; 401 otherwise. No keys: open."""
    if not keys:
        return
    if not key_allowed(offered_key(request), keys):
        raise ClientError(
            401,
            MISSING_KEY,
            reason="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
