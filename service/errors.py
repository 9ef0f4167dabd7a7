"""HTTP errors that say what to fix, rendered as ``{"detail": "..."}``."""

from __future__ import annotations

from fastapi import HTTPException


class ClientError(HTTPException):
    """A 4xx (or a 503/504 the client should retry) with a message and optional headers.

    ``reason`` is the ``imgcls_rejected_requests_total`` label, when the refusal counts as one.
    """

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.reason = reason
