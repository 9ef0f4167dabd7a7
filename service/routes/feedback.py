"""Feedback: the true label of a prediction, stored where ``train.py --data`` reads it.

``POST /feedback`` attaches labels to captured predictions by their id (the ``X-Request-Id`` of
the answer, or a result's ``"id"``); ``POST /models/{name}/feedback`` takes a labelled image
directly (a labelling tool, a user correcting the page), classifies it with the version that
would serve it, and stores it. Both are authenticated like inference and counted in
``imgcls_feedback_total`` (live accuracy); the file work runs on one thread with a bounded wait
list (:class:`~service.serving.bounded.BoundedRunner`), so a flood of feedback gets 503s, not
a blocked event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import dataplane
from service.deps import state_of
from service.feedback.store import FeedbackStore, Labelled, check_label, outcome_of
from service.http.auth import check_api_key
from service.http.direct_route import DirectRoute
from service.http.errors import answer_for
from service.http.uploads import read_uploads_and_fields
from service.protocols.body import parse_json, read_protocol_body
from service.protocols.feedback import FeedbackItem, parse_feedback
from service.serving.bounded import RunnerBusyError
from service.serving.errors import InvalidInput, ModelNotReady, QueueFull, ServingError
from service.serving.inference import model_ref
from service.state import ServiceState

router = APIRouter(tags=["feedback"], route_class=DirectRoute)

T = TypeVar("T")
#: Seconds a feedback request may wait for the feedback thread, then 503.
FEEDBACK_WAIT_S = 10.0
#: Form values that mean yes, for ``new_class``.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed body, bad id or label"},
    401: {"description": "API key required"},
    404: {"description": "no captured prediction with that id (not captured, or expired)"},
    409: {"description": "that prediction already has its true label"},
    422: {"description": "a label the model does not know (the answer lists the known ones)"},
    503: {"description": "feedback is busy or its folder cannot be written (see Retry-After)"},
}


@router.post(
    "/feedback",
    summary="Attach true labels to captured predictions (one object, or a list)",
    responses=_RESPONSES,
)
async def feedback(request: Request) -> JSONResponse:
    """``{"id", "label"[, "new_class"]}`` or a list of them. One object: its answer, or the
    error's status. A list: 200 with every item's answer or error, in order."""
    state = state_of(request)
    check_api_key(request, state.settings.api_keys)
    body = parse_json(await read_protocol_body(request, state.upload_limits))
    items, many = parse_feedback(body, max_items=state.settings.feedback_max_items)
    classes_of = _classes_of(state)
    models = list(state.repository.models)
    outcomes = await _on_feedback_thread(
        state, _label_all, state.feedback, items, models, classes_of
    )
    for outcome in outcomes:
        if isinstance(outcome, Labelled):
            state.metrics.feedback_received(outcome.model, str(outcome.version), outcome.outcome)
    if not many:
        if isinstance(outcomes[0], ServingError):
            raise outcomes[0]
        return JSONResponse({"results": [outcomes[0].answer()]})
    results = [
        outcome.answer() if isinstance(outcome, Labelled) else _item_error(item, outcome)
        for item, outcome in zip(items, outcomes, strict=True)
    ]
    stored = sum(isinstance(outcome, Labelled) for outcome in outcomes)
    return JSONResponse({"stored": stored, "failed": len(items) - stored, "results": results})


@router.post(
    "/models/{name}/feedback",
    summary="Send a labelled image: classified by the serving version, counted and stored",
    responses=_RESPONSES,
)
async def feedback_example(name: str, request: Request) -> JSONResponse:
    """Multipart ``file`` (one or more images of the same class) and ``label`` (the true
    class; ``new_class=true`` for a class the model does not know yet)."""
    state = state_of(request)
    check_api_key(request, state.settings.api_keys)
    served, model = dataplane.choose_model(state, name)
    uploads, fields = await read_uploads_and_fields(request, state.upload_limits)
    if "label" not in fields:
        raise InvalidInput(
            "form field 'label' (the true class) is missing: curl -F file=@digit.png -F label=3 ..."
        )
    label = check_label(fields["label"])
    new_class = fields.get("new_class", "").strip().lower() in TRUE_WORDS
    class_names = model.metadata.class_names
    outcome_of(label, "", class_names, new_class)  # an unknown label is refused before the model
    images = await dataplane.decode_uploads(state, uploads, model)
    predictions = await dataplane.predict(request, state, served, model, images)
    request_id, ids = dataplane.answer_ids(request, len(predictions))
    examples = [
        (prediction_id, upload.data, class_names[int(p.probabilities.argmax())])
        for prediction_id, upload, p in zip(ids, uploads, predictions, strict=True)
    ]

    def store_all() -> list[Labelled]:
        return [
            state.feedback.store_direct(
                prediction_id,
                model.name,
                model.version,
                data,
                predicted,
                label,
                outcome_of(label, predicted, class_names, new_class),
            )
            for prediction_id, data, predicted in examples
        ]

    labelled = await _on_feedback_thread(state, store_all)
    for example in labelled:
        state.metrics.feedback_received(example.model, str(example.version), example.outcome)
    return JSONResponse(
        {
            "id": request_id,
            "model": model_ref(model),
            "results": [
                {**example.answer(), "filename": upload.filename}
                for example, upload in zip(labelled, uploads, strict=True)
            ],
        }
    )


def _label_all(
    store: FeedbackStore,
    items: Sequence[FeedbackItem],
    models: Sequence[str],
    classes_of: Callable[[str, int], Sequence[str]],
) -> list[Labelled | ServingError]:
    """Each item labelled, or the error that refused it (on the feedback thread)."""
    outcomes: list[Labelled | ServingError] = []
    for item in items:
        try:
            outcomes.append(
                store.label_prediction(item.id, item.label, item.new_class, models, classes_of)
            )
        except ServingError as exc:
            outcomes.append(exc)
    return outcomes


def _item_error(item: FeedbackItem, error: ServingError) -> dict[str, Any]:
    return {"id": item.id, "status": answer_for(error).status, "error": error.detail}


def _classes_of(state: ServiceState) -> Callable[[str, int], Sequence[str]]:
    """``(model, version) -> class names`` from what is served now (a snapshot taken on the
    event loop): the version's own, else the model's default version's."""
    served: dict[tuple[str, int], Sequence[str]] = {}
    defaults: dict[str, Sequence[str]] = {}
    for name, model in state.repository.models.items():
        for version, loaded in model.store.served.items():
            served[(name, version)] = loaded.metadata.class_names
        default = model.default_version()
        if default is not None:
            defaults[name] = default.metadata.class_names

    def classes_of(model: str, version: int) -> Sequence[str]:
        classes = served.get((model, version)) or defaults.get(model)
        if classes is None:
            raise ModelNotReady(f"model {model!r} has no served version to judge the label by")
        return classes

    return classes_of


async def _on_feedback_thread(state: ServiceState, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the feedback thread; 503 when it is busy."""
    try:
        return await state.feedback_runner.run(fn, *args, wait_timeout_s=FEEDBACK_WAIT_S)
    except (RunnerBusyError, asyncio.TimeoutError):
        raise QueueFull(
            "feedback is busy (too many feedback requests waiting); retry after the "
            "Retry-After delay"
        ) from None
