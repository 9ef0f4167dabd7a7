"""The harness: wrk runs against running servers, one line printed per level.

:class:`Runner` measures one level (:meth:`Runner.level`: wrk, plus the server's CPU, the rest
of the machine's and the mean batch) or a set of servers interleaved point by point
(:meth:`Runner.interleaved`). It knows nothing of which servers they are: the set is
:mod:`bench.references`, the order of the run :mod:`bench.__main__`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.loadgen import LevelResult
from bench.servers import ServerProcess, box_busy_cpu_s, fetch_text, wait_ready


def batch_counters(server: ServerProcess) -> tuple[float, float] | None:
    """(sum, count) of ``imgcls_batch_size`` from /metrics; None where there is none."""
    try:
        text = fetch_text(server.url + "/metrics")
    except OSError:
        return None
    total = count = None
    for line in text.splitlines():
        if line.startswith("imgcls_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("imgcls_batch_size_count"):
            count = float(line.split()[-1])
    return (total, count) if total is not None and count is not None else None


@dataclass
class Runner:
    """Runs wrk levels against servers and prints one line per level."""

    scripts: dict[int, Path]  # images per request -> wrk script
    cpu: int | None
    timeout_s: float = 30.0
    #: Servers (by name) that take one image per request: they skip multi-image points.
    single_image_only: frozenset[str] = frozenset()

    def level(
        self, server: ServerProcess, concurrency: int, images: int, duration_s: int, label: str
    ) -> LevelResult:
        """One wrk run; adds the server's CPU, the rest of the machine's and the mean batch."""
        before_cpu = server.cpu_seconds()
        before_box = box_busy_cpu_s()
        before_batches = batch_counters(server)
        result = loadgen.run_wrk(
            server.url + "/predict",
            self.scripts[images],
            concurrency=concurrency,
            duration_s=duration_s,
            images_per_request=images,
            cpu=self.cpu,
            timeout_s=self.timeout_s,
        )
        box = box_busy_cpu_s() - before_box
        result.server_cpu_s = round(server.cpu_seconds() - before_cpu, 2)
        # Everything else that ran meanwhile (other jobs on a shared machine): noise, in cores.
        other = max(0.0, box - result.server_cpu_s - result.loadgen_cpu_s) / result.duration_s
        result.extra["other_load_cores"] = round(other, 2)
        after_batches = batch_counters(server)
        if before_batches and after_batches and after_batches[1] > before_batches[1]:
            result.mean_batch_size = round(
                (after_batches[0] - before_batches[0]) / (after_batches[1] - before_batches[1]), 2
            )
        server_cores = result.server_cpu_s / result.duration_s
        print(_level_line(result, label, server_cores, other), flush=True)
        return result

    def warm(self, server: ServerProcess) -> None:
        """One second of load, discarded: connections, caches and code paths warm. A server
        that answers anything but 2xx there is broken: stop with its log rather than measure
        how fast it fails."""
        result = loadgen.run_wrk(
            server.url + "/predict", self.scripts[1], concurrency=8, duration_s=1, cpu=self.cpu
        )
        if result.errors["status"] or not result.requests:
            raise RuntimeError(
                f"{server.name} answered {result.errors['status']} of {result.requests} "
                f"warm-up requests with an error status; its log:\n{server.log_tail()}"
            )

    def interleaved(
        self,
        servers: dict[str, ServerProcess],
        points: Iterable[tuple[int, int]],
        duration_s: int,
        prefix: str = "",
        repeats: int = 1,
        repeated: frozenset[int] | None = None,
    ) -> dict[str, list[LevelResult]]:
        """Each (concurrency, images) point on every server back to back, the order rotating
        from point to point (and from repeat to repeat), so slow drifts in the machine's load
        fall on all of them alike. With ``repeats`` > 1 the whole sequence runs that many
        times and each point keeps the run with the median rate (all rates in
        ``extra["repeats_rps"]``); ``repeated`` limits the repeats to points of those
        concurrencies (None: every point). Servers in :attr:`single_image_only` skip
        multi-image points.
        """
        for server in servers.values():
            self.warm(server)
        points = list(points)
        runs: dict[tuple[str, int], list[LevelResult]] = {}
        names = list(servers)
        for repeat in range(repeats):
            for index, (concurrency, images) in enumerate(points):
                if repeat and repeated is not None and concurrency not in repeated:
                    continue
                shift = (index + repeat) % len(names)
                for name in names[shift:] + names[:shift]:
                    if images > 1 and name in self.single_image_only:
                        continue
                    tag = f" #{repeat + 1}" if repeats > 1 else ""
                    level = self.level(
                        servers[name], concurrency, images, duration_s, f"{prefix}{name}{tag}"
                    )
                    runs.setdefault((name, index), []).append(level)
        results: dict[str, list[LevelResult]] = {name: [] for name in servers}
        for (name, _index), levels in sorted(runs.items(), key=lambda item: item[0][1]):
            results[name].append(median_level(levels))
        return results


def _level_line(result: LevelResult, label: str, server_cores: float, other: float) -> str:
    batch = f" batch {result.mean_batch_size:5.1f}" if result.mean_batch_size else ""
    return (
        f"  {label:<34} c={result.concurrency:<4} x{result.images_per_request:<2} "
        f"{result.rps:8.1f} req/s {result.images_per_s:8.1f} img/s  p50 {result.p50_ms:7.2f} "
        f"p99 {result.p99_ms:7.2f} ms  err {result.error_count}{batch}  cores: server "
        f"{server_cores:.2f} wrk "
        f"{result.loadgen_cpu_s / result.duration_s:.2f} other {other:.2f}"
    )


def median_level(levels: list[LevelResult]) -> LevelResult:
    """The level with the median rate (the lower middle one of an even count); every run's
    rate is kept in its ``extra["repeats_rps"]``."""
    ranked = sorted(levels, key=lambda level: level.rps)
    chosen = ranked[(len(ranked) - 1) // 2]
    if len(levels) > 1:
        chosen.extra["repeats_rps"] = [level.rps for level in levels]
    return chosen


def start_servers(specs: dict[str, tuple[ServerProcess, str]]) -> dict[str, ServerProcess]:
    """Start every server in parallel and wait until all are ready; name -> server."""
    return dict(zip(specs, wait_ready(list(specs.values())), strict=True))


def stop_all(servers: Iterable[ServerProcess]) -> None:
    for server in servers:
        server.stop()


def stop_except(servers: dict[str, ServerProcess], keep: Iterable[str]) -> None:
    """Stop and remove every server of ``servers`` not named in ``keep``."""
    for name in [name for name in servers if name not in set(keep)]:
        servers.pop(name).stop()
