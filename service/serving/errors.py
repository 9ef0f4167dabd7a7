"""The serving core's refusals: domain errors that say what to fix, and nothing of HTTP.

The core (repository, batcher, inference, decode step) and the protocol parsers raise these;
one table at the edge (:mod:`service.http.errors`) turns each into a status code, a
``imgcls_rejected_requests_total`` reason and a ``Retry-After``, for every front end alike.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the service refuses; ``detail`` says what to fix (``{"detail": ...}``).

    Attributes:
        detail: The message for the client.
        counted: True when the refusal was already counted as a rejection where it happened
            (the batcher counts its own), so the edge must not count it again.
    """

    def __init__(self, detail: str, *, counted: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.counted = counted


class InvalidInput(ServingError):
    """The request is malformed or names something impossible (a bad parameter, a bad tensor)."""


class PayloadTooLarge(ServingError):
    """The request carries more than the service can ever take (images per request, queue)."""


class ImageRejected(ServingError):
    """One image of the request cannot be decoded.

    Attributes:
        category: The decoder's word for the problem (``empty``, ``unsupported``, ``corrupt``,
            ``too_large``; :attr:`contract.decoding.errors.ImageError.category`).
    """

    def __init__(self, detail: str, *, category: str) -> None:
        super().__init__(detail)
        self.category = category


class ModelNotFound(ServingError):
    """No such model, version or label in the repository."""


class ModelNotReady(ServingError):
    """The model exists (or is expected) but has no served version yet: retry later."""


class ShuttingDown(ServingError):
    """The service is draining: retry on another replica."""


class QueueFull(ServingError):
    """The model's batch queue is full: retry after a delay."""


class DeadlineExceeded(ServingError):
    """No result within the request's deadline."""


class ModelFailed(ServingError):
    """The model call raised on this request's batch (a server fault, not the client's)."""


class UnknownPrediction(ServingError):
    """Feedback names a prediction id that was never captured, or whose capture expired."""


class UnknownLabel(ServingError):
    """Feedback names a class the model does not know (and does not say it is a new one)."""


class AlreadyLabelled(ServingError):
    """Feedback for a prediction that already has its true label."""


class CaptureUnavailable(ServingError):
    """The feedback folder cannot be written (full disk, permissions): retry later."""
