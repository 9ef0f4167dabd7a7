"""Tests for service.feedback.ids: which client request ids are kept, what a generated one looks
like, and the prediction ids of a request's images (ids become file names: nothing else may
pass)."""

from __future__ import annotations

import re

import pytest

from service.feedback.ids import (
    is_prediction_id,
    new_request_id,
    prediction_ids,
    sane_request_id,
)

SANE = ["a", "7", "0f8c2e1a-5b7d-4c1e-9a3b-2f6d8e9c1a4b", "trace_ID-42", "x" * 64]
NOT_SANE = [
    "",
    "x" * 65,
    "abc.1",  # the dot is reserved for the images of a request
    "a b",
    " abc",
    "abc\n",
    "../etc/passwd",
    "a/b",
    "zif\u00e9r",
    "\u0661\u0662",  # Arabic-Indic digits: not ASCII
]


@pytest.mark.parametrize("raw", SANE)
def test_a_sane_client_id_is_kept_as_it_is(raw: str) -> None:
    assert sane_request_id(raw) == raw


@pytest.mark.parametrize("raw", [*NOT_SANE, None])
def test_any_other_client_id_is_not_used(raw: str | None) -> None:
    assert sane_request_id(raw) is None


def test_generated_ids_are_32_hex_digits_fresh_each_time_and_sane() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    for one in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", one)
        assert sane_request_id(one) == one


def test_one_image_keeps_the_request_id_several_get_their_index() -> None:
    assert prediction_ids("req", 1) == ["req"]
    assert prediction_ids("req", 3) == ["req.0", "req.1", "req.2"]
    assert all(is_prediction_id(one) for one in prediction_ids("x" * 64, 1000))


@pytest.mark.parametrize("value", ["abc", "abc.0", "abc.9999", "x" * 64 + ".12"])
def test_prediction_ids_the_service_gives_are_recognised(value: str) -> None:
    assert is_prediction_id(value)


@pytest.mark.parametrize(
    "value",
    [*NOT_SANE[:2], "abc.", "abc.12345", "abc.1.2", "abc.x", ".1", "a b.1", None, 7, b"abc"],
)
def test_anything_else_is_not_a_prediction_id(value: object) -> None:
    assert not is_prediction_id(value)
