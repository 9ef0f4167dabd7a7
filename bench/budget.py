"""Per-request CPU budget of ``python -m service`` under load: where each request's CPU goes.

``python -m bench.budget`` starts the service (defaults, the digits model), loads it with wrk
(one 28x28 PNG per request, ``--concurrency`` connections, ``--duration`` seconds) and meanwhile

* reads every thread's CPU time from ``/proc/<pid>/task/*/stat`` before and after, and
* samples the Python stacks with `py-spy <https://github.com/benfred/py-spy>`_ (``record --threads
  --nonblocking --format raw``; idle threads are not sampled, so a thread's samples are where
  its CPU went).

The event-loop thread's CPU is split by its samples into the rows of :data:`RULES` (each sample
is given to the first rule that matches, walking from the innermost frame outwards; a sample
no rule matches is the event loop itself: uvloop's I/O, asyncio's scheduling). CPU off the loop
is the decode pool (threads named ``decode*``) and the model call (the batcher's thread and
TensorFlow's own thread pools, which py-spy cannot see: everything else). Every row is in
microseconds of CPU per answered request.

``--root DIR`` runs the service from another checkout (e.g. ``git archive HEAD | tar -x -C DIR``
for a "before" budget), with this checkout's Python. Needs ``py-spy`` (``pip install py-spy``)
and permission to trace the server (root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.digits import digit_png
from bench.models import DIGITS, ensure_digits
from bench.report import budget_table
from bench.servers import _CLOCK_TICKS, ROOT, ServerProcess, fetch_text, spawn, wait_ready

DEFAULT_OUT = ROOT / "bench" / "results" / "budget"


class PySpyError(RuntimeError):
    """py-spy could not sample the server (e.g. no permission to trace it)."""


@dataclass(frozen=True)
class Rule:
    """A budget row: a sample belongs to it when a frame's file path contains ``path`` (and,
    if given, the frame's function is one of ``functions``)."""

    row: str
    path: str
    functions: frozenset[str] = frozenset()

    def matches(self, function: str, filename: str) -> bool:
        if self.path not in filename:
            return False
        if not self.functions:
            return True
        outer = function.split(".<locals>", 1)[0]  # top_k.<locals>.<listcomp> is top_k's
        return outer in self.functions or outer.rsplit(".", 1)[-1] in self.functions


def _rules(row: str, *paths: str, functions: tuple[str, ...] = ()) -> list[Rule]:
    return [Rule(row, path, frozenset(functions)) for path in paths]


METRICS = "metrics (prometheus_client)"
JSON = "top-k and JSON"
DECODE = "decode and resize"
QUEUE = "queue and futures (batcher, submit, results)"
DISCONNECT = "disconnect watch"
BODY = "body and multipart"
GUARD = "protocol guard"
HTTP = "HTTP parsing and writing (uvicorn's httptools protocol)"
MIDDLEWARE = "middleware"
FRAMEWORK = "FastAPI/Starlette routing, dependencies, exception handling; the route"
MODEL_ON_LOOP = "model call (on the loop)"
LOOP = "event loop (uvloop I/O, asyncio scheduling)"

#: A sample with one of these frames anywhere is theirs: the disconnect watcher task of the old
#: ``unless_disconnected`` (its ``receive()`` would otherwise count as uvicorn's).
STACK_RULES: list[Rule] = [
    *_rules(DISCONNECT, "service/http/disconnect.py", functions=("_wait_for_disconnect",)),
    *_rules(DISCONNECT, "service/http/disconnect.py", functions=("_race_watcher_task",)),
]

#: In priority order: at each frame (innermost first) the first matching rule wins.
RULES: list[Rule] = [
    *_rules(METRICS, "prometheus_client/", "service/metrics.py"),
    *_rules(JSON, "service/serving/inference.py", functions=("top_k", "model_ref")),
    *_rules(JSON, "/json/", "fastapi/encoders.py", "starlette/responses.py", "orjson"),
    *_rules(JSON, "service/answers.py", "service/responses.py"),
    *_rules(MODEL_ON_LOOP, "tensorflow/", "keras/", "service/serving/model_store.py"),
    *_rules(DECODE, "PIL/", "service/serving/decode_step.py", "contract/decoding/"),
    *_rules(QUEUE, "service/serving/batching.py", "service/serving/inference.py"),
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
    *_rules(GUARD, "service/http/guard.py", "service/http/server.py"),
    *_rules(FRAMEWORK, "uvicorn/protocols/http/httptools_impl.py", functions=("run_asgi",)),
    *_rules(HTTP, "uvicorn/protocols/http/", "httptools/"),
    *_rules(MIDDLEWARE, "service/http/middleware.py", "service/app.py", "starlette/middleware/"),
    *_rules(MIDDLEWARE, "service/http/cors.py", "uvicorn/middleware/"),
    *_rules(FRAMEWORK, "fastapi/", "starlette/", "anyio/", "pydantic", "service/routes/"),
    *_rules(FRAMEWORK, "service/dataplane.py", "service/deps.py", "service/http/auth.py"),
    *_rules(
        FRAMEWORK, "service/serving/repository.py", "service/state.py", "service/http/errors.py"
    ),
    # Everything else (asyncio, uvicorn's server loop, service/__main__.py at the root of the
    # loop's own stack, uvloop's native I/O below it) is the event loop itself: LOOP.
]

