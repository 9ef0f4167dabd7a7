"""summarize.py OUTDIR -> markdown on stdout: settings, answer checks, the goals (issue 21's: the
project's defaults over the best of Triton and MLServer; issue 23's: 1.0x Triton's req/s at
most 1.2x its CPU per request, p99 within 4x p50 at c=64; per body and concurrency, run by run), one
table per body x concurrency (runs side by side, ratio to the project's defaults row), startup
times, raw rows."""

import csv
import os
import sys
from collections import defaultdict
from pathlib import Path


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


d = sys.argv[1]
rows = read_tsv(f"{d}/results.tsv")
for r in rows:  # older smoke runs named these columns busy_before / busy_during
    r.setdefault("foreign_pct_before", r.get("busy_before", ""))
    r.setdefault("busy_pct_during", r.get("busy_during", ""))
checks = read_tsv(f"{d}/checks.tsv")
starts = read_tsv(f"{d}/startup.tsv")
ORDER = ["imgcls", "imgcls_w1", "imgcls_sm", "imgcls_int8", "triton", "mlserver", "kserve"]
NAMES = {
    "imgcls": "imgcls (ours, IMGCLS_WORKERS unset = auto)",
    "imgcls_w1": "imgcls (ours, IMGCLS_WORKERS=1)",
    "imgcls_sm": "imgcls (ours, IMGCLS_RUNTIME=savedmodel)",
    "imgcls_int8": "imgcls (ours, IMGCLS_RUNTIME=openvino-int8)",
    "triton": "Triton 2.51.0 python backend + TF (dynamic batching)",
    "mlserver": "MLServer 1.7.1 custom runtime (adaptive batching)",
    "kserve": "KServe 0.21 ModelServer custom Model (no batcher)",
}
BODY = {
    "json": "V2 HTTP JSON, UINT8 [1,28,28,3]",
    "bin": "V2 HTTP binary tensor extension, UINT8 [1,28,28,3]",
    "grpc": "V2 gRPC ModelInfer (h2load, one stream per connection), UINT8 [1,28,28,3] raw",
}
#: the peers the goal is measured against
PEERS = ("triton", "mlserver")
GOAL = 1.5
ok = [r for r in rows if r["req_s"] not in ("", "-")]
by = defaultdict(dict)  # (server, body, conc) -> run -> row
for r in ok:
    by[(r["server"], r["body"], r["conc"])][r["run"]] = r
runs = sorted({r["run"] for r in ok}, key=int)
concs = sorted({r["conc"] for r in ok}, key=int)
bodies = [b for b in BODY if any(k[1] == b for k in by)]
known = [s for s in ORDER if any(k[0] == s for k in by)]
servers = known + sorted({k[0] for k in by} - set(ORDER))

print(f"# Open Inference Protocol V2 infer: side by side ({os.path.basename(d)})\n")
print("```")
print(Path(f"{d}/settings.txt").read_text().rstrip())
print("```\n")
print(
    "Each row: one server on loopback, the load generator (wrk -t1 for HTTP, h2load -t1 -m1 for "
    "gRPC) on the same machine, the same digit image; `CPU ms/req` = CPU time of the server's "
    "whole process tree during the run (/proc/PID/stat utime+stime+cutime+cstime) / requests "
    "answered; `mean batch` = images per model call during the run (imgcls: imgcls_batch_size; "
    "Triton: inference_count / execution_count; MLServer: counted in the runtime; KServe: none); "
    "`foreign %` = CPU % (of all cores) used by processes other than the server in the second "
    "before the run (the run waits up to ~60 s for it to drop to QUIET_PCT), `machine %` = all "
    "CPU use during the run (server + load generator + anything else). `÷ imgcls` = req/s over "
    "the imgcls defaults row of the same run, body and concurrency. gRPC: req/s counts OK "
    "answers only (h2load's 2xx whose DATA bytes hold a whole OK answer: a gRPC error is "
    "trailers-only); `not OK` = answered but not an OK gRPC answer.\n"
)

