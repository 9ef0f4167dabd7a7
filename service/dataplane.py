"""The steps every inference route shares, whatever its protocol: choose the model version,
decode, queue on that model's batcher (dropped if the client hangs up), count the predictions,
feed the drift windows, and offer a sampled share of the inputs to capture.

Routes parse and answer their protocol; this module is the one path between them and the model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

import numpy as np
from starlette.requests import Request

from service.feedback.capture import CaptureSample
from service.feedback.ids import prediction_ids
from service.http.disconnect import unless_disconnected
from service.http.middleware import SCOPE_MODEL_KEY, request_id_of
from service.protocols.tensors import ImagesInput
from service.serving.decode_step import Upload, decode_all
from service.serving.errors import DeadlineExceeded, InvalidInput, PayloadTooLarge, ShuttingDown
from service.serving.inference import Prediction, classify
from service.serving.model_store import LoadedModel
from service.serving.repository import ServedModel
from service.state import ServiceState

#: Predictions per image when the request names no ``top_k``.
DEFAULT_TOP_K = 5

#: What arrived for one image: its encoded bytes, or the pixel array a tensor protocol sent.
Arrived = bytes | np.ndarray

T = TypeVar("T")


class Call(Protocol):
    """One inference call of a front end that is not an HTTP route (the gRPC server): what the
    data plane needs of it besides the images."""

    @property
    def request_id(self) -> str:
        """The call's id (the client's when sane, else a new one)."""

    def record_model(self, model: LoadedModel) -> None:
        """Label the call's metrics with the version that serves it."""

    def time_left_s(self) -> float | None:
        """Seconds left before the client's own deadline; None when it set none."""

    async def unless_gone(self, work: Awaitable[T]) -> T:
        """Await ``work``; cancelled (its queued images dropped) when the client leaves."""


def choose_model(
    state: ServiceState,
    name: str | None = None,
    *,
    version: int | str | None = None,
    label: str | None = None,
    split: bool = True,
) -> tuple[ServedModel, LoadedModel]:
    """The model and version to run (:class:`ModelNotFound`, :class:`ModelNotReady`,
    :class:`ShuttingDown`)."""
    if state.shutting_down:
        raise ShuttingDown("the service is shutting down; retry on another replica")
    return state.repository.resolve(name, version=version, label=label, split=split)


def record_model(request: Request | Call, model: LoadedModel) -> None:
    """Label this request's metrics with the version that serves it."""
    if isinstance(request, Request):
        request.scope[SCOPE_MODEL_KEY] = (model.name, str(model.version))
    else:
        request.record_model(model)


async def decode_uploads(
    state: ServiceState, uploads: Sequence[Upload], model: LoadedModel
) -> list[np.ndarray]:
    """Encoded images -> the model's input size, float32 RGB 0..255 (4xx for a bad one)."""
    settings = state.settings
    return await decode_all(
        uploads,
        model.input_size,
        state.decode_pool,
        max_pixels=settings.max_pixels,
        inline_max_pixels=settings.inline_decode_max_pixels,
    )


async def predict(
    request: Request | Call,
    state: ServiceState,
    served: ServedModel,
    model: LoadedModel,
    images: Sequence[np.ndarray],
    arrived: Sequence[Arrived] | None = None,
) -> list[Prediction]:
    """Run ``images`` (one request's) on ``model`` through ``served``'s batcher; a client that
    disconnects while queued frees its queue slots instead of being computed.

    ``arrived``: what the client sent for each image, offered to capture (at the model's
    capture rate); None for inputs that must not be captured. ``request``: an HTTP route's
    request, or another front end's :class:`Call`."""
    record_model(request, model)
    if len(images) > served.limits.max_queue_size:
        raise PayloadTooLarge(
            f"{len(images)} images can never fit the queue of {model.name!r} "
            f"({served.limits.max_queue_size} images): send fewer per request, or raise "
            "IMGCLS_MAX_QUEUE_SIZE (or the model's limits.max_queue_size in serving.yaml)"
        )
    timeout_s = served.limits.request_timeout_s
    if isinstance(request, Request):
        predictions = await unless_disconnected(
            request.receive,
            classify(served.batcher, model, images, timeout_s=timeout_s),
            scope=request.scope,
        )
    else:
        left_s = request.time_left_s()
        if left_s is not None:
            if left_s <= 0:
                raise DeadlineExceeded("the call's deadline passed before its images were queued")
            timeout_s = min(timeout_s, left_s)  # past the client's deadline nothing is computed
        predictions = await request.unless_gone(
            classify(served.batcher, model, images, timeout_s=timeout_s)
        )
    class_names = model.metadata.class_names
    top = [int(np.argmax(p.probabilities)) for p in predictions]
    confidences = [float(p.probabilities[i]) for p, i in zip(predictions, top, strict=True)]
    version = str(model.version)
    state.metrics.observe_predictions(
        model.name, version, [class_names[i] for i in top], confidences
    )
    state.drift.observe(
        (model.name, version), model.metadata.drift_baseline, class_names, top, confidences
    )
    if arrived is not None:
        rate = capture_rate(state, served)
        if rate > 0:
            _capture(state, request, model, predictions, arrived, rate)
    return predictions


