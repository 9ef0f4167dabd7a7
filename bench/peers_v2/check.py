"""check.py URL BODY_FILE CONTENT_TYPE HLEN EXPECTED_CLASS -> one V2 REST infer, a one-line verdict.

HLEN: the Inference-Header-Content-Length to send ("" for a JSON body). Reads the answer as JSON or
as the binary tensor extension (Inference-Header-Content-Length on the answer) and compares the top
class of "probabilities" with EXPECTED_CLASS. Exit 0: same top class; 1: wrong class; 2: HTTP or
parse error. (gRPC: python -m bench.grpc_load check.)
"""

import http.client
import json
import sys
import urllib.parse

import numpy as np

url, body_file, ctype, hlen, expected = sys.argv[1:6]
u = urllib.parse.urlsplit(url)
with open(body_file, "rb") as f:
    body = f.read()
headers = {"Content-Type": ctype}
if hlen:
    headers["Inference-Header-Content-Length"] = hlen
try:
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", u.path, body=body, headers=headers)
    r = conn.getresponse()
    raw = r.read()
    if r.status != 200:
        print(f"HTTP {r.status}: {raw[:300]!r}")
        sys.exit(2)
    cut = r.getheader("Inference-Header-Content-Length")
    head = json.loads(raw[: int(cut)] if cut else raw)
    out = next(o for o in head["outputs"] if o["name"] == "probabilities")
    if "data" in out:
        probs = np.asarray(out["data"], dtype=np.float32)
        how = "JSON"
    else:
        size = out["parameters"]["binary_data_size"]
        probs = np.frombuffer(raw[int(cut) : int(cut) + size], dtype="<f4")
        how = "binary"
    probs = probs.reshape(out["shape"])
except Exception as e:
    print(f"error: {type(e).__name__}: {e}")
    sys.exit(2)
top = int(probs[0].argmax())
print(f"top class {top} (p={probs[0][top]:.4f}), {how} answer, {len(raw)} B")
sys.exit(0 if top == int(expected) else 1)
