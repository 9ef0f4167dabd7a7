"""A real Prometheus process for the live monitoring tests: started on loopback with the compose
stack's scrape job pointed at one target, the project's real rule file, 1 s scrapes and rule
evaluations; and the HTTP API calls the tests make."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.helpers.ops import ALERT_RULES, PROMETHEUS_CONFIG
from tests.helpers.servers import free_port

#: Prometheus is ready in about a second and scrapes a new target about 5 s later (its service
#: discovery sends updates every 5 s); the rest of each bound is slack for a busy 2-core runner.
PROMETHEUS_START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; the parsed body (``status`` is ``success`` or ``error``)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body: dict[str, Any] = response.json()
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query that must succeed; its result vector."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a query that returns at most one series (None when it returns none)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self,
        what: str,
        probe: Callable[[], T],
        done: Callable[[T], bool] = bool,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> T:
        """Poll ``probe`` until ``done(value)``; return that value. After ``timeout_s`` fail with
        ``what``, the last value seen and the tail of Prometheus's log."""
        deadline = time.monotonic() + timeout_s
        last: object = "nothing yet"
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {self.process.returncode} while waiting for {what}"
                    f":\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                value = probe()
            except (httpx.TransportError, ValueError) as exc:  # not listening yet, or bad JSON
                last = exc
            else:
                if done(value):
                    return value
                last = value
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}: not within {timeout_s:.0f} s (last: {last!r})\n"
                    f"prometheus log:\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.25)


def api_scrape_config() -> dict[str, Any]:
    """The compose stack's scrape job for the service (the one that discovers replicas by DNS)."""
    jobs = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (api,) = [job for job in jobs if "dns_sd_configs" in job]
    return dict(api)


def live_config(target: str, rule_file: Path = ALERT_RULES) -> dict[str, Any]:
    """``monitoring/prometheus.yml`` for one known target: same job name and metrics path, a
    static target instead of DNS, the real rule file, and 1 s scrapes and evaluations."""
    compose_job = api_scrape_config()
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file.resolve())],
        "scrape_configs": [
            {
                "job_name": compose_job["job_name"],
                "metrics_path": compose_job.get("metrics_path", "/metrics"),
                "static_configs": [{"targets": [target]}],
            }
        ],
    }


def start_prometheus(
    binary: str, target: str, workdir: Path, rule_file: Path = ALERT_RULES
) -> Prometheus:
    """Start ``prometheus`` scraping ``target`` (host:port) with ``rule_file``; not waited for."""
    config = live_config(target, rule_file)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Prometheus(f"http://127.0.0.1:{port}", process, log_path, config)


def stop_prometheus(prometheus: Prometheus, timeout_s: float = 15.0) -> None:
    if prometheus.process.poll() is None:
        prometheus.process.terminate()
        try:
            prometheus.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
            prometheus.process.wait()
