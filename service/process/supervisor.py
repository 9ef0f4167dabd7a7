"""Several worker processes behind one port, each a whole single-process service.

Python runs one thread at a time per process, and one event loop per process: on a
small model the HTTP side (parsing, multipart, decoding) fills a core long before the model
does, so one process leaves the other cores to the model thread alone. Every worker here is
the same service as a single process (its own models, batcher per model, and
:class:`service.http.draining.DrainingServer`, so SIGTERM still makes each one unready first, then
drains), accepting from one listening socket the supervisor binds before starting them.

The supervisor forwards SIGTERM/SIGINT to the workers (they run in their own process group, so a
terminal's Ctrl-C reaches them once, through here), restarts a worker that dies while the
service is running, and stops everything if a worker cannot start (a configuration error is
the same in every worker).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from service.process.worker_report import READY_DIR_ENV, WAIT_READY_ENV, read_reports

logger = logging.getLogger(__name__)

#: Exit code of a worker whose server could not start (uvicorn's own value).
STARTUP_FAILURE = 3

#: Seconds between checks of the workers' health while serving.
POLL_S = 0.2

#: ``auto``: from this many seconds per image (the default model at full batch, measured by
#: the first worker with every core), the model, not HTTP, bounds throughput: one worker.
#: Measured on 2 cores: digits 0.2 ms (two workers: 1.6x one), photos 96x96 0.6 ms (two
#: workers: about even), VGG-16 48x48 5 ms (two workers: 0.8x one). See BENCHMARKS.md.
MODEL_BOUND_S = 0.002

#: Longest wait for a worker's default model to be ready before deciding without it.
PROBE_TIMEOUT_S = 600.0

#: Exit codes of a worker that could not start (bad settings, uvicorn's startup failure):
#: whatever stopped it would stop the next one too, so the service stops instead.
NOT_STARTING = (2, STARTUP_FAILURE)

#: A worker restarted more often than this within :data:`RESTART_WINDOW_S` is not restarted
#: again: something breaks every new one (a crash loop), and the service stops with an error.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def bind_socket(host: str, port: int) -> socket.socket:
    """The socket every worker accepts from (IPv6 when ``host`` is an IPv6 address): bound, not
    listening yet. The first worker's server listens when it starts (asyncio's ``create_server``
    does), so a client that comes earlier is refused at once instead of waiting unanswered in a
    queue nobody reads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


WorkerMain = Callable[[socket.socket], int]


