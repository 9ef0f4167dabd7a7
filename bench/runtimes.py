"""``python -m bench.runtimes``: what the compiled CPU runtimes (OpenVINO, issue 24) buy, beside
the SavedModel, measured in one run.

Three models: ``digits`` (trained here, ``--epochs 5``, its digit normalisation run first in
TensorFlow), ``photos`` (:mod:`bench.photos`, in the bench's shared cache) and ``vgg16-48`` (the
compute-heavy model of :mod:`bench.models`: the same architecture, seed and random weights,
published here with its runtimes compiled, checked on photo crops, since
:func:`bench.models.publish_heavy` compiles none). Made once under ``bench/results``, then
reused. Four parts:

1. **in-process**: images/s of the SavedModel (``LoadedModel.predict_savedmodel``) and of
   every artifact (``OpenVINONetwork.predict``), NumPy in and out, at batch 1, 8 and 32, with
   one thread and with two. One worker process per thread count (TensorFlow's intra-op pool
   set before first use, inter-op 1; OpenVINO's ``INFERENCE_NUM_THREADS``) loads everything
   once; the parent asks them for one timing at a time, so the two never compute at once,
   rotates the order cell by cell and round by round and keeps the median of the rounds.
   Beside it each artifact's recorded ``top1_agreement``, ``max_abs_difference``, ``passed``.
2. **end to end**, through the real service (:mod:`bench.harness`, wrk), interleaved:
   ``IMGCLS_RUNTIME=savedmodel`` against ``auto`` (the default; ``--compiled`` picks another):
   photos beside the bare decode ceiling (:mod:`bench.bare_app`, the photo workload of
   ``python -m bench``; goal >= 3x at c=32), vgg16-48 beside its SavedModel's compute ceiling
   (:func:`bench.references.compute_ceiling`, before and after the load, the higher kept; goal
   >= 2x at c=32). Each model is served alone from a folder of hard links, and the load starts
   once the service has settled (:func:`settle`: with ``IMGCLS_WORKERS=auto`` its workers are
   still starting for a while after ``/readyz`` answers 200).
3. **startup and memory** (photos and vgg16-48 unless ``--startup-models``): seconds from the
   spawn to ``/readyz`` 200 and until settled, then RSS and PSS of the service's processes
   after a second of load; SavedModel and runtime alternating, medians.
4. **publish cost**: seconds of ``compile_runtimes`` (its "compiled runtimes in X s") and the
   size of ``runtimes/`` against the SavedModel's. Measured when this run publishes a model,
   else by compiling it again on a copy when no figure is on record for that version
   (``--remeasure-publish``: always); kept in ``publish-cost.json``.

Writes ``bench/results/runtimes/results.json`` and ``summary.md`` and prints the summary:
about 10 minutes on 2 cores once the models exist. ``--quick`` is a short smoke run of the same
parts (about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench import references
from bench.servers import ROOT, _children

DEFAULT_OUT = ROOT / "bench" / "results" / "runtimes"
DEFAULT_CACHE = ROOT / "bench" / "results" / "models"  # the bench's shared model cache
DIGITS = "digits"
PHOTOS = "photos"
HEAVY_ARCH = "vgg16"
HEAVY_SIDE = 48
HEAVY = f"{HEAVY_ARCH}-{HEAVY_SIDE}"
DIGITS_EPOCHS = 5
BATCH_SIZES = (1, 8, 32)
THREADS = (1, 2)
SAVEDMODEL = "savedmodel"
#: Photo crops the compute-heavy model's artifacts are checked on (it has no data of its own).
HEAVY_TEST_IMAGES = 500
HEAVY_TEST_SEED = 11
HEAVY_CALIBRATION_SEED = 12
#: The goals of issue 24, at c=32 (the bench's goal point).
GOAL_PHOTOS_X_BARE = 3.0
GOAL_HEAVY_X_COMPUTE = 2.0
GOAL_CONCURRENCY = 32
_COMPILED_RE = re.compile(r"compiled runtimes in ([0-9.]+) s")


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class Model:
    """One model under test: its models folder, its newest version, its input size."""

    name: str
    models_dir: Path
    version_dir: Path
    height: int
    width: int

    @classmethod
    def newest(cls, models_dir: Path, name: str) -> Model:
        version_dir = newest_version_dir(models_dir, name)
        meta = read_metadata(version_dir)
        return cls(name, models_dir, version_dir, meta["input"]["height"], meta["input"]["width"])

    @property
    def metadata(self) -> dict[str, Any]:
        return read_metadata(self.version_dir)

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        report = self.metadata.get("runtimes") or {}
        return list(report.get("artifacts") or [])


def read_metadata(version_dir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((version_dir / "metadata.json").read_text())
    return meta


def versions(models_dir: Path, name: str) -> list[Path]:
    """The published versions of ``name`` in ``models_dir``, oldest first."""
    found = [
        path.parent
        for path in (models_dir / name).glob("*/metadata.json")
        if path.parent.name.isdigit()
    ]
    return sorted(found, key=lambda path: int(path.name))


def newest_version_dir(models_dir: Path, name: str) -> Path:
    found = versions(models_dir, name)
    if not found:
        raise FileNotFoundError(f"no version of {name} in {models_dir}")
    return found[-1]


def has_runtimes(version_dir: Path) -> bool:
    report = read_metadata(version_dir).get("runtimes") or {}
    return bool(report.get("artifacts"))


def _run_logged(command: list[str], log_path: Path) -> tuple[str, str, float]:
    """Run ``command`` from the checkout, its output to ``log_path``; (stdout, stdout and
    stderr, wall seconds)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    log_path.write_text(f"$ {shlex.join(command)}\n{output}")
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({log_path}):\n{output[-3000:]}")
    return done.stdout, output, wall


def compiled_seconds(output: str) -> float | None:
    """The figure of ``compile_runtimes``' last "compiled runtimes in X s" line in ``output``."""
    found = _COMPILED_RE.findall(output)
    return float(found[-1]) if found else None


def ensure_digits(models_dir: Path, logs: Path) -> tuple[Model, dict[str, Any] | None]:
    """``digits`` in ``models_dir`` with its runtimes: trained there (``--epochs 5``) when its
    newest version has none. Returns the model and, when trained now, the publish's cost."""
    existing = versions(models_dir, DIGITS)
    if existing and has_runtimes(existing[-1]):
        return Model.newest(models_dir, DIGITS), None
    log(f"training {DIGITS} into {models_dir} ({DIGITS_EPOCHS} epochs, runtimes compiled) ...")
    command = [
        sys.executable,
        "training/train.py",
        "--epochs",
        str(DIGITS_EPOCHS),
        "--models-dir",
        str(models_dir),
        "--run-dir",
        str(models_dir / ".runs" / DIGITS),
        "--verbose",
        "0",
    ]
    _, output, wall = _run_logged(command, logs / "train-digits.log")
    return Model.newest(models_dir, DIGITS), {
        "how": "training/train.py (a whole publish)",
        "compile_s": compiled_seconds(output),
        "command_wall_s": round(wall, 1),
    }


