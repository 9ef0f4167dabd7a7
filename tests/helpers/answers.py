"""A refusal of the serving core or of the decoder as the HTTP answer the service gives it.

The core raises domain errors (:mod:`service.serving.errors`) and the decoder image errors
(:mod:`contract.decoding.errors`), none of which knows HTTP; one table at the edge
(:mod:`service.http.errors`) gives each its status, ``imgcls_rejected_requests_total`` reason and
``Retry-After``. The unit tests check a refusal's status through that same table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from contract.decoding.errors import ImageError
from service.http.errors import IMAGE_ANSWERS, ClientError, client_error
from service.serving.errors import ServingError

#: ``Retry-After`` seconds of the default settings (``IMGCLS_RETRY_AFTER_S``).
RETRY_AFTER_S = 1


def image_status(error: ImageError) -> int:
    """The HTTP status an upload refused with ``error`` gets."""
    return IMAGE_ANSWERS[error.category].status


def http_answer(error: ServingError, retry_after_s: int = RETRY_AFTER_S) -> ClientError:
    """``error`` as the :class:`ClientError` the app answers with (status, detail, reason,
    ``Retry-After`` header)."""
    return client_error(error, retry_after_s=retry_after_s)


def refused(call: Callable[[], Any], status: int = 400) -> str:
    """Run ``call``; it must raise a domain error the service answers with ``status``; returns
    the message."""
    with pytest.raises(ServingError) as caught:
        call()
    answer = http_answer(caught.value)
    assert answer.status_code == status, answer.detail
    return str(answer.detail)
