"""Does one batch across workers pay? Issue 23's architectural lever, measured before it is built.

Today each worker process of the service has its own batcher and model thread, so two workers
split the traffic into two half-size batches. The lever would move the model into ONE process
that batches for every front end, at the price of a hand-off per request. This script measures
both layouts of the same work with the service's own :class:`~service.serving.batching.Batcher`
and the same model call, without HTTP:

* ``per-worker`` (the service today): ``--frontends`` processes, each with its own Batcher and
  model (``CPUs / frontends`` threads, as ``IMGCLS_TF_INTRA_OP_THREADS`` gives each worker);
* ``handoff``: the same front ends send each image (the float32 array the tensor protocols
  parse, 28x28x3) over a Unix socket to one model process (all CPUs' threads, one Batcher for
  everyone), which writes the probabilities back on the same socket. Writes are coalesced per
  event-loop turn on both sides (one ``write`` per turn, not per request): the cheapest hand-off
  asyncio offers without new dependencies. Shared memory would save the copy of 9 KB, not the
  wake-up each request needs, and the wake-ups are the cost (see the figures).

Each front end runs ``--concurrency / --frontends`` request loops at ``--rate`` requests/s in
all (each loop sends one image, awaits its answer, waits for its next slot), and spends
``--frontend-us`` of CPU per request on its event loop first (a stand-in for the HTTP parsing,
routing and tensor checks the service's loop does per request: 450-650 µs in BENCHMARKS.md's
V2 budget), so that the front ends compete for the cores as they do in the service. All
processes load first and say so; then the parent gives them all the same window
(``time.monotonic`` is system-wide), timed with ``time.process_time`` (every thread of the
process, the model's pools included).

    python -m bench.handoff --model models/digits/1 --runtime savedmodel
    python -m bench.handoff --model models/digits/1 --runtime openvino-int8 --rate 2500

Prints one table (median of ``--repeats``, the layouts interleaved within each repeat) and writes
the raw figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from service.serving.batching import Batcher
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
#: A frame on the socket: request id, payload bytes (little-endian uint32 each), then the payload.
HEADER = struct.Struct("<II")
#: What a process prints once loaded; the parent then writes the window ("start end") to it.
READY = "HANDOFF-READY"
#: Longest wait for one answer, seconds: a lost answer fails the run instead of hanging it.
ANSWER_TIMEOUT_S = 10.0
#: Longest wait for the processes to load (TensorFlow's import, the model), seconds.
LOAD_TIMEOUT_S = 180.0
LAYOUTS = ("per-worker", "handoff")
Predict = Callable[[np.ndarray], np.ndarray]


def load_predict(model: str | None, runtime: str, threads: int) -> tuple[Predict, str]:
    """The model call of one process: the service's own loading (``runtime`` as
    ``IMGCLS_RUNTIME``: ``auto``, ``savedmodel`` or an artifact), or ``none``: ten zeros per
    image (the hand-off alone). Returns it and what computes it."""
    if model is None or runtime == "none":
        return (lambda images: np.zeros((len(images), 10), np.float32)), "none"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from contract.metadata import verify_version_dir
    from service.serving import runtimes
    from service.serving.model_store import load_saved_model

    path = Path(model).resolve()
    metadata = verify_version_dir(path, repository_root=path.parent.parent)
    loaded = load_saved_model(path, metadata)
    if runtime == "savedmodel":
        return loaded.predict_savedmodel, "savedmodel"
    choice = runtimes.choose(
        path, metadata, asked=runtime, threads=threads, max_batch_size=Settings().max_batch_size
    )
    if choice.network is None:
        return loaded.predict_savedmodel, f"savedmodel ({choice.fallback or runtime})"
    return choice.network.predict, choice.name


class BatchCount:
    """A Batcher observer counting the images and batches started while ``counting``."""

    def __init__(self) -> None:
        self.images = self.batches = 0
        self.counting = False

    def queue_depth(self, depth: int) -> None:
        pass

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        if self.counting:
            self.images += size
            self.batches += 1

    def batch_finished(self, size: int, duration_s: float, error: BaseException | None) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


def make_batcher(predict: Predict) -> tuple[Batcher[np.ndarray, np.ndarray], BatchCount]:
    """The service's Batcher with the service's batching settings (``IMGCLS_MAX_BATCH_SIZE``,
    ``IMGCLS_BATCH_TIMEOUT_S``, ``IMGCLS_BATCH_FILL_WAIT_RATIO``: their defaults unless set),
    and what counts its batches."""
    settings = Settings()
    count = BatchCount()
    batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
        lambda images: list(predict(np.stack(images))),
        max_batch_size=settings.max_batch_size,
        batch_timeout_s=settings.batch_timeout_s,
        max_queue_size=1024,
        observer=count,
        fill_wait_ratio=settings.batch_fill_wait_ratio,
    )
    return batcher, count


def spin(microseconds: float) -> None:
    """Busy the calling thread for ``microseconds`` of CPU (the front end's per-request work)."""
    end = time.thread_time() + microseconds / 1e6
    while time.thread_time() < end:
        pass


class Coalescer:
    """Frames written on one transport, joined into one ``write`` per event-loop turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self.chunks:
            asyncio.get_running_loop().call_soon(self.flush)
        self.chunks.append(frame)

    def flush(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"".join(self.chunks))
        self.chunks.clear()


class FrameReader(asyncio.Protocol):
    """Splits a byte stream into frames and hands each to ``on_frame(request_id, payload)``."""

    def __init__(
        self,
        on_frame: Callable[[FrameReader, int, bytes], None],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.buffer = bytearray()
        self.out: Coalescer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods
        self.out = Coalescer(cast(asyncio.Transport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            request_id, size = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            payload = bytes(self.buffer[HEADER.size : HEADER.size + size])
            del self.buffer[: HEADER.size + size]
            self.on_frame(self, request_id, payload)


async def window(start: float, end: float) -> tuple[float, float]:
    """Wait until ``start`` (monotonic), take the process's CPU, wait until ``end``; returns
    (CPU seconds, wall seconds) of the window."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return time.process_time() - cpu, time.monotonic() - wall


def digit_image() -> np.ndarray:
    """The request: one digit as the float32 (28, 28, 3) array the tensor protocols parse."""
    from bench.digits import digit_tensor

    return digit_tensor()[0].astype(np.float32)


async def ready(args: argparse.Namespace) -> None:
    """Say this process is loaded; take the window (monotonic start and end) from the parent."""
    print(READY, flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    args.start, args.end = (float(value) for value in line.split())


async def drive(
    submit: Callable[[np.ndarray], Awaitable[np.ndarray]],
    image: np.ndarray,
    args: argparse.Namespace,
    on_window: Callable[[bool], None] = lambda _: None,
) -> dict[str, Any]:
    """Run this front end's request loops until the window ends; count the answers in it."""
    loops = max(1, args.concurrency // args.frontends)
    period = loops * args.frontends / args.rate  # seconds between one loop's requests
    answered = 0
    measuring = False

    async def one(offset: float) -> None:
        nonlocal answered
        await asyncio.sleep(offset)  # the loops' requests spread over one period
        slot = time.monotonic()
        while time.monotonic() < args.end:
            spin(args.frontend_us)
            probabilities = await submit(image)
            if measuring and probabilities.shape == (10,):
                answered += 1
            slot = max(slot + period, time.monotonic() - period)
            await asyncio.sleep(max(0.0, slot - time.monotonic()))

    tasks = [asyncio.create_task(one(i * period / loops)) for i in range(loops)]
    await asyncio.sleep(max(0.0, args.start - time.monotonic()))
    measuring = True
    on_window(True)
    cpu, wall = await window(time.monotonic(), args.end - 0.5)
    measuring = False
    on_window(False)
    await asyncio.gather(*tasks)
    return {"answered": answered, "cpu_s": cpu, "wall_s": wall}


async def frontend_per_worker(args: argparse.Namespace) -> dict[str, Any]:
    predict, what = load_predict(args.model, args.runtime, args.threads)
    batcher, count = make_batcher(predict)
    await batcher.start()
    image = digit_image()
    await ready(args)

    def counting(on: bool) -> None:
        count.counting = on

    result = await drive(
        lambda image: batcher.submit(image, timeout_s=ANSWER_TIMEOUT_S), image, args, counting
    )
    await batcher.stop()
    return {**result, "images": count.images, "batches": count.batches, "runtime": what}


async def frontend_handoff(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[np.ndarray]] = {}

    def answered(_: FrameReader, request_id: int, payload: bytes) -> None:
        future = pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(np.frombuffer(payload, np.float32))

    def lost() -> None:  # the model process went away: every waiting request fails now
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the model process closed the socket"))
        pending.clear()

    image = digit_image()
    while True:  # the model process may still be loading
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: FrameReader(answered, lost), args.socket
            )
            break
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(0.05)
    next_id = 0

    async def submit(image: np.ndarray) -> np.ndarray:
        nonlocal next_id
        next_id += 1
        future = loop.create_future()
        pending[next_id] = future
        payload = image.tobytes()
        assert protocol.out is not None
        protocol.out.send(HEADER.pack(next_id, len(payload)) + payload)
        return await asyncio.wait_for(future, ANSWER_TIMEOUT_S)

    await ready(args)
    return await drive(submit, image, args)


async def model_process(args: argparse.Namespace) -> dict[str, Any]:
    """The one model process of ``handoff``: a Batcher for every front end's images."""
    predict, what = load_predict(args.model, args.runtime, args.threads)
    batcher, count = make_batcher(predict)
    await batcher.start()
    loop = asyncio.get_running_loop()

    async def answer(reader: FrameReader, request_id: int, image: np.ndarray) -> None:
        probabilities = await batcher.submit(image, timeout_s=ANSWER_TIMEOUT_S)
        payload = np.asarray(probabilities, np.float32).tobytes()
        assert reader.out is not None
        reader.out.send(HEADER.pack(request_id, len(payload)) + payload)

    tasks: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak ones)

    def on_frame(reader: FrameReader, request_id: int, payload: bytes) -> None:
        image = np.frombuffer(payload, np.float32).reshape(28, 28, 3)
        task = loop.create_task(answer(reader, request_id, image))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await loop.create_unix_server(lambda: FrameReader(on_frame), args.socket)
    await ready(args)
    await asyncio.sleep(max(0.0, args.start - time.monotonic()))
    count.counting = True
    cpu, wall = await window(time.monotonic(), args.end - 0.5)
    count.counting = False
    await asyncio.sleep(max(0.0, args.end + 0.5 - time.monotonic()))
    server.close()
    await batcher.stop()
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "images": count.images,
        "batches": count.batches,
        "runtime": what,
    }


