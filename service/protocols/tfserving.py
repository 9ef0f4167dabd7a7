"""TensorFlow Serving's REST API (``/v1/models/...``), as its documentation gives it.

* ``:predict`` takes ``{"instances": [...]}`` (row format) or ``{"inputs": ...}`` (columnar); an
  instance is an (H, W, 3) nested list of pixel values 0..255, or ``{"b64": "<base64 of an
  encoded image>"}``, optionally wrapped in the input's name (``{"images": ...}``). It answers
  ``{"predictions": [[p_0, ..., p_C-1], ...]}`` (``{"outputs": ...}`` for columnar requests).
* Model status lists versions with TF Serving's states; metadata describes the
  ``serving_default`` signature (input and output dtypes and shapes).
* Errors are ``{"error": "..."}`` (see ``service.http.errors.error_body``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.names import SERVE_INPUT_NAME, SERVE_OUTPUT_NAME
from service.protocols.tensors import (
    ImagesInput,
    b64_image,
    bad_input,
    check_count,
    pixel_batch,
)
from service.serving.decode_step import Upload
from service.serving.model_store import LoadedModel, VersionStatus

SIGNATURE_NAMES = ("serving_default", "serve")
PREDICT_METHOD = "tensorflow/serving/predict"
#: Our version states -> TF Serving's ``ModelVersionStatus.State``.
STATES = {"serving": "AVAILABLE", "loading": "LOADING", "failed": "END", "available": "END"}


def parse_predict(body: object, *, max_images: int, max_pixels: int) -> tuple[ImagesInput, bool]:
    """A ``:predict`` request body -> its images and whether it was columnar (``inputs``)."""
    if not isinstance(body, dict):
        raise bad_input('the body must be a JSON object with "instances" or "inputs"')
    signature = body.get("signature_name")
    if signature not in (None, "", *SIGNATURE_NAMES):
        raise bad_input(
            f"unknown signature_name {str(signature)[:60]!r}; this model has {SIGNATURE_NAMES[0]!r}"
        )
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise bad_input('send exactly one of "instances" (row format) or "inputs" (columnar)')
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise bad_input('"instances" must be a list with one entry per image')
        return _images(
            [_unwrap(row, "instances") for row in rows], "instances", max_images, max_pixels
        ), False
    columns = _unwrap(body["inputs"], "inputs")
    if isinstance(columns, dict) and "b64" in columns:
        columns = [columns]
    if not isinstance(columns, list):
        raise bad_input('"inputs" must be a list of images (pixels or {"b64": ...} objects)')
    return _images(columns, "inputs", max_images, max_pixels), True


def _unwrap(value: object, where: str) -> object:
    """``{"images": x}`` (the input named) -> ``x``; a ``{"b64": ...}`` stays as it is."""
    if isinstance(value, dict) and "b64" not in value:
        if set(value) != {SERVE_INPUT_NAME}:
            names = ", ".join(sorted(str(k)[:40] for k in value)[:5])
            raise bad_input(
                f"{where}: unknown input name(s) {names}; the model's one input is "
                f"{SERVE_INPUT_NAME!r}"
            )
        return value[SERVE_INPUT_NAME]
    return value


def _images(rows: list[object], where: str, max_images: int, max_pixels: int) -> ImagesInput:
    check_count(len(rows), max_images)
    encoded = [isinstance(row, dict) for row in rows]
    if all(encoded):
        uploads = []
        for index, row in enumerate(rows):
            assert isinstance(row, dict)
            if set(row) != {"b64"}:
                raise bad_input(f'{where}[{index}]: an encoded image is {{"b64": "<base64>"}}')
            data = b64_image(row["b64"], what=f"{where}[{index}]")
            uploads.append(Upload(f"{where}-{index}", data))
        return ImagesInput(encoded=uploads)
    if any(encoded):
        raise bad_input(f"{where}: mix of b64 images and pixel arrays; send one kind per request")
    return ImagesInput(
        pixels=pixel_batch(rows, what=where, max_images=max_images, max_pixels=max_pixels)
    )


def predict_answer(probabilities: Sequence[np.ndarray], columnar: bool) -> dict[str, Any]:
    rows = [p.astype(np.float32).tolist() for p in probabilities]
    return {"outputs": rows} if columnar else {"predictions": rows}


def version_status(rows: Sequence[VersionStatus]) -> dict[str, Any]:
    """``GET /v1/models/{name}[/versions/{v}]``: versions this service manages, newest first."""
    return {
        "model_version_status": [
            {
                "version": str(row.version),
                "state": STATES.get(row.state, "END"),
                "status": {
                    "error_code": "UNKNOWN" if row.state == "failed" else "OK",
                    "error_message": (row.reason or "") if row.state == "failed" else "",
                },
            }
            for row in rows
            if row.state != "available"  # on disk but outside the version policy: unmanaged
        ]
    }


def _tensor_info(name: str, dims: Sequence[int]) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims],
            "unknown_rank": False,
        },
        "name": f"serving_default_{name}:0",
    }


def metadata(model: LoadedModel) -> dict[str, Any]:
    """``GET .../metadata``: the ``serving_default`` signature with dtypes and shapes."""
    signature = {
        "inputs": {SERVE_INPUT_NAME: _tensor_info(SERVE_INPUT_NAME, (-1, -1, -1, 3))},
        "outputs": {
            SERVE_OUTPUT_NAME: _tensor_info(SERVE_OUTPUT_NAME, (-1, model.metadata.num_classes))
        },
        "method_name": PREDICT_METHOD,
    }
    return {
        "model_spec": {
            "name": model.name,
            "signature_name": "",
            "version": str(model.version),
        },
        "metadata": {
            "signature_def": {
                "signature_def": {name: signature for name in SIGNATURE_NAMES},
            },
            # Not in TF Serving: what computes the version (savedmodel or a compiled artifact).
            "runtime": model.runtime.name,
        },
    }
