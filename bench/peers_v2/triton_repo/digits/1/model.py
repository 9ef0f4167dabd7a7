"""Triton python-backend model: the project's digits SavedModel, batched by Triton's dynamic
batcher.

The stub embeds Debian's libpython3.11 and ignores PYTHONPATH, so the Triton venv's site-packages
(TensorFlow 2.21.0, numpy 1.26.4) go first on sys.path from PEER_SITE_PACKAGES.
"""

import json
import os
import sys

sys.path.insert(0, os.environ["PEER_SITE_PACKAGES"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        path = cfg["parameters"]["SAVEDMODEL_DIR"]["string_value"]
        self.module = tf.saved_model.load(path)
        self.serve = self.module.serve
        self.serve(tf.zeros((1, 28, 28, 3), tf.float32))  # first call outside the timed path
        self.batches = 0
        self.items = 0

    def execute(self, requests):
        arrs = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrs]
        if len({a.shape[1:] for a in arrs}) == 1:
            x = arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
            probs = np.asarray(self.serve(tf.convert_to_tensor(x, dtype=tf.float32)))
            parts = np.split(probs, np.cumsum(sizes)[:-1])
        else:  # images of different sizes cannot share one tensor: one call each
            parts = [
                np.asarray(self.serve(tf.convert_to_tensor(a, dtype=tf.float32))) for a in arrs
            ]
        self.batches += 1
        self.items += sum(sizes)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("probabilities", p.astype(np.float32))]
            )
            for p in parts
        ]

    def finalize(self):
        pass
