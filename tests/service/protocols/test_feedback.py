"""Tests for service.protocols.feedback: the ``POST /feedback`` body (one object or a list of
them), and the answer a malformed one gets: its status and a message that says what to send."""

from __future__ import annotations

import pytest

from service.protocols.feedback import FEEDBACK_FORM, FeedbackItem, parse_feedback
from tests.helpers.answers import refused

MAX_ITEMS = 100


def parse(body: object) -> tuple[list[FeedbackItem], bool]:
    return parse_feedback(body, max_items=MAX_ITEMS)


def test_one_object_is_one_item_answered_on_its_own() -> None:
    assert parse({"id": "abc", "label": "3"}) == ([FeedbackItem("abc", "3", False)], False)


def test_a_list_is_answered_item_by_item_in_order() -> None:
    items, many = parse(
        [{"id": "a.0", "label": "3"}, {"id": "a.1", "label": "zebra", "new_class": True}]
    )
    assert many is True
    assert items == [FeedbackItem("a.0", "3", False), FeedbackItem("a.1", "zebra", True)]


def test_a_list_of_one_is_still_a_list() -> None:
    assert parse([{"id": "a", "label": "1"}]) == ([FeedbackItem("a", "1", False)], True)


def test_the_most_items_are_accepted() -> None:
    items, _ = parse([{"id": f"r{i}", "label": "1"} for i in range(MAX_ITEMS)])
    assert len(items) == MAX_ITEMS


def test_too_many_items_are_refused_as_too_large() -> None:
    body = [{"id": f"r{i}", "label": "1"} for i in range(MAX_ITEMS + 1)]
    message = refused(lambda: parse(body), 413)
    assert "101 feedback items" in message and "at most 100" in message
    assert "send the rest in another request" in message


def test_an_empty_list_is_refused() -> None:
    message = refused(lambda: parse([]))
    assert "the list is empty" in message and FEEDBACK_FORM in message


@pytest.mark.parametrize("body", ["abc", 3, None, True], ids=repr)
def test_a_body_that_is_not_an_object_says_what_to_send(body: object) -> None:
    message = refused(lambda: parse(body))
    assert message.startswith("the body is not a JSON object")
    assert '{"id": "<prediction id>", "label": "<true class>"}' in message


def test_a_bad_item_is_named_by_its_index() -> None:
    message = refused(lambda: parse([{"id": "a", "label": "1"}, "b"]))
    assert message.startswith("item 1 is not a JSON object")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"label": "3"}, '"id" must be the prediction id'),
        ({"id": "", "label": "3"}, '"id" must be the prediction id'),
        ({"id": 17, "label": "3"}, '"id" must be the prediction id'),
        ({"id": "abc"}, '"label" must be the true class'),
        ({"id": "abc", "label": 3}, '"label" must be the true class'),
        ({"id": "abc", "label": None}, '"label" must be the true class'),
        ({"id": "abc", "label": "3", "new_class": "yes"}, '"new_class" must be true or false'),
        ({"id": "abc", "label": "3", "new_class": 1}, '"new_class" must be true or false'),
    ],
)
def test_wrong_types_say_which_field(body: dict[str, object], says: str) -> None:
    assert says in refused(lambda: parse(body))


def test_unknown_fields_are_named() -> None:
    message = refused(lambda: parse({"id": "abc", "lable": "3", "new": 1}))
    assert message.startswith("the body: unknown field(s) lable, new")


def test_a_huge_id_is_cut_short() -> None:
    """The id is checked later against the id pattern; a megabyte of it is not kept around."""
    items, _ = parse({"id": "x" * 1_000_000, "label": "3"})
    assert len(items[0].id) == 200