print("""## Servers and their settings

| server | how it serves the SavedModel | batching | other settings |
|---|---|---|---|
| imgcls | `python -m service --models-dir models --port 8810` from the checkout, \
`IMGCLS_GRPC_PORT=8819` (gRPC in the same processes, every worker) | its own: max_batch_size \
32, batch_timeout_s 0, batch_fill_wait_ratio 0.1 (defaults) | workers auto (a probe decides; 2 on \
2 cores for digits) or IMGCLS_WORKERS=1; no access log |
| triton | tritonserver 2.51.0 (nvidia-pytriton 0.7.0's binary, CPU only), python backend \
`model.py`: tf.saved_model.load + serve() | dynamic_batching, max_batch_size 32, \
max_queue_delay_microseconds TRITON_QUEUE_DELAY_US (default 0 = Triton's default) | 1 instance \
KIND_CPU; input images TYPE_UINT8 [-1,-1,3]; HTTP 8811, gRPC 8812, metrics 8813 on 127.0.0.1; \
the bundled binary has no tensorflow backend |
| mlserver | MLServer 1.7.1, custom MLModel runtime: tf.saved_model.load + serve() | adaptive \
batching: max_batch_size 32, max_batch_time MLS_MAX_BATCH_TIME (default 0.002 s) | \
parallel_workers 1 (default: model in one worker process), debug false (no access log); HTTP \
8814, gRPC 8815, metrics 8816; no binary tensor extension (GET /v2 lists no extensions) |
| kserve | KServe 0.21.0 python ModelServer, custom Model: tf.saved_model.load + serve() | none \
in-process (KServe batches with its agent sidecar on Kubernetes) | 1 uvicorn worker (default); \
host patched to 127.0.0.1, gRPC off (it binds [::]); latency/trace/access logs off |
""")
print(
    "## Answers (one infer per server and body before measuring and one after; same top class "
    "as the SavedModel?)\n"
)
print("| run | server | body | verdict |\n|---|---|---|---|")
for c in checks:
    print(f"| {c['run']} | {c['server']} | {c['body']} | {c['verdict']} |")


def field(server, body, conc, run, key):
    r = by.get((server, body, conc), {}).get(run)
    return float(r[key]) if r and r[key] not in ("", "-") else None


def rate(server, body, conc, run):
    return field(server, body, conc, run, "req_s")


def goal_rows(point_cell):
    """One row per body and concurrency: each run's cell and whether it met the goal;
    ``point_cell(body, conc, run)`` -> (text, met), or None when a figure is missing."""
    for body in bodies:
        for conc in concs:
            cells, met = [], []
            for run in runs:
                found = point_cell(body, conc, run)
                cells.append(found[0] if found else "-")
                met += [found[1]] if found else []
            verdict = "-" if not met else ("yes" if all(met) else f"{sum(met)}/{len(met)}")
            print(f"| {body} | {conc} | " + " | ".join(cells) + f" | {verdict} |")


def over_best_peer(body, conc, run):
    ours = rate("imgcls", body, conc, run)
    peers = [(v, p) for p in PEERS if (v := rate(p, body, conc, run))]
    if not ours or not peers:
        return None
    best, who = max(peers)
    return f"{ours / best:.2f} ({ours:.0f} ÷ {who} {best:.0f})", ours / best >= GOAL


def against_triton(body, conc, run):
    point = (body, conc, run)
    ours, theirs = field("imgcls", *point, "req_s"), field("triton", *point, "req_s")
    cpu, their_cpu = (
        field("imgcls", *point, "cpu_ms_per_req"),
        field("triton", *point, "cpu_ms_per_req"),
    )
    p50, p99 = field("imgcls", *point, "p50_ms"), field("imgcls", *point, "p99_ms")
    if not (ours and theirs and cpu and their_cpu):
        return None
    tail = p99 / p50 if p50 and p99 else None
    tail_ok = tail is None or conc != "64" or tail <= 4
    text = f"{ours / theirs:.2f}, {cpu / their_cpu:.2f}, " + (f"{tail:.1f}" if tail else "-")
    return text, ours / theirs >= 1.0 and cpu / their_cpu <= 1.2 and tail_ok


