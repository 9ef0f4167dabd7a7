"""MLServer custom runtime: the project's digits SavedModel (tf.saved_model.load + its serve()
endpoint, exactly as the project's service calls it). Adaptive batching (max_batch_size,
max_batch_time in model-settings.json) merges requests along the first dimension before predict().

Batch statistics for the benchmark: when MLS_STATS names a file, a daemon thread rewrites
"items batches" (cumulative) there every 0.25 s while they change (nothing on the request path).
"""

import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class SavedModelRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        self._module = tf.saved_model.load(uri)
        self._serve = self._module.serve
        self._serve(tf.zeros((1, 28, 28, 3), tf.float32))  # first call outside the timed path
        self._items = self._batches = 0
        if os.environ.get("MLS_STATS"):
            threading.Thread(
                target=self._write_stats, args=(os.environ["MLS_STATS"],), daemon=True
            ).start()
        return True

    def _write_stats(self, path: str) -> None:
        last = None
        while True:
            now = (self._items, self._batches)
            if now != last:
                with open(path, "w") as f:
                    f.write(f"{now[0]} {now[1]}\n")
                last = now
            time.sleep(0.25)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inp = payload.inputs[0]
        x = NumpyCodec.decode_input(inp)
        probs = np.asarray(self._serve(tf.convert_to_tensor(x, dtype=tf.float32)))
        self._items += probs.shape[0]
        self._batches += 1
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("probabilities", probs)],
        )
