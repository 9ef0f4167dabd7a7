"""The one way every process of the project (trainer, service, workers) keeps TensorFlow's C++
start-up lines out of its log.

:func:`quiet_tensorflow` sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it or asked to see
everything (``--log-level debug``, ``train.py --verbose``); that level filters what TensorFlow
logs once it runs: ``failed call to cuInit`` on a machine without a GPU, for one. The lines its
shared libraries print while they load come before that setting is read, and are written to
file descriptor 2 whatever it says::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795708673.019291   23681 cudart_stub.cc:31] Could not find cuda drivers ...

:func:`import_filtered` imports TensorFlow (or Keras) while descriptor 2 runs through a pipe
that drops those lines, by the same rule as ``TF_CPP_MIN_LOG_LEVEL`` (1 drops INFO, 2 also
WARNING, 3 also ERROR; FATAL always shows), and passes every other line on: the event loop's own
log, written meanwhile from other threads, is not lost. :func:`start_background_import` runs it in a
thread while a server starts, so ``/healthz`` answers as soon as it would without it; the model
store's own ``import tensorflow`` then waits for that import instead of repeating it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping

__all__ = [
    "StartupLineFilter",
    "import_filtered",
    "import_tensorflow_filtered",
    "min_log_level",
    "on_first_import",
    "quiet_tensorflow",
    "start_background_import",
]

logger = logging.getLogger(__name__)

#: absl's prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_SEVERITIES = b"IWEF"
_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: The second line of the CPU-feature note (an INFO record spanning two lines).
_CONTINUATIONS = (b"To enable the following instructions:",)
#: Seconds to wait for the pipe to drain once the import is over.
_DRAIN_TIMEOUT_S = 5.0


def quiet_tensorflow(*, show_log: bool, environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep TensorFlow's C++ log (``failed call to cuInit`` on every CPU start, CPU-feature
    notes) out of this process's log, and (through the environment) its children's:
    ``TF_CPP_MIN_LOG_LEVEL=3`` before TensorFlow is imported. A value the user set wins;
    ``show_log`` leaves TensorFlow's own default (everything)."""
    if not show_log:
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def min_log_level(environ: Mapping[str, str] = os.environ) -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 (everything) when unset or not a
    number, at most 3."""
    try:
        level = int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip())
    except ValueError:
        return 0
    return max(0, min(level, 3))


class StartupLineFilter:
    """Decides, line by line, what of TensorFlow's start-up output to keep at ``level``."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._dropping = False  # the last line was a dropped record: its continuation goes too

    def keep(self, line: bytes) -> bool:
        """True to pass ``line`` (bytes, with or without its newline) on."""
        match = _ABSL_LINE.match(line)
        if match is not None:
            severity = _SEVERITIES.index(match.group(1))
            self._dropping = severity < min(self.level, 3)  # FATAL (3) is never dropped
            return not self._dropping
        if line.rstrip(b"\r\n") == _BANNER:
            return self.level == 0
        if self._dropping and line.startswith(_CONTINUATIONS):
            return False
        self._dropping = False
        return True


def _pump(read_fd: int, out_fd: int, line_filter: StartupLineFilter) -> None:
    """Copy whole lines from ``read_fd`` to ``out_fd`` until EOF, dropping filtered ones."""
    pending = b""
    try:
        while chunk := os.read(read_fd, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if line_filter.keep(line))
            if kept:
                os.write(out_fd, kept)
        if pending and line_filter.keep(pending):
            os.write(out_fd, pending)
    except OSError:  # the real stderr is gone: nothing left to protect
        pass
    finally:
        os.close(read_fd)
        os.close(out_fd)


@contextlib.contextmanager
def _filtered_stderr(level: int) -> Iterator[None]:
    """Route file descriptor 2 through a :class:`StartupLineFilter` while the block runs."""
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    pump = threading.Thread(
        target=_pump,
        args=(read_fd, os.dup(saved), StartupLineFilter(level)),
        name="tf-log-filter",
        daemon=True,
    )
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end is gone: the pump drains it and stops
        os.close(saved)
        pump.join(_DRAIN_TIMEOUT_S)


#: One filtered import at a time: two threads redirecting descriptor 2 at once would undo each
#: other's redirection, and a thread importing TensorFlow plainly while another filters would
#: print the lines the filter is there to drop.
_IMPORT_LOCK = threading.RLock()
#: Run right after TensorFlow's first import (see :func:`on_first_import`).
_AFTER_IMPORT: list[Callable[[], None]] = []


def on_first_import(callback: Callable[[], None]) -> None:
    """Run ``callback`` right after TensorFlow's first import in this process, by whichever
    thread imports it through :func:`import_filtered`, before any other thread can use it (at
    once when TensorFlow is already imported). For what must precede TensorFlow's runtime, such
    as its thread-pool sizes, without importing TensorFlow now."""
    with _IMPORT_LOCK:
        if "tensorflow" in sys.modules:
            callback()
        else:
            _AFTER_IMPORT.append(callback)


def import_filtered(module: str, environ: Mapping[str, str] = os.environ) -> None:
    """Import ``module`` (``tensorflow``, ``keras``), dropping TensorFlow's start-up lines as
    ``TF_CPP_MIN_LOG_LEVEL`` says. Every first import of TensorFlow in a process goes through
    here (the service's thread settings and model loads, the trainer): whichever comes first
    filters, the others wait for it.

    A no-op filter at level 0 (or when the module is already imported): a plain import. The
    module is named, not imported here, so this package depends on no TensorFlow itself.
    """
    with _IMPORT_LOCK:
        if module in sys.modules:
            return
        level = min_log_level(environ)
        with _filtered_stderr(level) if level > 0 else contextlib.nullcontext():
            importlib.import_module(module)
        if "tensorflow" in sys.modules:
            callbacks, _AFTER_IMPORT[:] = list(_AFTER_IMPORT), []
            for callback in callbacks:
                callback()


def import_tensorflow_filtered(environ: Mapping[str, str] = os.environ) -> None:
    """:func:`import_filtered` of ``tensorflow``."""
    import_filtered("tensorflow", environ)


def start_background_import() -> threading.Thread:
    """Run :func:`import_tensorflow_filtered` in a daemon thread; an import error is left for
    the model store to report when it imports TensorFlow itself."""

    def run() -> None:
        try:
            import_tensorflow_filtered()
        except Exception:
            logger.debug("background TensorFlow import failed", exc_info=True)

    thread = threading.Thread(target=run, name="tf-import", daemon=True)
    thread.start()
    return thread