def compile_existing(version_dir: Path, logs: Path) -> dict[str, Any]:
    """``python -m training.compile version_dir`` (in place); its cost."""
    command = [sys.executable, "-m", "training.compile", str(version_dir)]
    name = f"compile-{version_dir.parent.name}-{version_dir.name}.log"
    _, output, wall = _run_logged(command, logs / name)
    return {
        "how": "python -m training.compile",
        "compile_s": compiled_seconds(output),
        "command_wall_s": round(wall, 1),
    }


def ensure_photos(cache: Path, logs: Path) -> tuple[Model, list[Path], dict[str, Any] | None]:
    """The bench's ``photos`` model and served photos (:func:`bench.photos.ensure_photo_workload`
    with its defaults, also under ``--quick``: the cache is shared with ``python -m bench``);
    a version published before runtimes existed is compiled in place."""
    from bench.photos import ensure_photo_workload

    workload = ensure_photo_workload(cache)
    model = Model.newest(cache, PHOTOS)
    if has_runtimes(model.version_dir):
        return model, workload.served, None
    log(f"compiling {model.version_dir} (published before runtimes) ...")
    return model, workload.served, compile_existing(model.version_dir, logs)


def photo_crops(count: int, side: int, seed: int) -> tuple[Any, Any]:
    """``count`` random square crops of scikit-learn's two sample photos at ``side`` pixels:
    (float32 (N, side, side, 3) 0..255, int64 labels: the photo each came from)."""
    import numpy as np
    from PIL import Image

    from bench.photos import sample_photos

    sources = sample_photos()
    names = sorted(sources)
    rng = np.random.default_rng(seed)
    images = np.zeros((count, side, side, 3), np.float32)
    labels = np.zeros(count, np.int64)
    for index in range(count):
        label = index % len(names)
        source = sources[names[label]]
        rows, cols = source.shape[:2]
        size = int(rng.integers(side, min(rows, cols) + 1))
        top = int(rng.integers(0, rows - size + 1))
        left = int(rng.integers(0, cols - size + 1))
        crop = Image.fromarray(source[top : top + size, left : left + size])
        images[index] = np.asarray(crop.resize((side, side), Image.Resampling.BILINEAR))
        labels[index] = label
    return images, labels


def publish_heavy_compiled(models_dir: Path, arch: str, side: int) -> dict[str, Any]:
    """The compute-heavy model of :func:`bench.models.publish_heavy` (same architecture, seed
    and random weights), published with its runtimes compiled. It has no data: the artifacts
    are checked on :data:`HEAVY_TEST_IMAGES` photo crops (labels: which photo) and int8 is
    calibrated on others. Returns the version folder and the cost of ``compile_runtimes``."""
    import logging

    import keras

    from bench.models import heavy_name
    from contract.metadata import InputSpec
    from training.architectures import build
    from training.export import export_saved_model, publish
    from training.runtimes import CALIBRATION_IMAGES, HeldOut, compile_runtimes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    num_classes = 10
    keras.utils.set_random_seed(0)
    model = build(arch, (side, side, 3), num_classes)
    test = HeldOut(*photo_crops(HEAVY_TEST_IMAGES, side, HEAVY_TEST_SEED))
    calibration, _ = photo_crops(CALIBRATION_IMAGES, side, HEAVY_CALIBRATION_SEED)
    cost: dict[str, Any] = {"how": "bench.runtimes publish-heavy (training.export.publish)"}

    def compile_now(tmp: Path) -> Any:
        started = time.monotonic()
        report = compile_runtimes(model, tmp, test, calibration)
        cost["compile_s"] = round(time.monotonic() - started, 1)
        return report

    started = time.monotonic()
    _, path = publish(
        models_dir=models_dir,
        name=heavy_name(arch, side),
        write_artifacts=lambda tmp: export_saved_model(model, tmp),
        input_spec=InputSpec(height=side, width=side, channels=3, color_mode="rgb"),
        class_names=[str(i) for i in range(num_classes)],
        arch=arch,
        parameter_count=int(model.count_params()),
        training={
            "note": "random weights: a benchmark model, never trained (bench.runtimes: the "
            "runtimes checked on photo crops)"
        },
        data_fingerprint="",
        metrics={},
        compile_runtimes=compile_now,
    )
    cost["publish_s"] = round(time.monotonic() - started, 1)
    return {"version_dir": str(path), **cost}


def ensure_heavy(models_dir: Path, logs: Path) -> tuple[Model, dict[str, Any] | None]:
    """``vgg16-48`` with its runtimes in ``models_dir`` (published on first use, in its own
    process: TensorFlow and OpenVINO stay out of this one)."""
    existing = versions(models_dir, HEAVY)
    if existing and has_runtimes(existing[-1]):
        return Model.newest(models_dir, HEAVY), None
    log(f"publishing {HEAVY} (random weights) with its runtimes into {models_dir} ...")
    command = [
        sys.executable,
        "-m",
        "bench.runtimes",
        "publish-heavy",
        "--models-dir",
        str(models_dir),
    ]
    stdout, _, _ = _run_logged(command, logs / f"publish-{HEAVY}.log")
    cost: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    cost.pop("version_dir", None)
    return Model.newest(models_dir, HEAVY), cost


# --------------------------------------------------------------------------- 1. in-process

#: Lines a worker answers on its stdout start with this (anything else there is a library's).
_WORKER_PREFIX = "RUNTIMES-JSON "


def _worker_say(payload: dict[str, Any], out: IO[str]) -> None:
    out.write(_WORKER_PREFIX + json.dumps(payload) + "\n")
    out.flush()


