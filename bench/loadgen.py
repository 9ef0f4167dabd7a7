"""The load generator: ``wrk`` (C, one epoll thread) driven by a generated Lua script.

Each of ``concurrency`` keep-alive connections sends one multipart ``POST /predict`` and waits
for its answer before sending the next (a closed loop, so concurrency = requests in flight).
wrk's own ``done()`` hook prints the counts and the latency percentiles as one JSON line, which
:func:`run_wrk` parses; wrk's CPU time comes from ``wait4`` so every run says how much of the
two cores the load generator itself took from the server.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

BOUNDARY = "----imgclsbench7MA4YWxkTrZu0gW"
RESULT_PREFIX = "BENCH-JSON "

# wrk.format() would rebuild the request per call; a static request is built once and reused.
_LUA_STATIC = """\
local f = assert(io.open({body_path}, "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = {content_type}
"""

# Several bodies: each request is built once (in init) and the connections cycle through them.
_LUA_ROTATING = """\
local paths = {{{body_paths}}}
local requests = {{}}
local next_index = 0
init = function(args)
  for i, path in ipairs(paths) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    requests[i] = wrk.format("POST", nil, {{["Content-Type"] = {content_type}}}, body)
  end
end
request = function()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
"""

_LUA_DONE = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{prefix}{{"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"mean_us":%.1f,"stdev_us":%.1f,"max_us":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


class LoadgenError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


def wrk_path() -> str | None:
    """Path of the ``wrk`` executable, or None (Debian/Ubuntu: ``apt-get install wrk``)."""
    return shutil.which("wrk")


def wrk_cpu() -> int | None:
    """The CPU wrk is pinned to: the last usable one, so the servers keep the others (None on a
    single CPU: nothing to keep apart)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1] if len(cpus) > 1 else None


_MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def multipart_body(files: list[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A ``multipart/form-data`` body with one ``file`` field per ``(filename, bytes)`` (part
    Content-Type from the extension: JPEG, WebP, else PNG)."""
    parts = []
    for filename, data in files:
        media = _MEDIA_TYPES.get(filename.rsplit(".", 1)[-1].lower(), "image/png")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: {media}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def write_script(directory: Path, files: list[tuple[str, bytes]], name: str) -> Path:
    """Write the request body and the Lua script that sends it; return the script's path."""
    return write_rotating_script(directory, [files], name)


def write_rotating_script(
    directory: Path, requests: list[list[tuple[str, bytes]]], name: str
) -> Path:
    """Write one body per entry of ``requests`` (each a list of ``(filename, bytes)`` files) and
    a Lua script whose connections send them in turn; return the script's path."""
    if not requests:
        raise ValueError("at least one request is needed")
    directory.mkdir(parents=True, exist_ok=True)
    content_type = json.dumps(f"multipart/form-data; boundary={BOUNDARY}")
    paths = []
    for index, files in enumerate(requests):
        body_path = directory / (f"{name}.body" if len(requests) == 1 else f"{name}-{index}.body")
        body_path.write_bytes(multipart_body(files))
        paths.append(body_path)
    if len(paths) == 1:
        head = _LUA_STATIC.format(body_path=json.dumps(str(paths[0])), content_type=content_type)
    else:
        head = _LUA_ROTATING.format(
            body_paths=", ".join(json.dumps(str(path)) for path in paths),
            content_type=content_type,
        )
    script = directory / f"{name}.lua"
    script.write_text(head + "\n" + _LUA_DONE.format(prefix=RESULT_PREFIX))
    return script


def write_body_script(directory: Path, body: bytes, name: str, headers: dict[str, str]) -> Path:
    """Write ``body`` and a Lua script that POSTs it as is with ``headers`` (e.g. a V2 infer
    request: ``Content-Type``, ``Inference-Header-Content-Length``); return the script's path."""
    directory.mkdir(parents=True, exist_ok=True)
    body_path = directory / f"{name}.body"
    body_path.write_bytes(body)
    lines = [
        f'local f = assert(io.open({json.dumps(str(body_path))}, "rb"))',
        'wrk.body = f:read("*a")',
        "f:close()",
        'wrk.method = "POST"',
        *(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()),
    ]
    script = directory / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n\n" + _LUA_DONE.format(prefix=RESULT_PREFIX))
    return script


@dataclass
class LevelResult:
    """One load level. Latencies in milliseconds, rates per second, CPU in core-seconds."""

    concurrency: int
    images_per_request: int
    duration_s: float
    requests: int
    rps: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]
    loadgen_cpu_s: float
    server_cpu_s: float | None = None
    mean_batch_size: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def run_pinned(command: list[str], cpu: int | None) -> tuple[str, resource.struct_rusage]:
    """Run a load generator pinned to ``cpu``: its output (stdout and stderr) and its own
    resource usage (from ``wait4``: its CPU time, apart from this process's); a non-zero exit
    raises :class:`LoadgenError`."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: _pin(cpu),
    )
    assert process.stdout is not None
    with process.stdout:
        output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        name = Path(command[0]).name
        raise LoadgenError(f"{name} exited with {process.returncode}:\n{output[-2000:]}")
    return output, usage


def run_wrk(
    url: str,
    script: Path,
    *,
    concurrency: int,
    duration_s: int,
    images_per_request: int = 1,
    cpu: int | None = None,
    timeout_s: float = 30.0,
) -> LevelResult:
    """Run wrk for ``duration_s`` seconds with ``concurrency`` connections (one thread).

    Args:
        url: Full URL, e.g. ``http://127.0.0.1:8000/predict``.
        script: From :func:`write_script`.
        concurrency: Connections, i.e. requests in flight (closed loop).
        duration_s: Whole seconds of load.
        images_per_request: Only recorded, to compute images/s.
        cpu: Pin wrk to this CPU (None: let the scheduler decide).
        timeout_s: Per-request timeout in seconds; slower answers count as timeout errors.
    """
    exe = wrk_path()
    if exe is None:
        raise LoadgenError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    command = [
        exe,
        "-t1",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    output, usage = run_pinned(command, cpu)
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise LoadgenError(f"wrk printed no result:\n{output[-2000:]}")
    raw = json.loads(lines[-1][len(RESULT_PREFIX) :])
    seconds = raw["duration_us"] / 1e6
    requests = int(raw["requests"])
    errors = {key: int(raw[key]) for key in ("connect", "read", "write", "status", "timeout")}
    ok = requests - errors["status"]
    return LevelResult(
        concurrency=concurrency,
        images_per_request=images_per_request,
        duration_s=round(seconds, 3),
        requests=requests,
        rps=round(ok / seconds, 1),
        images_per_s=round(ok * images_per_request / seconds, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
        errors=errors,
        loadgen_cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
    )
