"""Tests for service.http.errors: an error body has the shape each protocol's
clients expect (``{"error": ...}`` on TF Serving and V2 routes, ``{"detail": ...}`` elsewhere)."""

from __future__ import annotations

import pytest

from service.http.errors import error_body


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/models/digits:predict", "error"),
        ("/v1/models/digits/versions/2", "error"),
        ("/v2", "error"),
        ("/v2/models/digits/infer", "error"),
        ("/predict", "detail"),
        ("/models/digits/predict", "detail"),
        ("/models", "detail"),
        ("/v1", "detail"),  # not a TF Serving route
    ],
)
def test_error_body_has_the_shape_each_protocol_expects(path: str, key: str) -> None:
    assert error_body(path, "what to fix") == {key: "what to fix"}