def run_worker(threads: int, version_dirs: list[Path]) -> int:
    """``python -m bench.runtimes worker``: load every version's SavedModel and artifacts with
    ``threads`` threads, then time what the parent asks, one request line at a time
    (``{"model", "runtime", "batch", "seconds"}`` -> ``{"images_per_s", "calls", ...}``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = sys.stdout
    sys.stdout = sys.stderr  # a library's print must not reach the parent's pipe
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from contract.metadata import verify_version_dir
    from contract.runtimes import RUNTIMES_DIR, cpu_flags
    from service.serving.model_store import load_saved_model
    from service.serving.runtimes import OpenVINONetwork, static_batch_sizes
    from service.settings import Settings

    flags = cpu_flags()
    predictors: dict[tuple[str, str], Any] = {}
    sizes: dict[str, tuple[int, int]] = {}
    skipped: list[str] = []
    for version_dir in version_dirs:
        metadata = verify_version_dir(version_dir, repository_root=version_dir.parent.parent)
        name = metadata.name
        sizes[name] = (metadata.input.height, metadata.input.width)
        predictors[(name, SAVEDMODEL)] = load_saved_model(version_dir, metadata).predict_savedmodel
        for artifact in metadata.runtimes.artifacts if metadata.runtimes else []:
            if not set(artifact.cpu_flags) <= flags:
                skipped.append(f"{name}/{artifact.name}: needs {artifact.cpu_flags}")
                continue
            folder = version_dir / RUNTIMES_DIR / artifact.name
            # compiled as the service compiles it for its default batcher
            batch_sizes = static_batch_sizes(metadata, Settings().max_batch_size)
            network = OpenVINONetwork(folder, artifact, threads, batch_sizes)
            predictors[(name, artifact.name)] = network.predict
    _worker_say({"ready": [list(key) for key in predictors], "skipped": skipped}, out)
    rng = np.random.default_rng(0)
    for line in sys.stdin:
        if not line.strip():
            continue
        ask = json.loads(line)
        height, width = sizes[ask["model"]]
        batch = rng.uniform(0, 255, (ask["batch"], height, width, 3)).astype(np.float32)
        predict = predictors[(ask["model"], ask["runtime"])]
        cpu_started = time.process_time()
        predict(batch)  # warm this shape
        calls = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < ask["seconds"] or calls < 2:
            predict(batch)
            calls += 1
        _worker_say(
            {
                **ask,
                "calls": calls,
                "images_per_s": round(calls * ask["batch"] / elapsed, 2),
                "ms_per_call": round(1000 * elapsed / calls, 3),
                "cpu_s": round(time.process_time() - cpu_started, 4),
            },
            out,
        )
    return 0


class Worker:
    """A ``run_worker`` process with ``threads`` threads, driven over its stdin and stdout."""

    def __init__(self, threads: int, version_dirs: list[Path], log_path: Path) -> None:
        self.threads = threads
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "bench.runtimes", "worker", "--threads", str(threads)]
        command += [str(path) for path in version_dirs]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.log_path = log_path
        self.available: set[tuple[str, ...]] = set()
        self.skipped: list[str] = []

    def wait_loaded(self) -> None:
        """Wait for the worker's hello: every model loaded."""
        hello = self._answer()
        self.available = {tuple(key) for key in hello["ready"]}
        self.skipped = hello["skipped"]

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(_WORKER_PREFIX):
                answer: dict[str, Any] = json.loads(line[len(_WORKER_PREFIX) :])
                return answer
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the {self.threads}-thread worker died; its log:\n{tail}")

    def time(self, model: str, runtime: str, batch: int, seconds: float) -> dict[str, Any]:
        """One timing; adds ``other_cores``: what the rest of the machine used meanwhile."""
        from bench.servers import box_busy_cpu_s

        assert self.process.stdin is not None
        ask = {"model": model, "runtime": runtime, "batch": batch, "seconds": seconds}
        box, wall = box_busy_cpu_s(), time.monotonic()
        self.process.stdin.write(json.dumps(ask) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        busy, wall = box_busy_cpu_s() - box, time.monotonic() - wall
        answer["other_cores"] = round(max(0.0, busy - answer["cpu_s"]) / wall, 2)
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def rotated(items: list[Any], shift: int) -> list[Any]:
    """``items`` started at ``shift`` (modulo its length): the order interleaved rounds take."""
    if not items:
        return []
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure_in_process(
    models: list[Model], logs: Path, *, rounds: int, seconds: float, threads: Iterable[int]
) -> dict[str, Any]:
    """images/s of every (model, runtime, batch size, threads): one worker per thread count,
    loaded once; cell by cell the workers take turns (never computing at once), runtimes and
    thread counts in rotating order, ``rounds`` times; the median of the rounds is kept."""
    counts = list(threads)
    dirs = [model.version_dir for model in models]
    log(f"in-process: starting {len(counts)} worker(s) ({', '.join(map(str, counts))} thread(s))")
    workers: dict[int, Worker] = {}
    samples: dict[tuple[str, str, int, int], list[float]] = {}
    other: list[float] = []
    try:
        for n in counts:  # they load in parallel
            workers[n] = Worker(n, dirs, logs / f"worker-{n}-threads.log")
        for worker in workers.values():
            worker.wait_loaded()
        for number in range(rounds):
            started = time.monotonic()
            cell = 0
            for model in models:
                runtimes = [SAVEDMODEL, *(a["name"] for a in model.artifacts)]
                for batch in BATCH_SIZES:
                    for n in rotated(counts, number + cell):
                        for runtime in rotated(runtimes, number + cell):
                            if (model.name, runtime) not in workers[n].available:
                                continue
                            answer = workers[n].time(model.name, runtime, batch, seconds)
                            key = (model.name, runtime, batch, n)
                            samples.setdefault(key, []).append(answer["images_per_s"])
                            other.append(answer["other_cores"])
                        cell += 1
            log(f"  round {number + 1}/{rounds}: {time.monotonic() - started:.0f} s")
        skipped = sorted({item for worker in workers.values() for item in worker.skipped})
    finally:
        for worker in workers.values():
            worker.close()
    rows = []
    for (model_name, runtime, batch, n), values in samples.items():
        rows.append(
            {
                "model": model_name,
                "runtime": runtime,
                "batch_size": batch,
                "threads": n,
                "images_per_s": round(statistics.median(values), 1),
                "rounds_images_per_s": values,
            }
        )
    return {
        "rounds": rounds,
        "seconds_per_timing": seconds,
        "threads": counts,
        "batch_sizes": list(BATCH_SIZES),
        "rows": rows,
        "skipped": skipped,
        "other_load_cores": _spread(other),
    }


def _spread(values: list[float]) -> dict[str, float]:
    """Median and range of ``values`` (0s when empty)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def recorded_checks(model: Model) -> list[dict[str, Any]]:
    """Each artifact's figures as its publish recorded them (metadata.json ``runtimes``)."""
    report = model.metadata.get("runtimes") or {}
    rows = []
    for artifact in report.get("artifacts") or []:
        rows.append(
            {
                "artifact": artifact["name"],
                "precision": artifact["precision"],
                "network_input": artifact["network_input"],
                "settings": artifact.get("settings", {}),
                "cpu_flags": artifact.get("cpu_flags", []),
                "top1_agreement": artifact["top1_agreement"],
                "max_abs_difference": artifact["max_abs_difference"],
                "test_accuracy": artifact["test_accuracy"],
                "test_images": artifact["test_images"],
                "passed": artifact["passed"],
                "reason": artifact.get("reason", ""),
                "recorded_images_per_s": artifact["images_per_s"],
            }
        )
    return rows


# --------------------------------------------------------------------------- serving repositories


def serving_repository(model: Model, root: Path) -> Path:
    """A models folder holding only ``model``'s version (hard links, remade each run): the
    service serves every model folder it finds, and each model is measured alone."""
    repo = root / model.name
    if repo.exists():
        shutil.rmtree(repo)
    target = repo / model.name / model.version_dir.name
    target.parent.mkdir(parents=True)
    shutil.copytree(model.version_dir, target, copy_function=os.link)
    return repo


def _status_kib(pid: int, path: str, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/{path}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(_children(current))
    return pids


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def tree_memory(pid: int) -> dict[str, Any]:
    """Resident memory of ``pid`` and its descendants: VmRSS summed (shared pages counted in
    each process) and Pss summed (shared pages split), MiB; the processes and the workers
    (the supervisor's spawned children) among them."""
    pids = tree_pids(pid)
    rss = [_status_kib(p, "status", "VmRSS") for p in pids]
    pss = [_status_kib(p, "smaps_rollup", "Pss") for p in pids]
    return {
        "processes": len(pids),
        "workers": sum(_is_worker(p) for p in pids),
        "rss_mib": round(sum(rss) / 1024, 1),
        "pss_mib": round(sum(pss) / 1024, 1),
        "rss_mib_each": [round(value / 1024, 1) for value in rss],
    }


#: The service is settled once its worker count has held this long (seconds) ...
SETTLE_QUIET_S = 2.5
#: ... or after this long in any case.
SETTLE_TIMEOUT_S = 120.0


def _worker_count(pid: int) -> int:
    return sum(_is_worker(p) for p in tree_pids(pid))


def settle(server: Any, cpus: int | None = None) -> float:
    """Wait until the service runs the workers it will keep and return the seconds from the
    call to the last change of their number.

    With ``IMGCLS_WORKERS=auto`` (the default) ``/readyz`` answers 200 as soon as the first
    worker, which measures the model, is ready. A model that bounds throughput keeps it alone;
    otherwise one worker per CPU starts then and loads while it serves (one more than the CPUs,
    for a while), and it retires once they are ready. Settled: at most one worker per CPU, the
    same number for :data:`SETTLE_QUIET_S`. A process without workers (a bare app) settles at
    once."""
    limit = cpus if cpus is not None else len(os.sched_getaffinity(0))
    started = time.monotonic()
    last_change = started
    count = _worker_count(server.process.pid)
    while count > limit or time.monotonic() - last_change < SETTLE_QUIET_S:
        if time.monotonic() - started > SETTLE_TIMEOUT_S or server.process.poll() is not None:
            break
        time.sleep(0.2)
        now = _worker_count(server.process.pid)
        if now != count:
            count, last_change = now, time.monotonic()
    return last_change - started


def served_runtime(url: str, model: str) -> dict[str, Any]:
    """What ``GET /models`` says computes ``model``'s newest served version (its ``runtime``)."""
    try:
        with urllib.request.urlopen(url + "/models", timeout=10) as response:
            listing = json.loads(response.read())
    except OSError as exc:
        return {"error": str(exc)}
    for entry in listing.get("models", []):
        if entry.get("name") == model:
            rows = [row for row in entry.get("versions", []) if "runtime" in row]
            if rows:
                newest = max(rows, key=lambda row: row["version"])
                return {"version": newest["version"], **newest["runtime"]}
    return {"error": f"no served version of {model} in /models"}


# --------------------------------------------------------------------------- 2. end to end


@dataclass
class Setup:
    """What the end-to-end and startup parts share."""

    out: Path
    cpu: int | None  # the CPU wrk is pinned to
    compiled: str  # IMGCLS_RUNTIME of the service with the runtime ("auto")
    duration_s: int
    repeats: int
    levels: tuple[int, ...]
    compute_seconds: float
    workers: str | None = None  # IMGCLS_WORKERS of every service (None: its default, auto)

    @property
    def logs(self) -> Path:
        return self.out / "logs"


def _service_spec(setup: Setup, repo: Path, model: str, log_name: str, runtime: str) -> Any:
    """Spawn the service on ``runtime`` (with ``--workers`` when given)."""
    from bench.servers import service_spec

    extra = {"workers": setup.workers} if setup.workers else {}
    return service_spec(repo, model, setup.logs, log_name, runtime=runtime, **extra)


def _service_specs(setup: Setup, repo: Path, model: str, tag: str) -> dict[str, tuple[Any, str]]:
    return {
        runtime: _service_spec(setup, repo, model, f"{tag}-{model}-{runtime}", runtime)
        for runtime in (SAVEDMODEL, setup.compiled)
    }


@contextmanager
def _started(specs: dict[str, tuple[Any, str]]) -> Iterator[dict[str, Any]]:
    from bench.harness import start_servers, stop_all

    servers = start_servers(specs)
    try:
        for server in servers.values():
            settle(server)
        yield servers
    finally:
        stop_all(servers.values())


def _runs_json(runs: dict[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [level.to_dict() for level in levels] for name, levels in runs.items()}


def _at(runs: dict[str, list[dict[str, Any]]], name: str, concurrency: int) -> dict[str, Any]:
    return next(level for level in runs[name] if level["concurrency"] == concurrency)


def measure_photos_e2e(
    setup: Setup, model: Model, repo: Path, served: list[Path]
) -> dict[str, Any]:
    """Photos through the service, SavedModel against the runtime, beside the bare decode
    ceiling (the existing photo workload), interleaved."""
    from bench import loadgen
    from bench.harness import Runner
    from bench.servers import bare_spec

    log(
        f"end to end, {model.name}: the service on {SAVEDMODEL} and on {setup.compiled}, "
        "beside the bare ceiling"
    )
    requests = [[(path.name, path.read_bytes())] for path in served]
    script = loadgen.write_rotating_script(setup.out / "scripts", requests, "photos")
    specs = _service_specs(setup, repo, model.name, "e2e")
    specs["bare_ceiling"] = bare_spec(
        setup.logs, "e2e-bare-ceiling-photos", height=model.height, width=model.width
    )
    runner = Runner({1: script}, setup.cpu, single_image_only=frozenset({"bare_ceiling"}))
    with _started(specs) as servers:
        runtimes = {
            name: served_runtime(servers[name].url, model.name)
            for name in specs
            if name != "bare_ceiling"
        }
        runs = _runs_json(
            runner.interleaved(
                servers,
                [(c, 1) for c in setup.levels],
                setup.duration_s,
                prefix="photos ",
                repeats=setup.repeats,
            )
        )
        memory = {name: tree_memory(server.process.pid) for name, server in servers.items()}
    ratios = {
        name: {
            str(c): round(
                _at(runs, name, c)["images_per_s"] / _at(runs, "bare_ceiling", c)["images_per_s"], 2
            )
            for c in setup.levels
        }
        for name in runs
        if name != "bare_ceiling"
    }
    return {
        "version_dir": str(model.version_dir),
        "runtimes": runtimes,
        "runs": runs,
        "x_bare_ceiling": ratios,
        "memory_after_load": memory,
    }


#: Batch sizes of the compute ceiling here (vgg16-48 peaks at 32 or 64; 1 and 8 are far below).
CEILING_BATCH_SIZES = "16,32,64"


def compute_ceiling(version_dir: Path, seconds: float) -> dict[str, Any]:
    """:func:`bench.references.compute_ceiling` (a fresh process, TensorFlow's default
    threads) at :data:`CEILING_BATCH_SIZES`; its JSON."""
    return references.compute_ceiling(version_dir, seconds, CEILING_BATCH_SIZES)


def measure_heavy_e2e(setup: Setup, model: Model, repo: Path, png: bytes) -> dict[str, Any]:
    """The compute-heavy model through the service (the digit PNG, as ``python -m bench``
    sends it), SavedModel against the runtime, interleaved; against the SavedModel's compute
    ceiling (in-process, its best batch size), measured before each round of load runs and
    after the last: the best of them is the ceiling (noise cannot flatter the service), and
    each run is also read against the better of the two measured around it."""
    from bench.digits import write_scripts
    from bench.harness import Runner, median_level

    log(
        f"end to end, {model.name}: the service on {SAVEDMODEL} and on {setup.compiled}, "
        "against the SavedModel's compute ceiling"
    )
    scripts = write_scripts(setup.out / "scripts", png, (1,))
    runner = Runner(scripts, setup.cpu)
    points = [(c, 1) for c in setup.levels]
    ceilings: list[dict[str, Any]] = []
    levels: dict[tuple[str, int], list[Any]] = {}
    with _started(_service_specs(setup, repo, model.name, "e2e")) as servers:
        runtimes = {
            name: served_runtime(server.url, model.name) for name, server in servers.items()
        }
        for repeat in range(setup.repeats):
            ceilings.append(compute_ceiling(model.version_dir, setup.compute_seconds))
            order = rotated(list(servers), repeat)
            runs = runner.interleaved(
                {name: servers[name] for name in order},
                points,
                setup.duration_s,
                prefix=f"{model.name} #{repeat + 1} ",
            )
            for name, measured in runs.items():
                for level in measured:
                    levels.setdefault((name, level.concurrency), []).append(level)
        memory = {name: tree_memory(server.process.pid) for name, server in servers.items()}
    ceilings.append(compute_ceiling(model.version_dir, setup.compute_seconds))
    rates = [result["images_per_s"] for result in ceilings]
    best = max(ceilings, key=lambda result: result["images_per_s"])
    ceiling = best["images_per_s"]
    runs_json: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
    per_run: dict[str, dict[str, list[float]]] = {name: {} for name in runtimes}
    for (name, concurrency), measured in levels.items():
        runs_json[name].append(median_level(list(measured)).to_dict())
        per_run[name][str(concurrency)] = [
            round(level.images_per_s / max(rates[i], rates[i + 1]), 2)
            for i, level in enumerate(measured)
        ]
    ratios = {
        name: {
            str(c): round(_at(runs_json, name, c)["images_per_s"] / ceiling, 2)
            for c in setup.levels
        }
        for name in runs_json
    }
    return {
        "version_dir": str(model.version_dir),
        "runtimes": runtimes,
        "compute_ceiling": {**best, "measurements_images_per_s": rates},
        "runs": runs_json,
        "x_compute_ceiling": ratios,
        "x_compute_ceiling_run_by_run": per_run,
        "memory_after_load": memory,
    }


# --------------------------------------------------------------------------- 3. startup, memory


def _wait_ready(server: Any, timeout_s: float = 180.0) -> float | None:
    """Seconds from now until ``/readyz`` answers 200 (polled every 50 ms); None on failure."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.process.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    return None


def startup_once(
    setup: Setup, model: Model, repo: Path, runtime: str, script: Path, index: int
) -> dict[str, Any]:
    """One start of the service on ``runtime``: seconds to ``/readyz`` 200 (from just before
    the process is spawned), then a second of load (wrk, c=8: every batch size up to 8) and
    the memory of its processes."""
    from bench.harness import Runner

    started = time.monotonic()
    server, _ = _service_spec(
        setup, repo, model.name, f"startup-{model.name}-{runtime}-{index}", runtime
    )
    try:
        waited = _wait_ready(server)
        if waited is None:
            raise RuntimeError(f"{server.name} did not become ready:\n{server.log_tail()}")
        ready_s = time.monotonic() - started
        settled_s = ready_s + settle(server)
        serving = served_runtime(server.url, model.name)
        Runner({1: script}, setup.cpu).warm(server)
        memory = tree_memory(server.process.pid)
    finally:
        server.stop()
    return {
        "ready_s": round(ready_s, 2),
        "settled_s": round(settled_s, 2),
        "runtime": serving,
        **memory,
    }


def measure_startup(
    setup: Setup, entries: list[tuple[Model, Path, Path]], rounds: int
) -> dict[str, Any]:
    """Each model's service started ``rounds`` times on the SavedModel and on the runtime,
    alternating (order rotating), one at a time; medians."""
    log(f"startup and memory: {rounds} start(s) each on {SAVEDMODEL} and {setup.compiled}")
    result: dict[str, Any] = {}
    for model, repo, script in entries:
        samples: dict[str, list[dict[str, Any]]] = {SAVEDMODEL: [], setup.compiled: []}
        for number in range(rounds):
            for runtime in rotated(list(samples), number):
                sample = startup_once(setup, model, repo, runtime, script, number)
                samples[runtime].append(sample)
                log(
                    f"  {model.name} on {runtime}: ready after {sample['ready_s']:.1f} s, settled "
                    f"after {sample['settled_s']:.1f} s, {sample['workers']} worker(s), "
                    f"{sample['rss_mib']:.0f} MiB RSS / {sample['pss_mib']:.0f} MiB PSS "
                    f"(serving {sample['runtime'].get('name')})"
                )
        result[model.name] = {
            runtime: {
                "ready_s": round(statistics.median(s["ready_s"] for s in runs), 2),
                "settled_s": round(statistics.median(s["settled_s"] for s in runs), 2),
                "rss_mib": round(statistics.median(s["rss_mib"] for s in runs), 1),
                "pss_mib": round(statistics.median(s["pss_mib"] for s in runs), 1),
                "runtime": runs[-1]["runtime"],
                "samples": runs,
            }
            for runtime, runs in samples.items()
        }
    return result


# --------------------------------------------------------------------------- 4. publish cost


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def sizes(version_dir: Path) -> dict[str, Any]:
    """Bytes of the SavedModel (saved_model.pb, variables/, assets/, fingerprint.pb), of the
    whole version without runtimes/, of runtimes/ and of each artifact."""
    from contract.runtimes import RUNTIMES_DIR

    saved = sum(
        folder_bytes(path) if path.is_dir() else path.stat().st_size
        for path in (
            version_dir / name
            for name in ("saved_model.pb", "variables", "assets", "fingerprint.pb")
        )
        if path.exists()
    )
    runtimes_dir = version_dir / RUNTIMES_DIR
    whole = folder_bytes(version_dir)
    compiled = folder_bytes(runtimes_dir) if runtimes_dir.is_dir() else 0
    artifacts = (
        {
            folder.name: folder_bytes(folder)
            for folder in sorted(runtimes_dir.iterdir())
            if folder.is_dir()
        }
        if runtimes_dir.is_dir()
        else {}
    )
    return {
        "savedmodel_bytes": saved,
        "version_without_runtimes_bytes": whole - compiled,
        "runtimes_bytes": compiled,
        "artifact_bytes": artifacts,
        "runtimes_x_savedmodel": round(compiled / saved, 2) if saved else None,
    }


def remeasure_compile(model: Model, scratch: Path, logs: Path) -> dict[str, Any]:
    """The cost of compiling ``model`` again, on a copy (hard links, metadata.json rewritten
    there only: ``write_metadata`` replaces the file): ``python -m training.compile``, or for
    the compute-heavy model (no data, no Keras weights) a whole publish into a scratch folder."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compile-", dir=scratch) as tmp:
        if model.name == HEAVY:
            log(f"publish cost, {model.name}: publishing it again into a scratch folder ...")
            command = [sys.executable, "-m", "bench.runtimes", "publish-heavy", "--models-dir", tmp]
            stdout, _, wall = _run_logged(command, logs / f"remeasure-publish-{HEAVY}.log")
            cost: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
            cost.pop("version_dir", None)
            return {**cost, "command_wall_s": round(wall, 1)}
        from contract.runtimes import RUNTIMES_DIR

        log(f"publish cost, {model.name}: python -m training.compile on a copy ...")
        copy = Path(tmp) / model.name / model.version_dir.name
        shutil.copytree(
            model.version_dir,
            copy,
            copy_function=os.link,
            ignore=lambda folder, names: (
                [RUNTIMES_DIR] if Path(folder) == model.version_dir else []
            ),
        )
        return compile_existing(copy, logs)


# --------------------------------------------------------------------------- the report


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def in_process_markdown(result: dict[str, Any], checks: dict[str, list[dict[str, Any]]]) -> str:
    """One table per model: images/s (× the SavedModel at the same batch size and threads)."""
    rows = result["rows"]
    index = {(r["model"], r["runtime"], r["batch_size"], r["threads"]): r for r in rows}
    columns = [(b, n) for n in result["threads"] for b in result["batch_sizes"]]
    lines: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_name = {check["artifact"]: check for check in checks.get(model, [])}
        runtimes = list(dict.fromkeys(r["runtime"] for r in rows if r["model"] == model))
        runtimes.sort(key=lambda name: (name != SAVEDMODEL, name))
        head = " | ".join(f"b{b} {n}t" for b, n in columns)
        lines += [
            f"**{model}** (images/s, × SavedModel at the same batch and threads)",
            "",
            f"| runtime | {head} | top-1 agreement | max abs diff | passed |",
            "|---" * (len(columns) + 4) + "|",
        ]
        for runtime in runtimes:
            cells = []
            for b, n in columns:
                row = index.get((model, runtime, b, n))
                base = index.get((model, SAVEDMODEL, b, n))
                if row is None:
                    cells.append("-")
                elif runtime == SAVEDMODEL or base is None:
                    cells.append(_n(row["images_per_s"]))
                else:
                    ratio = row["images_per_s"] / base["images_per_s"]
                    cells.append(f"{_n(row['images_per_s'])} ({ratio:.2f})")
            check = by_name.get(runtime)
            tail = (
                f"{check['top1_agreement']:.4f} | {check['max_abs_difference']:.2g} | "
                f"{'yes' if check['passed'] else 'no: ' + check['reason']}"
                if check
                else "- | - | -"
            )
            lines.append(f"| {runtime} | {' | '.join(cells)} | {tail} |")
        lines.append("")
    return "\n".join(lines)


def _runtime_label(info: dict[str, Any]) -> str:
    if "error" in info:
        return f"? ({info['error']})"
    label = str(info.get("name", "?"))
    if info.get("fallback"):
        label += f" (fallback: {info['fallback']})"
    return label


def _other(level: dict[str, Any]) -> str:
    value = level.get("extra", {}).get("other_load_cores")
    return "-" if value is None else f"{value:.2f}"


def _workers(result: dict[str, Any], name: str) -> str:
    memory = result.get("memory_after_load", {}).get(name)
    return "-" if memory is None else str(memory["workers"])


def e2e_markdown(photos: dict[str, Any] | None, heavy: dict[str, Any] | None) -> str:
    """The end-to-end tables: each server's rate and its ratio to the workload's reference."""
    lines: list[str] = []
    if photos:
        levels = [int(c) for c in next(iter(photos["x_bare_ceiling"].values()))]
        head = " | ".join(
            f"c={c} req/s (× bare ceiling) | p50 / p99 ms | other load" for c in levels
        )
        lines += [
            "**photos** (640x480 JPEGs, one per request)",
            "",
            f"| server | IMGCLS_RUNTIME -> serving | workers | {head} |",
            "|---|---|---" + "|---" * (3 * len(levels)) + "|",
        ]
        for name in photos["runs"]:
            cells = []
            for c in levels:
                level = _at(photos["runs"], name, c)
                ratio = photos["x_bare_ceiling"].get(name, {}).get(str(c))
                rate = _n(level["rps"]) + (f" ({ratio:.2f})" if ratio is not None else "")
                cells += [rate, f"{level['p50_ms']:.0f} / {level['p99_ms']:.0f}", _other(level)]
            if name == "bare_ceiling":
                server, serving = "bare ceiling", "-"
            else:
                server = "service"
                serving = f"{name} -> {_runtime_label(photos['runtimes'][name])}"
            lines.append(
                f"| {server} | {serving} | {_workers(photos, name)} | {' | '.join(cells)} |"
            )
        lines.append("")
    if heavy:
        ceiling = heavy["compute_ceiling"]
        levels = [int(c) for c in next(iter(heavy["x_compute_ceiling"].values()))]
        head = " | ".join(
            f"c={c} img/s (× compute ceiling) | mean batch | other load" for c in levels
        )
        lines += [
            f"**{HEAVY}** (the digit PNG, one per request): the SavedModel's compute ceiling "
            f"{ceiling['images_per_s']:.1f} img/s at batch {ceiling['best_batch_size']} "
            f"(measured {', '.join(f'{v:.0f}' for v in ceiling['measurements_images_per_s'])} "
            "img/s before each round of load and after the last; the highest is used)",
            "",
            f"| server | IMGCLS_RUNTIME -> serving | workers | {head} |",
            "|---|---|---" + "|---" * (3 * len(levels)) + "|",
        ]
        for name in heavy["runs"]:
            cells = []
            for c in levels:
                level = _at(heavy["runs"], name, c)
                ratio = heavy["x_compute_ceiling"][name][str(c)]
                cells += [
                    f"{_n(level['images_per_s'])} ({ratio:.2f})",
                    str(level["mean_batch_size"]),
                    _other(level),
                ]
            serving = f"{name} -> {_runtime_label(heavy['runtimes'][name])}"
            lines.append(f"| service | {serving} | {_workers(heavy, name)} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def _repeats(level: dict[str, Any]) -> list[float]:
    """Every run's rate of a level, in run order (one when it ran once)."""
    runs = level.get("extra", {}).get("repeats_rps")
    return [float(v) for v in runs] if runs else [float(level["rps"])]


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The two goals of issue 24 at c=32: the ratio of the medians (as ``python -m bench``
    reports it), the SavedModel's beside it, and the ratio run by run (the runs of one repeat
    are back to back, so each pair saw about the same machine)."""
    rows: list[dict[str, Any]] = []
    compiled = results["compiled_runtime"]
    e2e = results.get("end_to_end", {})
    c = GOAL_CONCURRENCY
    photos = e2e.get(PHOTOS)
    if photos and str(c) in photos["x_bare_ceiling"].get(compiled, {}):
        bare = _repeats(_at(photos["runs"], "bare_ceiling", c))
        service = _repeats(_at(photos["runs"], compiled, c))
        rows.append(
            {
                "goal": f"photos c={c}: service ({compiled}) / bare ceiling",
                "measured": photos["x_bare_ceiling"][compiled][str(c)],
                "savedmodel": photos["x_bare_ceiling"][SAVEDMODEL][str(c)],
                "target": GOAL_PHOTOS_X_BARE,
                "per_run": [round(a / b, 2) for a, b in zip(service, bare, strict=False)],
            }
        )
    heavy = e2e.get(HEAVY)
    if heavy and str(c) in heavy["x_compute_ceiling"].get(compiled, {}):
        ceiling = heavy["compute_ceiling"]["images_per_s"]
        service = _repeats(_at(heavy["runs"], compiled, c))
        by_run = heavy.get("x_compute_ceiling_run_by_run", {}).get(compiled, {}).get(str(c))
        rows.append(
            {
                "goal": f"{HEAVY} c={c}: service ({compiled}) / SavedModel compute ceiling",
                "measured": heavy["x_compute_ceiling"][compiled][str(c)],
                "savedmodel": heavy["x_compute_ceiling"][SAVEDMODEL][str(c)],
                "target": GOAL_HEAVY_X_COMPUTE,
                "per_run": by_run or [round(a / ceiling, 2) for a in service],
            }
        )
    for row in rows:
        row["met"] = row["measured"] >= row["target"]
        row["distance"] = round(row["target"] - row["measured"], 2) if not row["met"] else 0.0
    return rows


def goals_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| goal | measured | run by run | with the SavedModel | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "yes" if row["met"] else f"**no** ({row['distance']:.2f} short)"
        per_run = ", ".join(f"{value:.2f}" for value in row.get("per_run", []))
        lines.append(
            f"| {row['goal']} | {row['measured']:.2f} | {per_run} | {row['savedmodel']:.2f} | "
            f">= {row['target']:g} | {met} |"
        )
    return "\n".join(lines) + "\n"


def startup_markdown(startup: dict[str, Any]) -> str:
    """Medians, and each start's figure in brackets (the worker count of ``IMGCLS_WORKERS=auto``
    is decided by one timing of the model at startup, and can differ from start to start)."""

    def each(row: dict[str, Any], key: str, form: str) -> str:
        return " / ".join(format(sample[key], form) for sample in row["samples"])

    lines = [
        "| model | IMGCLS_RUNTIME -> serving | /readyz 200 after, s | settled after, s | "
        "workers | RSS, MiB | PSS, MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, by_runtime in startup.items():
        for runtime, row in by_runtime.items():
            lines.append(
                f"| {model} | {runtime} -> {_runtime_label(row['runtime'])} | "
                f"{row['ready_s']:.1f} ({each(row, 'ready_s', '.1f')}) | "
                f"{row['settled_s']:.1f} ({each(row, 'settled_s', '.1f')}) | "
                f"{each(row, 'workers', 'd')} | "
                f"{row['rss_mib']:,.0f} ({each(row, 'rss_mib', ',.0f')}) | "
                f"{row['pss_mib']:,.0f} ({each(row, 'pss_mib', ',.0f')}) |"
            )
    return "\n".join(lines) + "\n"


def publish_markdown(publish: dict[str, Any]) -> str:
    lines = [
        "| model | compile_runtimes, s | measured by | SavedModel, MiB | runtimes/, MiB "
        "(× SavedModel) | per artifact, MiB |",
        "|---|---|---|---|---|---|",
    ]
    for model, row in publish.items():
        size = row["sizes"]
        cost = row.get("cost") or {}
        seconds = cost.get("compile_s")
        artifacts = ", ".join(
            f"{name.removeprefix('openvino-')} {_mib(value)}"
            for name, value in size["artifact_bytes"].items()
        )
        lines.append(
            f"| {model} | {'-' if seconds is None else f'{seconds:.1f}'} | "
            f"{cost.get('how', 'not measured')} | {_mib(size['savedmodel_bytes'])} | "
            f"{_mib(size['runtimes_bytes'])} ({size['runtimes_x_savedmodel']}) | {artifacts} |"
        )
    return "\n".join(lines) + "\n"


def summary_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    in_process = results["in_process"]
    parts = [
        f"## Compiled runtimes: `{results['command']}`",
        "",
        f"{results['started_at']}, {results['elapsed_s']:.0f} s; {machine['cpu_model']}, "
        f"{machine['usable_cores']} cores ({', '.join(machine['cpu_flags'])}); TensorFlow "
        f"{machine.get('tensorflow')}, OpenVINO {results['openvino']}; load average at the "
        f"start {machine['loadavg_at_start']}.",
        "",
        f"### In-process (median of {in_process['rounds']} interleaved rounds, "
        f"{in_process['seconds_per_timing']} s each; other load meanwhile "
        f"{in_process['other_load_cores']['median']} cores, "
        f"{in_process['other_load_cores']['min']}-{in_process['other_load_cores']['max']})",
        "",
        in_process_markdown(in_process, results["checks"]),
    ]
    if results.get("end_to_end"):
        e2e = results["end_to_end"]
        plan = results["plan"]
        parts += [
            f"### End to end (wrk {plan['duration_s']} s per point, {plan['repeats']} interleaved "
            "run(s), the median shown)",
            "",
            e2e_markdown(e2e.get(PHOTOS), e2e.get(HEAVY)),
            "### Goals",
            "",
            goals_markdown(results["goals"]),
        ]
    if results.get("startup"):
        parts += [
            f"### Startup and memory (median of {results['plan']['startup_rounds']} start(s); "
            "memory after 1 s of load at c=8)",
            "",
            startup_markdown(results["startup"]),
        ]
    parts += ["### Publish cost", "", publish_markdown(results["publish"])]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the run


def _load_costs(path: Path) -> dict[str, Any]:
    try:
        costs: dict[str, Any] = json.loads(path.read_text())
        return costs
    except (OSError, json.JSONDecodeError):
        return {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import loadgen
    from bench.digits import digit_png, write_scripts
    from bench.machine import machine_info

    out: Path = args.out
    logs = out / "logs"
    scratch = out / "models"
    logs.mkdir(parents=True, exist_ok=True)
    if loadgen.wrk_path() is None and not args.no_e2e:
        raise SystemExit("error: wrk is not installed (apt-get install wrk, or `make system-deps`)")
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": args.command_line,
        "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "openvino": _package_version("openvino"),
        "nncf": _package_version("nncf"),
        "compiled_runtime": args.compiled,
    }
    cost_file = out / "publish-cost.json"
    costs = _load_costs(cost_file)
    digits, digits_cost = ensure_digits(scratch, logs)
    photos, photo_paths, photos_cost = ensure_photos(args.cache, logs)
    heavy, heavy_cost = ensure_heavy(scratch, logs)
    models = [digits, photos, heavy]
    fresh = {digits.name: digits_cost, photos.name: photos_cost, heavy.name: heavy_cost}
    for model in models:
        log(
            f"model {model.name}: {model.version_dir} "
            f"({', '.join(a['name'] for a in model.artifacts) or 'no artifact'})"
        )
    results["models"] = {model.name: str(model.version_dir) for model in models}
    results["checks"] = {model.name: recorded_checks(model) for model in models}
    results["recorded"] = {
        model.name: {
            "savedmodel_images_per_s": (model.metadata.get("runtimes") or {}).get(
                "savedmodel_images_per_s"
            ),
            **{a["name"]: a["images_per_s"] for a in model.artifacts},
        }
        for model in models
    }

    # 1. in-process
    results["in_process"] = measure_in_process(
        models, logs, rounds=args.rounds, seconds=args.seconds, threads=THREADS
    )

    setup = Setup(
        out=out,
        cpu=loadgen.wrk_cpu(),
        compiled=args.compiled,
        duration_s=args.duration,
        repeats=args.repeats,
        levels=tuple(int(c) for c in args.levels.split(",")),
        compute_seconds=0.3 if args.quick else 2.0,
        workers=args.workers,
    )
    results["plan"] = {
        "duration_s": setup.duration_s,
        "repeats": setup.repeats,
        "levels": list(setup.levels),
        "startup_rounds": args.startup_rounds,
        "loadgen": f"wrk 1 thread pinned to CPU {setup.cpu}; servers unpinned",
        "service": "python -m service with its defaults but IMGCLS_RUNTIME"
        + (f" and IMGCLS_WORKERS={args.workers}" if args.workers else " (workers auto)")
        + "; each model alone in its models folder",
    }
    repos = {model.name: serving_repository(model, out / "repos") for model in models}
    png = digit_png()

    # 2. end to end
    if not args.no_e2e:
        results["end_to_end"] = {
            PHOTOS: measure_photos_e2e(setup, photos, repos[PHOTOS], photo_paths),
            HEAVY: measure_heavy_e2e(setup, heavy, repos[HEAVY], png),
        }
        results["goals"] = goals(results)

    # 3. startup and memory
    if args.startup_rounds:
        from bench import loadgen as lg

        digit_script = write_scripts(out / "scripts", png, (1,))[1]
        photo_script = lg.write_rotating_script(
            out / "scripts",
            [[(path.name, path.read_bytes())] for path in photo_paths],
            "photos",
        )
        scripts = {DIGITS: digit_script, PHOTOS: photo_script, HEAVY: digit_script}
        chosen = [model for model in models if model.name in args.startup_models.split(",")]
        results["startup"] = measure_startup(
            setup,
            [(model, repos[model.name], scripts[model.name]) for model in chosen],
            args.startup_rounds,
        )

    # 4. publish cost
    publish: dict[str, Any] = {}
    for model in models:
        key = str(model.version_dir)
        cost = fresh[model.name]
        if cost is None and (args.remeasure_publish or (key not in costs and not args.quick)):
            try:
                cost = remeasure_compile(model, out / "scratch", logs)
            except RuntimeError as exc:  # e.g. its training data is gone: the rest stands
                log(f"  could not compile {model.name} again: {str(exc)[:300]}")
        if cost is not None:
            costs[key] = {**cost, "measured_at": results["started_at"]}
        publish[model.name] = {"sizes": sizes(model.version_dir), "cost": costs.get(key)}
    cost_file.write_text(json.dumps(costs, indent=2) + "\n")
    results["publish"] = publish
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtimes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="the bench's model cache, where photos is trained (default bench/results/models)",
    )
    parser.add_argument(
        "--compiled",
        default="auto",
        help="IMGCLS_RUNTIME of the service with the runtime (default auto; or an artifact)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="in-process rounds (3)")
    parser.add_argument("--seconds", type=float, default=None, help="per in-process timing (0.5)")
    parser.add_argument("--duration", type=int, default=None, help="wrk seconds per point (4)")
    parser.add_argument("--repeats", type=int, default=None, help="end-to-end runs per point (3)")
    parser.add_argument("--startup-rounds", type=int, default=None, help="starts per runtime (3)")
    parser.add_argument(
        "--levels",
        default=str(GOAL_CONCURRENCY),
        help=f"end-to-end concurrencies, comma-separated (default {GOAL_CONCURRENCY}, the goals')",
    )
    parser.add_argument(
        "--startup-models",
        default=f"{PHOTOS},{HEAVY}",
        help=f"comma-separated models whose startup and memory are measured (default "
        f"{PHOTOS},{HEAVY}; {DIGITS} too: add it, each start is ~25 s here)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="IMGCLS_WORKERS of every service started (default: the service's own, auto)",
    )
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end part")
    parser.add_argument(
        "--remeasure-publish",
        action="store_true",
        help="compile each model again (on a copy; vgg16-48: a whole publish) to time it even "
        "when its cost is on record (default: only when it is not, and never with --quick)",
    )
    args = parser.parse_args(argv)
    defaults = (
        {
            "rounds": 1,
            "seconds": 0.15,
            "duration": 1,
            "repeats": 1,
            "startup_rounds": 1,
        }
        if args.quick
        else {
            "rounds": 3,
            "seconds": 0.5,
            "duration": 4,
            "repeats": 3,
            "startup_rounds": 3,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    given = argv if argv is not None else sys.argv[1:]
    args.command_line = shlex.join(["python", "-m", "bench.runtimes", *given])
    return args


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] in ("worker", "publish-heavy"):
        return _internal(given)
    args = parse_args(given)
    results = run(args)
    out: Path = args.out
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = summary_markdown(results)
    (out / "summary.md").write_text(summary)
    print()
    print(summary)
    print(f"wrote {out / 'results.json'}, {out / 'summary.md'}")
    return 0


def _internal(argv: list[str]) -> int:
    """The subcommands this module runs in processes of its own."""
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes")
    sub = parser.add_subparsers(dest="command", required=True)
    heavy = sub.add_parser("publish-heavy", help="publish vgg16-48 with its runtimes")
    heavy.add_argument("--models-dir", type=Path, required=True)
    worker = sub.add_parser("worker", help="the in-process timing worker")
    worker.add_argument("--threads", type=int, required=True)
    worker.add_argument("version_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args.threads, args.version_dirs)
    print(json.dumps(publish_heavy_compiled(args.models_dir, HEAVY_ARCH, HEAVY_SIDE)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