def capture_rate(state: ServiceState, served: ServedModel) -> float:
    """Share (0..1) of ``served``'s inputs to capture: serving.yaml's, else the setting."""
    configured = served.config.capture_rate
    return state.settings.capture_rate if configured is None else configured


def _capture(
    state: ServiceState,
    request: Request | Call,
    model: LoadedModel,
    predictions: Sequence[Prediction],
    arrived: Sequence[Arrived],
    rate: float,
) -> None:
    """Offer each sampled input to the capture writer (a queue put: never waits)."""
    now = time.time()
    ids = prediction_ids(_request_id(request), len(predictions))
    for prediction_id, prediction, data in zip(ids, predictions, arrived, strict=True):
        if rate < 1.0 and random.random() >= rate:
            continue
        state.capture.offer(
            CaptureSample(
                id=prediction_id,
                model=model.name,
                version=model.version,
                data=data,
                probabilities=prediction.probabilities,
                class_names=model.metadata.class_names,
                time=now,
            )
        )


def _request_id(request: Request | Call) -> str:
    return request_id_of(request.scope) if isinstance(request, Request) else request.request_id


def answer_ids(request: Request | Call, count: int) -> tuple[str, list[str]]:
    """The request's id and its ``count`` prediction ids (what feedback quotes back)."""
    request_id = _request_id(request)
    return request_id, prediction_ids(request_id, count)


def arrived_inputs(images: ImagesInput) -> list[Arrived]:
    """What a tensor protocol's client sent per image: encoded bytes, or its pixel array."""
    if images.encoded is not None:
        return [upload.data for upload in images.encoded]
    return list(images.pixels or [])


async def tensor_images(
    state: ServiceState, images: ImagesInput, model: LoadedModel
) -> list[np.ndarray]:
    """A tensor protocol's images -> model inputs: encoded ones decoded as ``/predict`` does,
    pixel arrays as they are (the model resizes and converts them itself)."""
    if images.encoded is not None:
        return await decode_uploads(state, images.encoded, model)
    return images.pixels or []


async def classify_tensors(
    request: Request | Call,
    state: ServiceState,
    served: ServedModel,
    model: LoadedModel,
    images: ImagesInput,
) -> np.ndarray:
    """A tensor protocol's images (V2, TF Serving; REST or gRPC) -> their probabilities,
    (N, num_classes) float32 in request order, through :func:`predict` (captured as sent)."""
    decoded = await tensor_images(state, images, model)
    predictions = await predict(request, state, served, model, decoded, arrived_inputs(images))
    return np.stack([p.probabilities for p in predictions])


def parse_top_k(raw: str | None, max_top_k: int) -> int:
    """``top_k`` from the query string: default 5 (at most ``max_top_k``), 1..``max_top_k``."""
    if raw is None:
        return min(DEFAULT_TOP_K, max_top_k)
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"top_k must be an integer, got {raw[:40]!r}") from None
    if not 1 <= value <= max_top_k:
        raise InvalidInput(
            f"top_k must be between 1 and {max_top_k} (IMGCLS_MAX_TOP_K), got {value}"
        )
    return value
