"""The steps every inference route shares, whatever its protocol: choose the model version,
decode, queue on that model's batcher (dropped if the client hangs up), count the predictions.

Routes parse and answer their protocol; this module is the one path between them and the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from starlette.requests import Request

from service.http.disconnect import unless_disconnected
from service.http.middleware import SCOPE_MODEL_KEY
from service.protocols.tensors import ImagesInput
from service.serving.decode_step import Upload, decode_all
from service.serving.errors import InvalidInput, PayloadTooLarge, ShuttingDown
from service.serving.inference import Prediction, classify
from service.serving.model_store import LoadedModel
from service.serving.repository import ServedModel
from service.state import ServiceState

#: Predictions per image when the request names no ``top_k``.
DEFAULT_TOP_K = 5


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


def record_model(request: Request, model: LoadedModel) -> None:
    """Label this request's metrics with the version that serves it."""
    request.scope[SCOPE_MODEL_KEY] = (model.name, str(model.version))


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
    request: Request,
    state: ServiceState,
    served: ServedModel,
    model: LoadedModel,
    images: Sequence[np.ndarray],
) -> list[Prediction]:
    """Run ``images`` (one request's) on ``model`` through ``served``'s batcher; a client that
    disconnects while queued frees its queue slots instead of being computed."""
    record_model(request, model)
    if len(images) > served.limits.max_queue_size:
        raise PayloadTooLarge(
            f"{len(images)} images can never fit the queue of {model.name!r} "
            f"({served.limits.max_queue_size} images): send fewer per request, or raise "
            "IMGCLS_MAX_QUEUE_SIZE (or the model's limits.max_queue_size in serving.yaml)"
        )
    predictions = await unless_disconnected(
        request.receive,
        classify(
            served.batcher,
            model,
            images,
            timeout_s=served.limits.request_timeout_s,
        ),
        scope=request.scope,
    )
    top = [int(np.argmax(p.probabilities)) for p in predictions]
    state.metrics.observe_predictions(
        model.name,
        str(model.version),
        [model.metadata.class_names[i] for i in top],
        [float(p.probabilities[i]) for p, i in zip(predictions, top, strict=True)],
    )
    return predictions


async def tensor_images(
    state: ServiceState, images: ImagesInput, model: LoadedModel
) -> list[np.ndarray]:
    """A tensor protocol's images -> model inputs: encoded ones decoded as ``/predict`` does,
    pixel arrays as they are (the model resizes and converts them itself)."""
    if images.encoded is not None:
        return await decode_uploads(state, images.encoded, model)
    return images.pixels or []


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
