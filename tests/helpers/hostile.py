"""The limits of the one live service the hostile-input tests share (tests/hostile/conftest.py).

Short header and body timeouts keep the slow-client tests quick; a 1 MiB body limit keeps the
oversize tests cheap; every other setting is the default a deployment gets.
"""

from __future__ import annotations

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_IMAGES = 8  # per native /predict request, and per V2 or TF Serving request

#: ``start_server`` settings of that service.
HOSTILE_SETTINGS = {
    "header_timeout_s": str(HEADER_TIMEOUT_S),
    "body_timeout_s": str(BODY_TIMEOUT_S),
    "keep_alive_timeout_s": "2",
    "max_header_bytes": str(MAX_HEADER_BYTES),
    "max_connections": str(MAX_CONNECTIONS),
    "max_upload_bytes": str(MAX_UPLOAD_BYTES),
    "max_images_per_request": str(MAX_IMAGES),
    "max_tensor_images": str(MAX_IMAGES),
    "decode_threads": "1",
}
