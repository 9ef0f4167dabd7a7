"""Wire formats of the protocols the service speaks besides its own: TensorFlow Serving's REST
API (``/v1``) and the Open Inference Protocol V2 (``/v2``, KServe and Triton).

Each module here only parses requests into images and formats answers: transport-free, so that a
gRPC front end can reuse them (the seam: build the same :class:`ImagesInput` from a
``PredictRequest`` / ``ModelInferRequest`` and call the same pipeline). Routes in
``service/routes/`` do the HTTP part.
"""

from __future__ import annotations
