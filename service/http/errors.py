"""HTTP errors that say what to fix, and the one table that turns domain errors into them.

The serving core raises :class:`~service.serving.errors.ServingError` subclasses; the handler the
app registers once answers each with the status, ``imgcls_rejected_requests_total`` reason and
``Retry-After`` of :data:`ANSWERS` (the image decoder's categories: :data:`IMAGE_ANSWERS`), in the
body shape of the route's protocol (native ``/predict``, TF Serving REST and V2 alike). A gRPC
front end maps the same table to its status codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from service.serving.errors import (
    AlreadyLabelled,
    CaptureUnavailable,
    DeadlineExceeded,
    ImageRejected,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    ServingError,
    ShuttingDown,
    UnknownLabel,
    UnknownPrediction,
)

#: Path prefixes whose errors are ``{"error": "..."}`` (TF Serving's and the V2 protocol's
#: shape, what their clients read), not ``{"detail": "..."}``.
PROTOCOL_PREFIXES = ("/v1/", "/v2")


def error_body(path: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The JSON error body a client of the route at ``path`` expects (the app's handlers and
    the connection guard's refusals alike). The native shape carries the request's id too;
    TF Serving's and V2's stay exactly their peers' ``{"error"}`` (the id is in the
    ``X-Request-Id`` header of every answer)."""
    if path.startswith(PROTOCOL_PREFIXES):
        return {"error": message}
    if request_id is None:
        return {"detail": message}
    return {"detail": message, "id": request_id}


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


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """How the edge answers one kind of domain error.

    Attributes:
        status: HTTP status code.
        reason: The ``imgcls_rejected_requests_total`` label, or None when it is no rejection
            (a server fault, a deadline the batcher already counted).
        retry: Whether the answer carries ``Retry-After`` (the client should come back).
        grpc: The gRPC status code's name (``grpc.StatusCode`` member) for the gRPC front end.
    """

    status: int
    reason: str | None = None
    retry: bool = False
    grpc: str = "INVALID_ARGUMENT"


#: Domain error -> answer. The most specific class wins (see :func:`answer_for`).
ANSWERS: dict[type[ServingError], ErrorAnswer] = {
    InvalidInput: ErrorAnswer(400, "bad_request"),
    PayloadTooLarge: ErrorAnswer(413, "too_large"),
    ModelNotFound: ErrorAnswer(404, "not_found", grpc="NOT_FOUND"),
    ModelNotReady: ErrorAnswer(503, "no_model", retry=True, grpc="UNAVAILABLE"),
    ShuttingDown: ErrorAnswer(503, "shutting_down", retry=True, grpc="UNAVAILABLE"),
    QueueFull: ErrorAnswer(503, "queue_full", retry=True, grpc="RESOURCE_EXHAUSTED"),
    DeadlineExceeded: ErrorAnswer(504, "deadline", grpc="DEADLINE_EXCEEDED"),
    ModelFailed: ErrorAnswer(500, grpc="INTERNAL"),
    UnknownPrediction: ErrorAnswer(404, "not_found", grpc="NOT_FOUND"),
    UnknownLabel: ErrorAnswer(422, "bad_request"),
    AlreadyLabelled: ErrorAnswer(409, "bad_request", grpc="ALREADY_EXISTS"),
    CaptureUnavailable: ErrorAnswer(503, "unavailable", retry=True, grpc="UNAVAILABLE"),
}

#: An image the decoder refused, by :attr:`contract.decoding.errors.ImageError.category`.
IMAGE_ANSWERS: dict[str, ErrorAnswer] = {
    "empty": ErrorAnswer(400, "bad_request"),
    "corrupt": ErrorAnswer(400, "bad_request"),
    "unsupported": ErrorAnswer(415, "unsupported"),
    "too_large": ErrorAnswer(413, "too_large"),
}


def answer_for(error: ServingError) -> ErrorAnswer:
    """The answer :data:`ANSWERS` (or :data:`IMAGE_ANSWERS`) gives ``error``."""
    if isinstance(error, ImageRejected):
        return IMAGE_ANSWERS.get(error.category, ErrorAnswer(400, "bad_request"))
    for cls in type(error).__mro__:
        answer = ANSWERS.get(cls)
        if answer is not None:
            return answer
    return ErrorAnswer(400, "bad_request")


def client_error(error: ServingError, *, retry_after_s: int) -> ClientError:
    """``error`` as the HTTP answer the table gives it (reason None if already counted)."""
    answer = answer_for(error)
    headers = {"Retry-After": str(retry_after_s)} if answer.retry else None
    reason = None if error.counted else answer.reason
    return ClientError(answer.status, error.detail, reason=reason, headers=headers)