def _worker_entry(target: WorkerMain, sock: socket.socket) -> None:
    os.setpgrp()  # signals come from the supervisor only, never twice from a terminal
    raise SystemExit(target(sock))


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(overrides: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` (None: removed) while a worker is spawned (a spawned
    process starts with a copy of it)."""
    saved = {key: os.environ.get(key) for key in overrides}
    try:
        _set_environment(overrides)
        yield
    finally:
        _set_environment(saved)


class Supervisor:
    """Runs ``count`` workers, each ``target(sock)``; :meth:`run` returns the exit code.

    Args:
        target: A module-level function (it is pickled into each spawned worker) that serves
            on the socket and returns its exit code.
        sock: The bound, listening socket.
        count: Number of workers (>= 1).
        worker_env: Environment overrides of every worker (None removes a variable).
        probe_env: When given (``--workers auto``), first measure the default model in a
            worker with these overrides that takes no requests: a model slower than
            ``model_bound_s`` per image gets ONE worker with these overrides (one batcher and
            every core for TensorFlow batch best); a cheaper one ``count`` workers with
            ``worker_env``.
        model_bound_s: Seconds per image from which a model, not HTTP, bounds throughput.
        on_worker_exit: Called with the pid of each worker that has exited (e.g. to drop its
            live gauges from the multiprocess metrics).
    """

    def __init__(
        self,
        target: WorkerMain,
        sock: socket.socket,
        count: int,
        *,
        worker_env: dict[str, str | None] | None = None,
        probe_env: dict[str, str | None] | None = None,
        model_bound_s: float = MODEL_BOUND_S,
        on_worker_exit: Callable[[int], object] | None = None,
    ) -> None:
        self._target = target
        self._sock = sock
        self._count = count
        self._worker_env = worker_env or {}
        self._probe_env = probe_env
        self._model_bound_s = model_bound_s
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._retiring: list[BaseProcess] = []
        self._restarts: dict[int, list[float]] = {}
        self._signalled: set[int] = set()
        self._signals: list[int] = []
        self._stopping = False
        self._failed = False
        self._ready_dir = Path(tempfile.mkdtemp(prefix="imgcls-workers-"))
        self._on_worker_exit = on_worker_exit
        self._exited: set[int] = set()

    def _spawn(
        self, index: int, env: dict[str, str | None], *, sock: socket.socket | None = None
    ) -> BaseProcess:
        process = self._context.Process(
            target=_worker_entry,
            args=(self._target, sock or self._sock),
            name=f"imgcls-worker-{index}",
        )
        with _environment(env):
            process.start()
        logger.info("worker %d started (pid %s)", index, process.pid)
        return process

    def _joining_env(self) -> dict[str, str | None]:
        """The environment of a worker that joins serving ones: it takes connections only once
        its models are served (:data:`WAIT_READY_ENV`)."""
        return {**self._worker_env, WAIT_READY_ENV: "1"}

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Forwarded at once (a Python-level handler, run by the main thread between bytecodes):
        # each worker turns unready the moment the supervisor is told, as one process would.
        self._signals.append(sig)
        self._forward(sig)

    def _forward(self, sig: int, *, only_new: bool = False) -> None:
        """Send ``sig`` to every live worker (``only_new``: to those not signalled yet, e.g.
        started while the first signal arrived)."""
        for process in [*self._workers, *self._retiring]:
            if process.pid is None or not process.is_alive():
                continue
            if only_new and process.pid in self._signalled:
                continue
            self._signalled.add(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            if self._probe_env is not None and self._count > 1:
                self._probe_then_start()
            else:
                # The first answers at once (503 until ready); the others join once ready, so
                # no client meets a worker still loading while another serves.
                joining = self._joining_env()
                self._workers = [
                    self._spawn(i, self._worker_env if i == 0 else joining)
                    for i in range(self._count)
                ]
            while not self._tick():
                time.sleep(POLL_S)
            return STARTUP_FAILURE if self._failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._ready_dir, ignore_errors=True)

    def _wait_for_reports(
        self, processes: Callable[[], list[BaseProcess]], timeout_s: float
    ) -> dict[int, float | None]:
        """The reports (pid -> seconds per image, None: no model to measure) once every one of
        ``processes()`` has reported or died, the service stops, or ``timeout_s`` passes.
        ``processes`` is asked anew each time: a worker that dies is restarted by
        :meth:`_tick`, and its replacement is waited for."""
        deadline = time.monotonic() + timeout_s
        reports: dict[int, float | None] = {}
        while time.monotonic() < deadline and not self._stopping:
            self._tick()
            reports = read_reports(self._ready_dir)
            if all(p.pid in reports or not p.is_alive() for p in processes()):
                break
            time.sleep(POLL_S)
        return reports

    def _probe_then_start(self) -> None:
        """Measure the default model in a first worker that serves meanwhile, with every core,
        then keep it alone (a model that bounds throughput) or hand over to the workers that
        suit the model.

        The first worker answers from the start (``/healthz`` 200, ``/readyz`` 503 until its
        models are served). Workers started after it take connections only once their models
        are served (:data:`WAIT_READY_ENV`), and the first one retires only then, finishing what
        it has without turning unready: readiness goes from 503 to 200 once, never back.
        """
        logger.info("the first worker measures the default model, serving meanwhile")
        first_env = {**(self._probe_env or {}), READY_DIR_ENV: str(self._ready_dir)}
        first = self._spawn(0, first_env)
        self._retiring.append(first)  # not restarted while it measures
        cost = self._wait_for_reports(lambda: [first], PROBE_TIMEOUT_S).get(first.pid or -1)
        if self._stopping:
            return
        if cost is not None and cost >= self._model_bound_s:
            logger.info(
                "the default model takes %.1f ms per image: the model bounds throughput, so one "
                "worker (one batcher, every core for TensorFlow) serves best; set "
                "IMGCLS_WORKERS to run more",
                cost * 1e3,
            )
            self._count, self._worker_env = 1, first_env
            if first.is_alive():  # it serves on (restarted like any worker from now on)
                self._retiring.remove(first)
                self._workers = [first]
            else:
                self._workers = [self._spawn(0, first_env)]
            return
        if cost is None:
            logger.warning("no default model measured; starting %d workers", self._count)
        else:
            logger.info(
                "the default model takes %.2f ms per image: HTTP and decoding bound "
                "throughput, so %d workers (one per CPU) serve best",
                cost * 1e3,
                self._count,
            )
        self._worker_env = {**self._worker_env, READY_DIR_ENV: str(self._ready_dir)}
        self._workers = [self._spawn(i + 1, self._joining_env()) for i in range(self._count)]
        self._wait_for_reports(lambda: self._workers, PROBE_TIMEOUT_S)
        if first.pid is not None and first.is_alive() and not self._stopping:
            logger.info("workers ready; the first worker retires (pid %s)", first.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(first.pid, signal.SIGUSR1)

    def _tick(self) -> bool:
        """Handle signals and dead workers; True once stopping and every worker has exited."""
        while self._signals:
            sig = self._signals.pop(0)  # already forwarded by _on_signal
            if not self._stopping:
                logger.info("%s: stopping the workers", signal.Signals(sig).name)
            self._stopping = True
        if self._stopping:
            self._forward(signal.SIGTERM, only_new=True)
        for process in [*self._workers, *self._retiring]:
            pid = process.pid
            if pid is not None and pid not in self._exited and not process.is_alive():
                self._exited.add(pid)
                if self._on_worker_exit is not None:
                    self._on_worker_exit(pid)
        for index, process in enumerate(self._workers):
            if process.is_alive() or self._stopping:
                continue
            now = time.monotonic()
            recent = [t for t in self._restarts.get(index, []) if now - t < RESTART_WINDOW_S]
            self._restarts[index] = [*recent, now]
            if process.exitcode in NOT_STARTING or len(recent) >= MAX_RESTARTS:
                logger.error(
                    "worker %d exited with %s (%d restarts in the last %g s); stopping the others",
                    index,
                    process.exitcode,
                    len(recent),
                    RESTART_WINDOW_S,
                )
                self._failed = True
                self._stopping = True
                self._forward(signal.SIGTERM)
                break
            logger.warning(
                "worker %d (pid %s) exited with %s; starting another",
                index,
                process.pid,
                process.exitcode,
            )
            # A replacement beside serving workers joins once ready; a lone one answers at once.
            env = self._joining_env() if len(self._workers) > 1 else self._worker_env
            self._workers[index] = self._spawn(index, env)
        return self._stopping and not any(
            process.is_alive() for process in [*self._workers, *self._retiring]
        )
