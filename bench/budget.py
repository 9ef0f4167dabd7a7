"""Per-request CPU budget of ``python -m service`` under load: where each request's CPU goes.

``python -m bench.budget`` starts the service (the digits model), loads it with one workload at
a time (``--concurrency`` connections, ``--duration`` seconds) and meanwhile

* reads every thread's CPU time from ``/proc/<pid>/task/*/stat`` before and after, in every
  process of the service (the supervisor and its workers when there are several), and
* samples the Python stacks with `py-spy <https://github.com/benfred/py-spy>`_ (``record --threads
  --nonblocking --format raw``, with ``--subprocesses`` when there are workers; idle threads are
  not sampled, so a thread's samples are where its CPU went).

The workloads (``--workload``, several or ``all``), the same digit each time:

* ``predict``: ``POST /predict``, one 28x28 PNG as multipart (wrk);
* ``v2-json``: ``POST /v2/models/digits/infer``, ``images`` UINT8 [1, 28, 28, 3] as a JSON list
  (wrk);
* ``v2-binary``: the same route with the binary tensor extension (wrk);
* ``grpc``: ``inference.GRPCInferenceService/ModelInfer`` with ``raw_input_contents`` (h2load).

The V2 bodies are :mod:`bench.grpc`'s (tritonclient's own helpers), and every transport must
answer the same probabilities before the load.

Each event-loop thread's CPU (one per worker) is split by its samples into the rows of
:data:`RULES` (each sample is given to the first rule that matches, walking from the innermost
frame outwards; a sample no rule matches is the event loop itself: uvloop's I/O, asyncio's
scheduling, and what runs in C under no Python frame of its own, such as grpcio's Cython). CPU
off the loops is split by thread (:func:`thread_row`): the decode pool, gRPC's own threads
(the completion-queue poller and gRPC's C-core), the model call (the batcher's thread and
TensorFlow's own thread pools, which py-spy cannot see), other Python threads, and the other
processes (the supervisor). Every row is in microseconds of CPU per answered request, all
workers together.

``--workers``: ``1`` (one process; the default, as before), a number, or ``default`` (the
service's own default, ``auto``: two workers on two cores). ``--root DIR`` runs the service from
another checkout (e.g. ``git archive HEAD | tar -x -C DIR`` for a "before" budget), with this
checkout's Python. Needs ``py-spy`` (``pip install py-spy``) and permission to trace the server
(root, or ``ptrace_scope`` 0), wrk, and for ``grpc`` h2load.

    python -m bench.budget --workload all --duration 10 --workers default --label defaults
"""

from __future__ import annotations