def role_main(args: argparse.Namespace) -> int:
    import uvloop

    # as the service's workers do (IMGCLS_GIL_SWITCH_INTERVAL_S): the busy loop hands the GIL
    # to the model thread after this long, not Python's default 5 ms
    sys.setswitchinterval(Settings().gil_switch_interval_s)

    role = {
        "per-worker": frontend_per_worker,
        "frontend": frontend_handoff,
        "model": model_process,
    }[args.role]
    result = uvloop.run(role(args))
    print("HANDOFF-JSON " + json.dumps(result), flush=True)
    return 0


def layout_commands(
    layout: str, args: argparse.Namespace, folder: Path
) -> list[tuple[str, list[str]]]:
    """The processes of one layout: (name, command line), the model process first."""
    cpus = os.cpu_count() or 1
    common = [
        "--model",
        args.model or "",
        "--runtime",
        args.runtime,
        "--rate",
        str(args.rate),
        "--concurrency",
        str(args.concurrency),
        "--frontends",
        str(args.frontends),
        "--frontend-us",
        str(args.frontend_us),
        "--socket",
        str(folder / f"{layout}.sock"),
    ]
    me = [sys.executable, "-m", "bench.handoff", "--role"]
    commands: list[tuple[str, list[str]]] = []
    if layout == "per-worker":
        threads = max(1, cpus // args.frontends)
        commands += [
            (f"frontend{i}", [*me, "per-worker", *common, "--threads", str(threads)])
            for i in range(args.frontends)
        ]
    else:
        commands.append(("model", [*me, "model", *common, "--threads", str(cpus)]))
        commands += [
            (f"frontend{i}", [*me, "frontend", *common, "--threads", "1"])
            for i in range(args.frontends)
        ]
    return commands


def run_processes(
    layout: str, commands: list[tuple[str, list[str]]], args: argparse.Namespace, folder: Path
) -> dict[str, dict[str, Any]]:
    """Start ``commands``, wait until every one is loaded, give them one common window, and
    return what each reported. A process that fails stops the others."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes: list[tuple[str, subprocess.Popen[str], Path]] = []
    try:
        for name, command in commands:
            log = folder / f"{layout}-{name}.log"
            with log.open("w") as stderr:
                process = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            processes.append((name, process, log))
        for name, process, log in processes:  # each says when it is loaded
            assert process.stdout is not None
            if process.stdout.readline().strip() != READY:
                process.wait(timeout=LOAD_TIMEOUT_S)
                raise RuntimeError(f"{layout} {name} did not load: {log.read_text()[-2000:]}")
        start = time.monotonic() + args.warm
        end = start + args.seconds + 0.5
        for _, process, _ in processes:
            assert process.stdin is not None
            process.stdin.write(f"{start!r} {end!r}\n")
            process.stdin.close()
        parts: dict[str, dict[str, Any]] = {}
        for name, process, log in processes:
            assert process.stdout is not None
            stdout = process.stdout.read()
            process.wait(timeout=args.warm + args.seconds + 60)
            lines = [line for line in stdout.splitlines() if line.startswith("HANDOFF-JSON ")]
            if process.returncode != 0 or not lines:
                raise RuntimeError(
                    f"{layout} {name} failed ({process.returncode}): {log.read_text()[-2000:]}"
                )
            parts[name] = json.loads(lines[-1].removeprefix("HANDOFF-JSON "))
    finally:
        for _, process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return parts


def run_layout(layout: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Run one layout (:func:`run_processes`) and put its processes' figures together."""
    parts = run_processes(layout, layout_commands(layout, args, folder), args, folder)
    fronts = [part for name, part in parts.items() if name.startswith("frontend")]
    batching = [parts["model"]] if layout == "handoff" else fronts
    answered = sum(part["answered"] for part in fronts)
    wall = statistics.mean(part["wall_s"] for part in fronts)
    if not answered or wall <= 0:
        raise RuntimeError(f"{layout}: no answer in the window ({fronts})")
    front_cpu = sum(part["cpu_s"] for part in fronts)
    model_cpu = parts["model"]["cpu_s"] if layout == "handoff" else 0.0
    images = sum(part["images"] for part in batching)
    batches = sum(part["batches"] for part in batching)
    return {
        "layout": layout,
        "runtime": batching[0]["runtime"],
        "answered": answered,
        "images_batched": images,
        "req_per_s": round(answered / wall, 1),
        "frontend_cpu_us": round(1e6 * front_cpu / answered, 1),
        "model_process_cpu_us": round(1e6 * model_cpu / answered, 1),
        "total_cpu_us": round(1e6 * (front_cpu + model_cpu) / answered, 1),
        "mean_batch": round(images / max(batches, 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a version folder (models/digits/1)")
    parser.add_argument(
        "--runtime",
        default="savedmodel",
        help="auto, savedmodel, an artifact, or none (no model: the hand-off)",
    )
    parser.add_argument("--frontends", type=int, default=2, help="front-end (worker) processes")
    parser.add_argument("--concurrency", type=int, default=32, help="request loops in all")
    parser.add_argument("--rate", type=float, default=1500.0, help="requests/s in all")
    parser.add_argument(
        "--frontend-us",
        type=float,
        default=500.0,
        help="CPU µs each front end spends per request before submitting",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds of load before it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "handoff.json")
    # the processes' own arguments
    parser.add_argument("--role", choices=("per-worker", "frontend", "model"), default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--socket", default="")
    args = parser.parse_args(argv)
    if args.model == "":
        args.model = None
    if args.role:
        return role_main(args)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="handoff-") as folder:
        for repeat in range(args.repeats):
            order = LAYOUTS if repeat % 2 == 0 else LAYOUTS[::-1]
            for layout in order:
                row = {"repeat": repeat + 1, **run_layout(layout, args, Path(folder))}
                runs.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    settings = {
        key: getattr(args, key)
        for key in (
            "model",
            "runtime",
            "frontends",
            "concurrency",
            "rate",
            "frontend_us",
            "seconds",
        )
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1) + "\n")
    keys = ("req_per_s", "frontend_cpu_us", "model_process_cpu_us", "total_cpu_us", "mean_batch")
    print(f"settings: {settings}, cpus {os.cpu_count()}; medians of {args.repeats} repeats")
    print("| layout | runtime | " + " | ".join(keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for layout in LAYOUTS:
        rows = [run for run in runs if run["layout"] == layout]
        medians = [statistics.median(run[key] for run in rows) for key in keys]
        cells = " | ".join(f"{median:g}" for median in medians)
        print(f"| {layout} | {rows[0]['runtime']} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
