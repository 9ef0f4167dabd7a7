"""Request and prediction ids: what a client quotes back to give feedback on an answer.

Every request gets one id: the client's own ``X-Request-Id`` when it is sane (a tracing system's
id then follows the request through), else a fresh random one. Each image of a request is one
prediction: its id is the request's id, with ``.<index>`` appended when the request carried
several images. The pattern keeps ids safe as file names: nothing a client sends becomes a path
component unchecked.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

#: A client's request id that is taken as it is (a UUID, a tracing id...); anything else is
#: replaced by a generated one. No dots: ``.<index>`` is reserved for the images of a request.
REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A prediction id: a request id, and ``.<image index>`` for multi-image requests.
PREDICTION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[0-9]{1,4})?")
#: The HTTP header that carries the id, both ways.
REQUEST_ID_HEADER: Final = "X-Request-Id"


def new_request_id() -> str:
    """A fresh id: 32 hex digits (128 random bits: unique without coordination)."""
    return secrets.token_hex(16)


def sane_request_id(raw: str | None) -> str | None:
    """``raw`` when it is usable as a request id, else None."""
    if raw is None or not REQUEST_ID_PATTERN.fullmatch(raw):
        return None
    return raw


def prediction_ids(request_id: str, count: int) -> list[str]:
    """The id of each of a request's ``count`` predictions (images), in request order."""
    if count == 1:
        return [request_id]
    return [f"{request_id}.{index}" for index in range(count)]


def is_prediction_id(value: object) -> bool:
    """Whether ``value`` can be an id this service gave (a string of the right form)."""
    return isinstance(value, str) and PREDICTION_ID_PATTERN.fullmatch(value) is not None
