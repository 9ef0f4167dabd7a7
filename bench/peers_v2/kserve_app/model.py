"""KServe 0.21 python ModelServer serving the project's digits SavedModel over the V2 REST protocol
(tf.saved_model.load + its serve() endpoint, as the project's service calls it).

KServe's ModelServer has no in-process batcher (KServe batches with its agent sidecar on
Kubernetes), so every request is one model call. For the benchmark, loopback only and no
per-request logging: KServe hard-codes host 0.0.0.0 for uvicorn (patched to 127.0.0.1 here) and
[::] for gRPC (gRPC off: --enable_grpc false); per-request latency/trace/access logs are off (the
project logs none either).

usage: python model.py --http_port 8817 --model_name digits --model_dir MODEL_VERSION_DIR
"""

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kserve.protocol.rest.server as kserve_rest
import numpy as np
import tensorflow as tf
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid


class _LoopbackConfig(uvicorn.Config):
    def __init__(self, *args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


kserve_rest.uvicorn.Config = _LoopbackConfig  # the module's own reference to uvicorn


class Digits(Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.module = tf.saved_model.load(self.model_dir)
        self.serve = self.module.serve
        self.serve(tf.zeros((1, 28, 28, 3), tf.float32))  # first call outside the timed path
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        probs = np.asarray(self.serve(tf.convert_to_tensor(x, dtype=tf.float32)), dtype=np.float32)
        out = InferOutput(name="probabilities", shape=list(probs.shape), datatype="FP32")
        out.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(
            response_id=payload.id or generate_uuid(),
            model_name=self.name,
            model_version="1",
            infer_outputs=[out],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


parser = argparse.ArgumentParser(parents=[model_server.parser])
parser.add_argument("--model_dir", required=True)
args, _ = parser.parse_known_args()

if __name__ == "__main__":
    model = Digits(args.model_name, args.model_dir)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