#: Rows of the table in order (the loop's rows, then off the loop).
ROWS = [
    HTTP,
    GUARD,
    MIDDLEWARE,
    FRAMEWORK,
    BODY,
    DECODE,
    QUEUE,
    DISCONNECT,
    MODEL_ON_LOOP,
    JSON,
    METRICS,
    LOOP,
]


def parse_frame(frame: str) -> tuple[str, str]:
    """``"function (path:line)"`` -> (function, path)."""
    function, _, rest = frame.partition(" (")
    return function, rest.rsplit(":", 1)[0]


def classify(frames: list[str]) -> str:
    """The row of one sample (frames outermost first, as py-spy writes them)."""
    parsed = [parse_frame(frame) for frame in frames]
    for function, filename in parsed:
        for rule in STACK_RULES:
            if rule.matches(function, filename):
                return rule.row
    for function, filename in reversed(parsed):
        for rule in RULES:
            if rule.matches(function, filename):
                return rule.row
    return LOOP


@dataclass
class Samples:
    """py-spy's raw samples by thread: OS thread id -> (name, Counter of stacks)."""

    threads: dict[int, tuple[str, Counter[tuple[str, ...]]]]

    @classmethod
    def parse(cls, text: str) -> Samples:
        threads: dict[int, tuple[str, Counter[tuple[str, ...]]]] = {}
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack.startswith("thread (") or not count.isdigit():
                continue
            head, _, rest = stack.partition("): ")
            tid = int(head.removeprefix("thread ("), 0)
            frames = rest.split(";")
            name, frames = frames[0], frames[1:]
            threads.setdefault(tid, (name, Counter()))[1][tuple(frames)] += int(count)
        return cls(threads)

    def rows(self, tid: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        if tid in self.threads:
            for frames, count in self.threads[tid][1].items():
                counts[classify(list(frames))] += count
        return counts

    def leaves(self, tid: int, top: int = 25) -> list[tuple[str, str, int]]:
        """The most sampled innermost frames of a thread, with their row."""
        counts: Counter[tuple[str, str]] = Counter()
        if tid in self.threads:
            for frames, count in self.threads[tid][1].items():
                leaf = frames[-1] if frames else "?"
                counts[(leaf, classify(list(frames)))] += count
        return [(leaf, row, count) for (leaf, row), count in counts.most_common(top)]


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by OS thread id."""
    result = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[int(task.name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return result


def batch_counts(server: ServerProcess) -> tuple[float, float]:
    total = count = 0.0
    for line in fetch_text(server.url + "/metrics").splitlines():
        if line.startswith("imgcls_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("imgcls_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


def start_py_spy(pid: int, duration_s: int, rate_hz: int, raw: Path) -> subprocess.Popen[str]:
    """py-spy recording every thread of ``pid`` for ``duration_s`` seconds into ``raw``."""
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
    script: Path,
    *,
    concurrency: int,
    duration_s: int,
    rate_hz: int,
    out: Path,
    cpu: int | None,
) -> dict[str, Any]:
    """Load ``server`` for ``duration_s`` seconds while py-spy samples it; the budget."""
    pid = server.process.pid
    raw = out / "py-spy.txt"
    url = server.url + "/predict"
    loadgen.run_wrk(url, script, concurrency=concurrency, duration_s=2, cpu=cpu)  # warm
    before_threads = thread_cpu_s(pid)
    before_batches = batch_counts(server)
    spy = start_py_spy(pid, max(1, duration_s - 1), rate_hz, raw)
    level = loadgen.run_wrk(
        url, script, concurrency=concurrency, duration_s=duration_s, cpu=cpu, timeout_s=30
    )
    after_threads = thread_cpu_s(pid)
    after_batches = batch_counts(server)
    samples = read_py_spy(spy, raw)

    requests = level.requests - level.errors["status"]
    used = {
        tid: after_threads[tid] - before_threads.get(tid, 0.0)
        for tid in after_threads
        if after_threads[tid] - before_threads.get(tid, 0.0) > 0
    }
    names = {tid: name for tid, (name, _) in samples.threads.items()}
    loop_s = used.get(pid, 0.0)
    decode_s = sum(s for tid, s in used.items() if names.get(tid, "").startswith("decode"))
    total_s = sum(used.values())
    model_s = total_s - loop_s - decode_s

    loop_rows = samples.rows(pid)
    loop_samples = sum(loop_rows.values()) or 1

    def us(seconds: float) -> float:
        return round(1e6 * seconds / requests, 1) if requests else 0.0

    rows = [
        {"row": row, "us_per_request": us(loop_s * loop_rows[row] / loop_samples), "where": "loop"}
        for row in ROWS
    ]
    rows += [
        {"row": "decode pool threads", "us_per_request": us(decode_s), "where": "off loop"},
        {
            "row": "model call (batcher thread + TensorFlow's thread pools), batched",
            "us_per_request": us(model_s),
            "where": "off loop",
        },
    ]
    batches = after_batches[1] - before_batches[1]
    return {
        "concurrency": concurrency,
        "duration_s": level.duration_s,
        "requests": requests,
        "rps": level.rps,
        "errors": level.errors,
        "p50_ms": level.p50_ms,
        "p99_ms": level.p99_ms,
        "mean_batch": (
            round((after_batches[0] - before_batches[0]) / batches, 2) if batches else None
        ),
        "server_cpu_us_per_request": us(total_s),
        "loop_cpu_us_per_request": us(loop_s),
        "loop_busy_fraction": round(loop_s / level.duration_s, 3),
        "wrk_cpu_us_per_request": us(level.loadgen_cpu_s),
        "py_spy_samples_on_loop": sum(loop_rows.values()),
        "rows": rows,
        "top_loop_frames": samples.leaves(pid),
        "threads": {
            str(tid): {"name": names.get(tid, "(native)"), "cpu_s": round(s, 3)}
            for tid, s in sorted(used.items(), key=lambda item: -item[1])
        },
    }


def py_spy_path() -> str | None:
    """py-spy from PATH or beside this Python (``pip install py-spy`` into the venv)."""
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


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
    """Start the service from ``root`` on ``models_dir``/``model_name``, measure its budget
    (:func:`measure`) and stop it. Without py-spy, or when it may not trace the server (no
    ptrace permission): ``{"skipped": why}``."""
    if py_spy_path() is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    out.mkdir(parents=True, exist_ok=True)
    # One worker: py-spy follows one process, and the budget is per request of that process.
    env = {
        "IMGCLS_MODELS_DIR": str(models_dir),
        "IMGCLS_MODEL_NAME": model_name,
        "IMGCLS_WORKERS": "1",
    }
    spec = spawn("budget-service", "service", out, ready_path="/readyz", env=env, cwd=root)
    server = wait_ready([spec])[0]
    try:
        time.sleep(1.0)
        budget = measure(
            server,
            script,
            concurrency=concurrency,
            duration_s=duration_s,
            rate_hz=rate_hz,
            out=out,
            cpu=cpu,
        )
    except PySpyError as exc:
        return {"skipped": str(exc)}
    finally:
        server.stop()
    budget["root"] = str(root)
    return budget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    if loadgen.wrk_path() is None:
        raise SystemExit("error: wrk is not installed (apt-get install wrk)")
    args.out.mkdir(parents=True, exist_ok=True)
    models_dir = ensure_digits(args.cache, args.models_dir)
    cpu = loadgen.wrk_cpu()
    script = loadgen.write_script(args.out, [("digit.png", digit_png())], "budget")
    budget = run_budget(
        models_dir,
        DIGITS,
        script,
        args.out,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rate_hz=args.rate,
        cpu=cpu,
        root=args.root,
    )
    if "skipped" in budget:
        raise SystemExit(f"error: {budget['skipped']}")
    budget["label"] = args.label
    name = f"budget{'-' + args.label if args.label else ''}"
    (args.out / f"{name}.json").write_text(json.dumps(budget, indent=2) + "\n")
    text = budget_table(budget)
    (args.out / f"{name}.md").write_text(text + "\n")
    print(text)
    print("\nmost sampled frames on the event loop (innermost frame, row, samples):")
    for leaf, row, count in budget["top_loop_frames"][:15]:
        print(f"  {count:6d}  {row[:28]:<28}  {leaf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
