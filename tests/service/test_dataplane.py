"""Tests for service.dataplane: the steps every inference route shares (here: ``top_k``)."""

from __future__ import annotations

import pytest

from service.dataplane import parse_top_k
from service.serving.errors import InvalidInput


def test_top_k_defaults_to_five_within_the_configured_maximum() -> None:
    assert parse_top_k(None, max_top_k=100) == 5
    assert parse_top_k(None, max_top_k=3) == 3  # IMGCLS_MAX_TOP_K=3: never 5 predictions
    assert parse_top_k("2", max_top_k=3) == 2


@pytest.mark.parametrize("raw", ["0", "4", "x", "1.5"])
def test_top_k_outside_its_range_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="top_k"):
        parse_top_k(raw, max_top_k=3)