if "imgcls" in known and any(p in known for p in PEERS):
    print(
        f"\n## Goal of issue 21: imgcls (defaults) >= {GOAL}x the best of Triton and MLServer\n\n"
        "Per run: imgcls req/s ÷ the best peer's req/s on the same body and concurrency (the "
        "peer in brackets; a peer that could not answer a body is not counted).\n"
    )
    print("| body | c | " + " | ".join(f"run {x}" for x in runs) + " | met |")
    print("|---|---|" + "---|" * len(runs) + "---|")
    goal_rows(over_best_peer)

if "imgcls" in known and "triton" in known:
    print(
        "\n## Goal of issue 23: imgcls (defaults) >= 1.0x Triton's req/s with server CPU per "
        "request <= 1.2x Triton's; p99 <= 4x p50 at c=64\n\n"
        "Per run: req/s ÷ Triton's, CPU ms/req ÷ Triton's, and the service's p99 ÷ p50, same "
        "body and concurrency.\n"
    )
    print("| body | c | " + " | ".join(f"run {x}: req/s, CPU, p99÷p50" for x in runs) + " | met |")
    print("|---|---|" + "---|" * len(runs) + "---|")
    goal_rows(against_triton)


def cell(run, key, f):
    r = by[key].get(run)
    return f(r) if r else "-"


def joined(key, f):
    return " / ".join(cell(x, key, f) for x in runs)


def ratio(key, ref, run):
    a, b = by[key].get(run), by.get(ref, {}).get(run)
    return f"{float(a['req_s']) / float(b['req_s']):.2f}" if a and b else "-"


for body in bodies:
    for conc in concs:
        print(f"\n## {BODY.get(body, body)}, {conc} connections\n")
        rr = "/".join(f"r{x}" for x in runs)
        errs = "not OK, conn err" if body == "grpc" else "non-2xx, sock err"
        hdr = ["server", f"req/s ({rr})", f"p50 ms ({rr})", f"p99 ms ({rr})", f"÷ imgcls ({rr})"]
        hdr += [f"CPU ms/req ({rr})", f"mean batch ({rr})", errs]
        hdr += [f"foreign % before / machine % during ({rr})"]
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        ref = ("imgcls", body, conc)
        for s in servers:
            k = (s, body, conc)
            if k not in by:
                continue
            cells = [NAMES.get(s, s)]
            cells.append(joined(k, lambda r: r["req_s"]))
            cells.append(joined(k, lambda r: r["p50_ms"]))
            cells.append(joined(k, lambda r: r["p99_ms"]))
            cells.append(" / ".join(ratio(k, ref, x) for x in runs))
            cells.append(joined(k, lambda r: r["cpu_ms_per_req"]))
            cells.append(joined(k, lambda r: r["mean_batch"]))
            cells.append(joined(k, lambda r: f"{r['non2xx']}, {r['sock_err']}"))
            cells.append(joined(k, lambda r: f"{r['foreign_pct_before']}/{r['busy_pct_during']}"))
            print("| " + " | ".join(cells) + " |")

print(
    "\n## Startup (launch to ready, s; processes in the tree at ready; imgcls auto: workers "
    "chosen)\n"
)
print("| server | " + " | ".join(f"run {x}" for x in runs) + " |\n|---|" + "---|" * len(runs))
st = defaultdict(dict)
for r in starts:
    extra = [v for v in (r.get("procs"), r.get("note")) if v and v != "-"]
    st[r["server"]][r["run"]] = r["startup_s"] + (f" ({', '.join(extra)})" if extra else "")
for s in servers:
    print(f"| {s} | " + " | ".join(st[s].get(x, "-") for x in runs) + " |")

print("\n## Raw rows\n")
cols = ["run", "server", "body", "conc", "req_s", "p50_ms", "p99_ms", "requests", "non2xx"]
cols += ["sock_err", "cpu_ms_per_req", "mean_batch", "procs", "foreign_pct_before"]
cols += ["busy_pct_during", "wrk_cpu_s", "server_idle_pct"]
print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(r.get(c, "") or "" for c in cols) + " |")
