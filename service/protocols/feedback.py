"""The feedback protocol's JSON body: ``{"id", "label"[, "new_class"]}`` or a list of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.serving.errors import InvalidInput, PayloadTooLarge

#: How to send feedback, for the messages of a malformed body.
FEEDBACK_FORM = (
    'send {"id": "<prediction id>", "label": "<true class>"} (or a list of them; '
    '"new_class": true for a class the model does not know yet)'
)


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One prediction's true label, as the client sent it (checked later, item by item)."""

    id: str
    label: str
    new_class: bool = False


def parse_feedback(body: object, *, max_items: int) -> tuple[list[FeedbackItem], bool]:
    """The items of a feedback body, and whether it was a list (answered item by item)."""
    if isinstance(body, list):
        if not body:
            raise InvalidInput(f"the list is empty; {FEEDBACK_FORM}")
        if len(body) > max_items:
            raise PayloadTooLarge(
                f"{len(body)} feedback items in one request; at most {max_items} "
                "(IMGCLS_FEEDBACK_MAX_ITEMS): send the rest in another request"
            )
        return [_item(raw, f"item {index}") for index, raw in enumerate(body)], True
    return [_item(body, "the body")], False


def _item(raw: Any, where: str) -> FeedbackItem:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} is not a JSON object; {FEEDBACK_FORM}")
    unknown = sorted(set(raw) - {"id", "label", "new_class"})
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {', '.join(unknown[:5])}; {FEEDBACK_FORM}")
    prediction_id, label = raw.get("id"), raw.get("label")
    if not isinstance(prediction_id, str) or not prediction_id:
        raise InvalidInput(f'{where}: "id" must be the prediction id (a string); {FEEDBACK_FORM}')
    if not isinstance(label, str):
        raise InvalidInput(f'{where}: "label" must be the true class (a string); {FEEDBACK_FORM}')
    new_class = raw.get("new_class", False)
    if not isinstance(new_class, bool):
        raise InvalidInput(f'{where}: "new_class" must be true or false')
    return FeedbackItem(prediction_id[:200], label, new_class)
