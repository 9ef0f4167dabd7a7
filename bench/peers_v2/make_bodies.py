"""Writes the benchmark's request bodies, all for the same digit image: the HTTP ones with
tritonclient's own helper (InferenceServerClient.generate_request_body), the gRPC one with the
project's body builder (bench.grpc_load.infer_body: tritonclient's service_pb2 messages).

  bodies/digit.png         the image (sklearn digits, 28x28, via training.data.digit_images)
  bodies/json_uint8.json   V2 JSON: input "images" UINT8 [1,28,28,3], output "probabilities" as
                           JSON
  bodies/bin_uint8.bin     V2 binary tensor extension: same input as raw bytes
                           (binary_data_size), output requested as binary; bin_uint8.hdrlen = the
                           JSON header length (the value of Inference-Header-Content-Length)
  bodies/grpc_uint8.bin    V2 gRPC: a ModelInferRequest with the same input in
                           raw_input_contents, framed as on the wire (flag 0, 4-byte big-endian
                           length, message): what h2load posts to
                           /inference.GRPCInferenceService/ModelInfer
  bodies/expected.json     {"class": int, "label": str, "probabilities": [...]} from the
                           SavedModel's serve() called here, as the project's service calls it
usage: PROJ=CHECKOUT python make_bodies.py MODEL_VERSION_DIR OUT_DIR [DIGIT]
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

# the checkout's bench/ (this folder's grandparent unless PROJ says otherwise)
sys.path.insert(0, os.environ.get("PROJ") or str(Path(__file__).resolve().parents[2]))
from bench.grpc_load import infer_body
from training.data import digit_images

model_dir, out = sys.argv[1], Path(sys.argv[2])
digit = int(sys.argv[3]) if len(sys.argv) > 3 else 7
out.mkdir(parents=True, exist_ok=True)

gray, labels = digit_images()
img = gray[labels == digit][0]  # (28, 28) uint8
Image.fromarray(img).save(out / "digit.png")
# the V2 "images" input of every server here: (N, H, W, 3) RGB pixels 0..255 (the SavedModel's
# serve() signature is float32 (None, None, None, 3); grey -> network conversion is in the graph)
x = np.repeat(img[None, :, :, None], 3, axis=-1).astype(np.uint8)  # (1, 28, 28, 3)


def body(binary):
    inp = httpclient.InferInput("images", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=binary)
    outp = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    return httpclient.InferenceServerClient.generate_request_body([inp], outputs=[outp])


b, hlen = body(False)
assert hlen is None
(out / "json_uint8.json").write_bytes(b if isinstance(b, bytes) else b.encode())
b, hlen = body(True)
(out / "bin_uint8.bin").write_bytes(b)
(out / "bin_uint8.hdrlen").write_text(str(hlen))
(out / "grpc_uint8.bin").write_bytes(infer_body(x, "digits"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

m = tf.saved_model.load(model_dir)
p = np.asarray(m.serve(tf.convert_to_tensor(x, dtype=tf.float32)))[0]
meta = json.loads(Path(model_dir, "metadata.json").read_text())
c = int(p.argmax())
expected = {
    "digit": digit,
    "class": c,
    "label": meta["class_names"][c],
    "probabilities": [float(v) for v in p],
}
(out / "expected.json").write_text(json.dumps(expected))
print(
    f"digit {digit}: expected class {c} (label {meta['class_names'][c]}, p={p[c]:.4f}); "
    f"json body {(out / 'json_uint8.json').stat().st_size} B, binary body "
    f"{(out / 'bin_uint8.bin').stat().st_size} B (header {hlen} B), gRPC body "
    f"{(out / 'grpc_uint8.bin').stat().st_size} B"
)