import argparse
import json
import linecache
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench import grpc as v2_bench
from bench import grpc_load, loadgen
from bench.digits import digit_png, digit_tensor
from bench.grpc import Transport
from bench.models import DIGITS, ensure_digits
from bench.report import budget_comparison, budget_table
from bench.servers import (
    _CLOCK_TICKS,
    ROOT,
    ServerProcess,
    _children,
    free_port,
    spawn,
    wait_ready,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "budget"

#: ``--workload`` choices: name -> what one request is.
WORKLOADS = {
    "predict": "/predict, one PNG (multipart)",
    "v2-json": "V2 infer, JSON tensor",
    "v2-binary": "V2 infer, binary tensor extension",
    "grpc": "V2 gRPC ModelInfer",
}
#: The transports of :func:`bench.grpc.transports` by workload.
_TRANSPORTS = {"v2-json": "v2_json", "v2-binary": "v2_binary", "grpc": "grpc"}


class PySpyError(RuntimeError):
    """py-spy could not sample the server (e.g. no permission to trace it)."""


class Frame(NamedTuple):
    """One frame of a py-spy sample: the function, its file and the line it was running."""

    function: str
    filename: str
    line: int = 0


@dataclass(frozen=True)
class Rule:
    """A budget row: a sample belongs to it when a frame's file path contains ``path`` (and,
    if given, the frame's function is one of ``functions``, and the source line it was running
    contains ``code``: e.g. a C call such as protobuf's ``FromString``, which has no Python
    frame of its own)."""

    row: str
    path: str
    functions: frozenset[str] = frozenset()
    code: str = ""

    def matches(self, function: str, filename: str, line: int = 0) -> bool:
        if self.path not in filename:
            return False
        if self.functions:
            outer = function.split(".<locals>", 1)[0]  # top_k.<locals>.<listcomp> is top_k's
            if outer not in self.functions and outer.rsplit(".", 1)[-1] not in self.functions:
                return False
        return not self.code or self.code in linecache.getline(filename, line)


def _rules(row: str, *paths: str, functions: tuple[str, ...] = (), code: str = "") -> list[Rule]:
    return [Rule(row, path, frozenset(functions), code) for path in paths]


METRICS = "metrics (prometheus_client)"
ANSWER = "answer: top-k or infer_answer, JSON encoding (json.dumps, JSONResponse), gRPC response"
#: The answer row's name before it covered the V2 and gRPC answers ("top-k and JSON").
JSON = ANSWER
JSON_PARSE = "JSON parsing (json.loads, parse_json)"
TENSOR = "V2 tensor parse (protocols/v2.py, tensors.py: checks, pixel_batch)"
TENSOR_LIST = "V2 tensor: values to a float32 array (pixel_batch's np.asarray; JSON: of a list)"
GRPC_PARSE = "gRPC message parse (FromString, grpc_v2.parse_infer)"
GRPC_CALL = "gRPC servicer and call wrapper (grpc/calls.py, inference_v2.py, grpcio's Python)"
DECODE = "decode and resize"
QUEUE = "data plane, batcher submit and futures (dataplane.py, batching.py, inference.py)"
FEEDBACK = "drift windows and capture (service/feedback/)"
DISCONNECT = "disconnect watch"
BODY = "body and multipart"
GUARD = "protocol guard"
HTTP = "HTTP parsing and writing (uvicorn's httptools protocol)"
MIDDLEWARE = "middleware"
FRAMEWORK = "FastAPI/Starlette routing, dependencies, exception handling; the route"
MODEL_ON_LOOP = "model call (on the loop)"
LOOP = "event loop (uvloop I/O, asyncio scheduling; grpcio's Cython and C calls on the loop)"

DECODE_POOL = "decode pool threads"
GRPC_THREADS = "gRPC's own threads (completion-queue poller, C-core event engine)"
MODEL = "model call (batcher thread + TensorFlow's thread pools), batched"
OTHER_THREADS = "other Python threads (capture writer, feedback, thread pools)"
OTHER_PROCESSES = "supervisor and other processes"

#: A sample with one of these frames anywhere is theirs: the disconnect watcher task of the old
#: ``unless_disconnected`` (its ``receive()`` would otherwise count as uvicorn's).
STACK_RULES: list[Rule] = [
    *_rules(DISCONNECT, "service/http/disconnect.py", functions=("_wait_for_disconnect",)),
    *_rules(DISCONNECT, "service/http/disconnect.py", functions=("_race_watcher_task",)),
]

#: In priority order: at each frame (innermost first) the first matching rule wins.
RULES: list[Rule] = [
    *_rules(METRICS, "prometheus_client/", "service/metrics.py"),
    *_rules(JSON_PARSE, "/json/", functions=("loads", "decode", "raw_decode")),
    *_rules(JSON_PARSE, "service/protocols/body.py", functions=("parse_json",)),
    *_rules(ANSWER, "service/serving/inference.py", functions=("top_k", "model_ref")),
    *_rules(ANSWER, "/json/", "fastapi/encoders.py", "starlette/responses.py", "orjson"),
    *_rules(ANSWER, "service/answers.py", "service/responses.py"),
    *_rules(
        ANSWER, "service/protocols/v2.py", functions=("infer_answer", "classification_strings")
    ),
    *_rules(ANSWER, "service/protocols/grpc_v2.py", functions=("infer_response",)),
    *_rules(TENSOR_LIST, "service/protocols/tensors.py", code="np.asarray(values"),
    *_rules(TENSOR, "service/protocols/v2.py", "service/protocols/tensors.py"),
    *_rules(GRPC_PARSE, "service/protocols/grpc_v2.py", "google/protobuf/"),
    *_rules(GRPC_PARSE, "service/grpc/calls.py", code="FromString("),
    *_rules(GRPC_CALL, "service/grpc/", "/grpc/"),
    *_rules(MODEL_ON_LOOP, "tensorflow/", "keras/", "service/serving/model_store.py"),
    *_rules(DECODE, "PIL/", "service/serving/decode_step.py", "contract/decoding/"),
    *_rules(QUEUE, "service/serving/batching.py", "service/serving/inference.py"),
    *_rules(FEEDBACK, "service/feedback/"),
    # The committed tree before issue 11 (``--root`` of a "before" budget) read the body,
    # decoded and queued in the route module itself.
    *_rules(BODY, "service/routes/predict.py", functions=("read_body", "_read_stream")),
    *_rules(BODY, "service/routes/predict.py", functions=("read_uploads", "_once")),
    *_rules(DECODE, "service/routes/predict.py", functions=("decode_all", "_decode_one")),
    *_rules(DECODE, "service/routes/predict.py", functions=("_decode_inline",)),
    *_rules(QUEUE, "service/routes/predict.py", functions=("classify",)),
    *_rules(DISCONNECT, "service/http/disconnect.py"),
    *_rules(BODY, "service/http/uploads.py", "starlette/formparsers.py", "multipart/"),
    *_rules(BODY, "starlette/requests.py", "starlette/datastructures.py", "tempfile.py"),
    *_rules(BODY, "service/protocols/body.py"),
    *_rules(GUARD, "service/http/guard.py", "service/http/server.py"),
    *_rules(FRAMEWORK, "uvicorn/protocols/http/httptools_impl.py", functions=("run_asgi",)),
    *_rules(HTTP, "uvicorn/protocols/http/", "httptools/"),
    *_rules(MIDDLEWARE, "service/http/middleware.py", "service/app.py", "starlette/middleware/"),
    *_rules(MIDDLEWARE, "service/http/cors.py", "uvicorn/middleware/"),
    *_rules(FRAMEWORK, "fastapi/", "starlette/", "anyio/", "pydantic", "service/routes/"),
    *_rules(QUEUE, "service/dataplane.py"),
    *_rules(FRAMEWORK, "service/deps.py", "service/http/auth.py"),
    *_rules(
        FRAMEWORK, "service/serving/repository.py", "service/state.py", "service/http/errors.py"
    ),
    # Everything else (asyncio, uvicorn's server loop, service/__main__.py at the root of the
    # loop's own stack, uvloop's native I/O below it) is the event loop itself: LOOP.
]

#: Rows of the table in order: the loops' rows, then off the loops.
LOOP_ROWS = [
    HTTP,
    GUARD,
    MIDDLEWARE,
    FRAMEWORK,
    BODY,
    JSON_PARSE,
    GRPC_CALL,
    GRPC_PARSE,
    TENSOR_LIST,
    TENSOR,
    DECODE,
    QUEUE,
    FEEDBACK,
    DISCONNECT,
    MODEL_ON_LOOP,
    ANSWER,
    METRICS,
    LOOP,
]
OFF_LOOP_ROWS = [DECODE_POOL, GRPC_THREADS, MODEL, OTHER_THREADS, OTHER_PROCESSES]
ROWS = LOOP_ROWS + OFF_LOOP_ROWS

#: OS names (``/proc/<pid>/task/<tid>/comm``) of gRPC C-core's threads.
_GRPC_COMMS = ("grpc", "event_engine", "lifeguard", "default-executo", "resolver-execu")


def parse_frame(frame: str) -> Frame:
    """``"function (path:line)"`` -> its :class:`Frame`."""
    function, _, rest = frame.partition(" (")
    path, _, line = rest.rstrip(")").rpartition(":")
    return Frame(function, path, int(line) if line.isdigit() else 0)


def classify(frames: list[str]) -> str:
    """The row of one sample (frames outermost first, as py-spy writes them)."""
    parsed = [parse_frame(frame) for frame in frames]
    for frame in parsed:
        for rule in STACK_RULES:
            if rule.matches(*frame):
                return rule.row
    for frame in reversed(parsed):
        for rule in RULES:
            if rule.matches(*frame):
                return rule.row
    return LOOP


def thread_row(name: str, comm: str) -> str:
    """The off-loop row of a thread of a worker, by its Python name (py-spy's; empty for a
    thread py-spy never sampled, e.g. a native one) and its OS name (``comm``)."""
    if name.startswith("decode"):
        return DECODE_POOL
    if "_poll_wrapper" in name or comm.startswith(_GRPC_COMMS):
        return GRPC_THREADS
    if not name or name.startswith("batcher"):
        return MODEL  # TensorFlow's pools are native threads: py-spy never names them
    return OTHER_THREADS


#: ``thread (<tid>): <name>;`` after py-spy's ``process <pid>:"<command line>";`` frames (with
#: ``--subprocesses``; a command line may itself hold ``;``).
_THREAD = re.compile(r"(?:^|;)thread \(([0-9a-fA-Fx]+)\): ")


@dataclass
class Samples:
    """py-spy's raw samples by thread: OS thread id -> (name, Counter of stacks)."""

    threads: dict[int, tuple[str, Counter[tuple[str, ...]]]]

    @classmethod
    def parse(cls, text: str) -> Samples:
        threads: dict[int, tuple[str, Counter[tuple[str, ...]]]] = {}
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            found = _THREAD.search(stack)
            if found is None or not count.isdigit():
                continue
            tid = int(found.group(1), 0)
            frames = stack[found.end() :].split(";")
            name, frames = frames[0], frames[1:]
            threads.setdefault(tid, (name, Counter()))[1][tuple(frames)] += int(count)
        return cls(threads)

    def names(self) -> dict[int, str]:
        return {tid: name for tid, (name, _) in self.threads.items()}

    def rows(self, tid: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        if tid in self.threads:
            for frames, count in self.threads[tid][1].items():
                counts[classify(list(frames))] += count
        return counts

    def leaves(self, tids: Iterable[int], top: int = 25) -> list[tuple[str, str, int]]:
        """The most sampled innermost frames of these threads together, with their row."""
        counts: Counter[tuple[str, str]] = Counter()
        for tid in tids:
            for frames, count in self.threads.get(tid, ("", Counter()))[1].items():
                leaf = frames[-1] if frames else "?"
                counts[(leaf, classify(list(frames)))] += count
        return [(leaf, row, count) for (leaf, row), count in counts.most_common(top)]


@dataclass(frozen=True)
class ThreadCpu:
    """One thread's CPU seconds over the run, its process, and its OS name."""

    pid: int
    cpu_s: float
    comm: str


def split_cpu(
    threads: dict[int, ThreadCpu], loops: list[int], samples: Samples
) -> tuple[dict[str, float], dict[int, int]]:
    """CPU seconds by row (:data:`ROWS`), and py-spy's samples by loop.

    ``threads``: every thread of the service by OS thread id; ``loops``: the workers' pids,
    whose main thread (thread id = pid) runs the event loop; threads of other processes (the
    supervisor, multiprocessing's resource tracker) are :data:`OTHER_PROCESSES`. A loop's CPU
    is split in the proportions of its samples (all of it to :data:`LOOP` if it has none)."""
    seconds = dict.fromkeys(ROWS, 0.0)
    names = samples.names()
    counted: dict[int, int] = {}
    for tid, used in threads.items():
        if used.pid not in loops:
            seconds[OTHER_PROCESSES] += used.cpu_s
        elif tid in loops:
            rows = samples.rows(tid)
            counted[tid] = sum(rows.values())
            if not counted[tid]:
                seconds[LOOP] += used.cpu_s
            for row, count in rows.items():
                seconds[row] += used.cpu_s * count / counted[tid]
        else:
            seconds[thread_row(names.get(tid, ""), used.comm)] += used.cpu_s
    return seconds, counted


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants, parents before children."""
    found, stack = [], [pid]
    while stack:
        children = _children(stack.pop())
        found += children
        stack += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def worker_pids(root: int) -> list[int]:
    """The processes that serve: the supervisor's workers (multiprocessing ``spawn_main``
    children), or ``root`` itself when it has none (one worker)."""
    workers = [pid for pid in descendants(root) if "spawn_main" in _cmdline(pid)]
    return sorted(workers) or [root]


def wait_for_workers(root: int, expected: int, timeout_s: float = 240.0) -> list[int]:
    """The workers once ``expected`` of them have been alive for 3 s (with ``auto`` the first
    one measures the model, then two others start and the first retires)."""
    deadline = time.monotonic() + timeout_s
    stable_since, seen = time.monotonic(), worker_pids(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = worker_pids(root)
        if now != seen:
            stable_since, seen = time.monotonic(), now
        elif len(now) == expected and time.monotonic() - stable_since >= 3.0:
            return now
    raise RuntimeError(f"expected {expected} workers of pid {root}, found {seen}")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by OS thread id."""
    result: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return result
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[int(task.name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return result


def tree_threads(root: int) -> dict[int, tuple[int, float, str]]:
    """Every thread of ``root`` and its descendants: thread id -> (pid, CPU seconds, comm)."""
    found = {}
    for pid in [root, *descendants(root)]:
        for tid, seconds in thread_cpu_s(pid).items():
            try:
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                comm = ""
            found[tid] = (pid, seconds, comm)
    return found


def start_py_spy(
    pid: int,
    duration_s: int,
    rate_hz: int,
    raw: Path,
    *,
    subprocesses: bool = False,
) -> subprocess.Popen[str]:
    """py-spy recording every thread of ``pid`` (and of its subprocesses) for ``duration_s``
    seconds into ``raw``."""
    return subprocess.Popen(
        [
            py_spy_path() or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(duration_s),
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--full-filenames",
            *(["--subprocesses"] if subprocesses else []),
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_py_spy(spy: subprocess.Popen[str], raw: Path) -> Samples:
    """Wait for the recording of :func:`start_py_spy` and parse it."""
    _, spy_err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        raise PySpyError(f"py-spy failed ({spy.returncode}): {spy_err.strip()[-500:]}")
    return Samples.parse(raw.read_text())


def measure(
    server: ServerProcess,
    transport: Transport,
    *,
    concurrency: int,
    duration_s: int,
    rate_hz: int,
    out: Path,
    loops: list[int],
) -> dict[str, Any]:
    """Load ``server`` with ``transport`` for ``duration_s`` seconds while py-spy samples it
    (every worker in ``loops``); the budget."""
    root = server.process.pid
    raw = out / f"py-spy-{transport.name}.txt"
    before: dict[int, tuple[int, float, str]] = {}
    after: dict[int, tuple[int, float, str]] = {}
    spied: list[subprocess.Popen[str]] = []

    def load(c: int, s: int) -> loadgen.LevelResult:
        # the threads' CPU and py-spy around the load alone, not the /metrics reads around it
        before.update(tree_threads(root))
        spied.append(start_py_spy(root, max(1, s - 1), rate_hz, raw, subprocesses=loops != [root]))
        result = transport.load(c, s)
        after.update(tree_threads(root))
        return result

    # bench.grpc's run: the server's own answer counts by code and the mean batch around it
    level = v2_bench.measure(
        server,
        Transport(transport.name, transport.title, transport.tool, load),
        concurrency,
        duration_s,
    )
    samples = read_py_spy(spied[0], raw)

    threads = {
        tid: ThreadCpu(pid, seconds - before.get(tid, (pid, 0.0, ""))[1], comm)
        for tid, (pid, seconds, comm) in after.items()
        if seconds - before.get(tid, (pid, 0.0, ""))[1] > 0
    }
    seconds, counted = split_cpu(threads, loops, samples)
    requests = round(level.rps * level.duration_s)
    loop_s = sum(threads[tid].cpu_s for tid in loops if tid in threads)
    total_s = sum(used.cpu_s for used in threads.values())

    def us(value: float) -> float:
        return round(1e6 * value / requests, 1) if requests else 0.0

    names = samples.names()
    return {
        "workload": transport.name,
        "title": transport.title,
        "workers": len(loops),
        "concurrency": concurrency,
        "duration_s": level.duration_s,
        "requests": requests,
        "rps": level.rps,
        "errors": level.errors,
        "server_not_ok": level.extra.get("server_not_ok"),
        "p50_ms": level.p50_ms,
        "p99_ms": level.p99_ms,
        "mean_batch": level.mean_batch_size,
        "server_cpu_us_per_request": us(total_s),
        "server_tree_cpu_us_per_request": us(level.server_cpu_s or 0.0),
        "loop_cpu_us_per_request": us(loop_s),
        "loop_busy_fraction": round(loop_s / len(loops) / level.duration_s, 3),
        "loops_busy_fraction": [
            round(threads[tid].cpu_s / level.duration_s, 3) if tid in threads else 0.0
            for tid in loops
        ],
        "loadgen_cpu_us_per_request": us(level.loadgen_cpu_s),
        "other_load_cores": level.extra.get("other_load_cores"),
        "py_spy_samples_on_loop": sum(counted.values()),
        "rows": [
            {
                "row": row,
                "us_per_request": us(seconds[row]),
                "where": "loop" if row in LOOP_ROWS else "off loop",
            }
            for row in ROWS
        ],
        "top_loop_frames": samples.leaves(loops),
        "threads": {
            str(tid): {
                "pid": used.pid,
                "name": names.get(tid, "(native)"),
                "comm": used.comm,
                "cpu_s": round(used.cpu_s, 3),
            }
            for tid, used in sorted(threads.items(), key=lambda item: -item[1].cpu_s)
        },
    }


def py_spy_path() -> str | None:
    """py-spy from PATH or beside this Python (``pip install py-spy`` into the venv)."""
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


def expected_workers(workers: str) -> int:
    """How many workers ``IMGCLS_WORKERS=workers`` runs here (``default``: ``auto``)."""
    from service.settings import auto_workers, usable_cpus

    return auto_workers(usable_cpus()) if workers in ("default", "auto") else int(workers)


def _workload_transports(
    server: ServerProcess,
    script: Path,
    workloads: list[str],
    grpc_port: int | None,
    out: Path,
    cpu: int | None,
) -> list[Transport]:
    """The chosen workloads' transports; the V2 ones after a check that every transport (and
    ``tritonclient.grpc``) answers the same probabilities."""

    def predict(c: int, s: int) -> loadgen.LevelResult:
        return loadgen.run_wrk(
            server.url + "/predict", script, concurrency=c, duration_s=s, cpu=cpu
        )

    found = {"predict": Transport("predict", WORKLOADS["predict"], "wrk", predict)}
    if grpc_port is not None:
        target = f"127.0.0.1:{grpc_port}"
        bodies = v2_bench.v2_bodies(digit_tensor())
        check = v2_bench.check_answers(server.url + f"/v2/models/{DIGITS}/infer", target, bodies)
        v2 = v2_bench.transports(
            server,
            f"http://{target}{grpc_load.INFER_PATH}",
            bodies,
            check["ok_grpc_bytes"],
            out / "bodies",
            cpu,
        )
        for name, transport_name in _TRANSPORTS.items():
            transport = next(t for t in v2 if t.name == transport_name)
            found[name] = Transport(name, WORKLOADS[name], transport.tool, transport.load)
    return [found[name] for name in workloads]


def run_budgets(
    models_dir: Path,
    model_name: str,
    script: Path,
    out: Path,
    *,
    workloads: list[str] | None = None,
    workers: str = "1",
    concurrency: int = 32,
    duration_s: int = 20,
    rate_hz: int = 250,
    cpu: int | None = None,
    root: Path = ROOT,
) -> dict[str, dict[str, Any]]:
    """Start the service from ``root`` on ``models_dir``/``model_name`` with ``workers``
    (``IMGCLS_WORKERS``; ``default``: unset), measure the budget of each of ``workloads``
    (:func:`measure`; ``script``: wrk's for ``predict``) one after the other, after 3 s of
    warm-up each, and stop it. Without py-spy, or when it may not trace the server (no ptrace
    permission): ``{"skipped": {"skipped": why}}``."""
    workloads = workloads or ["predict"]
    if py_spy_path() is None:
        return {"skipped": {"skipped": "py-spy is not installed (pip install py-spy)"}}
    out.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port() if any(name in _TRANSPORTS for name in workloads) else None
    env = {"IMGCLS_MODELS_DIR": str(models_dir), "IMGCLS_MODEL_NAME": model_name}
    if workers != "default":
        env["IMGCLS_WORKERS"] = workers
    if grpc_port is not None:
        env["IMGCLS_GRPC_PORT"] = str(grpc_port)
    spec = spawn("budget-service", "service", out, ready_path="/readyz", env=env, cwd=root)
    server = wait_ready([spec])[0]
    budgets = {}
    try:
        loops = wait_for_workers(server.process.pid, expected_workers(workers))
        for transport in _workload_transports(server, script, workloads, grpc_port, out, cpu):
            warm = transport.load(concurrency, 3)
            if warm.error_count or not warm.requests:
                raise RuntimeError(f"{transport.title}: warm-up errors {warm.errors}")
            budgets[transport.name] = measure(
                server,
                transport,
                concurrency=concurrency,
                duration_s=duration_s,
                rate_hz=rate_hz,
                out=out,
                loops=loops,
            )
            budgets[transport.name]["root"] = str(root)
            budgets[transport.name]["workers_setting"] = workers
        if worker_pids(server.process.pid) != loops:
            raise RuntimeError("a worker was replaced during the run: the budget is not whole")
    except PySpyError as exc:
        return {"skipped": {"skipped": str(exc)}}
    finally:
        server.stop()
    return budgets


def run_budget(
    models_dir: Path,
    model_name: str,
    script: Path,
    out: Path,
    *,
    concurrency: int = 32,
    duration_s: int = 20,
    rate_hz: int = 250,
    cpu: int | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """The ``/predict`` budget of one worker (:func:`run_budgets`), as ``python -m bench``
    measures it; ``{"skipped": why}`` where py-spy cannot sample."""
    budgets = run_budgets(
        models_dir,
        model_name,
        script,
        out,
        concurrency=concurrency,
        duration_s=duration_s,
        rate_hz=rate_hz,
        cpu=cpu,
        root=root,
    )
    return budgets.get("skipped") or budgets["predict"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        nargs="+",
        choices=[*WORKLOADS, "all"],
        default=["predict"],
        help="what to budget, one after the other on the same service (all: every one)",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="IMGCLS_WORKERS of the service: a number, or default (unset: auto)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to run the service from")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "models")
    parser.add_argument("--label", default="", help="a name for this budget (e.g. before)")
    args = parser.parse_args(argv)
    workloads = list(WORKLOADS) if "all" in args.workload else list(dict.fromkeys(args.workload))
    if args.workers not in ("default", "auto") and not args.workers.isdigit():
        parser.error("--workers takes a number, auto or default")
    if loadgen.wrk_path() is None:
        raise SystemExit("error: wrk is not installed (apt-get install wrk)")
    if "grpc" in workloads and grpc_load.h2load_path() is None:
        raise SystemExit("error: h2load is not installed (apt-get install nghttp2-client)")
    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = ensure_digits(args.cache, args.models_dir)
    cpu = loadgen.wrk_cpu()
    script = loadgen.write_script(args.out, [("digit.png", digit_png())], "budget")
    budgets = run_budgets(
        models_dir,
        DIGITS,
        script,
        args.out,
        workloads=workloads,
        workers=args.workers,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rate_hz=args.rate,
        cpu=cpu,
        root=args.root,
    )
    if "skipped" in budgets:
        raise SystemExit(f"error: {budgets['skipped']['skipped']}")
    label = f"-{args.label}" if args.label else ""
    for name, budget in budgets.items():
        budget["label"] = args.label
        stem = f"budget{'' if name == 'predict' else '-' + name}{label}"
        (args.out / f"{stem}.json").write_text(json.dumps(budget, indent=2) + "\n")
        text = budget_table(budget)
        (args.out / f"{stem}.md").write_text(text + "\n")
        print(f"\n{budget['title']}: {text}")
        print("\nmost sampled frames on the event loop (innermost frame, row, samples):")
        for leaf, row, count in budget["top_loop_frames"][:15]:
            print(f"  {count:6d}  {row[:28]:<28}  {leaf}")
    if len(budgets) > 1:
        text = budget_comparison(list(budgets.values()))
        (args.out / f"budgets{label}.md").write_text(text + "\n")
        print(f"\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
