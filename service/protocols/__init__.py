"""Wire formats of the protocols the service speaks besides its own: TensorFlow Serving's REST
API (``/v1``) and the Open Inference Protocol V2 (``/v2``, KServe and Triton).

Each module here only parses requests into images and formats answers: transport-free, so that a
gRPC front end can reuse them (the seam: build the same :class:`ImagesInput` from a
``PredictRequest`` / ``ModelInferRequest`` and call the same pipeline). Routes in
``service/routes/`` do the HTTP part.
"""

from __future__ import annotations

from typing import Any

#: Path prefixes whose errors are ``{"error": "..."}`` (their protocols' shape), not ``detail``.
PROTOCOL_PREFIXES = ("/v1/", "/v2")


def error_body(path: str, message: str) -> dict[str, Any]:
    """The JSON error body a client of the route at ``path`` expects."""
    if path.startswith(PROTOCOL_PREFIXES):
        return {"error": message}
    return {"detail": message}
