"""The compose stack run for real: ``Dockerfile`` and ``docker-compose.yml`` as they are, on a
private Docker engine, from base images built locally (``deploy/local-bases/build.sh``: no
registry is reachable here).

The tests run in file order on one stack: the trainer publishes version 1, two api replicas
and Prometheus come up, a second training run is hot-swapped in, and ``docker compose stop``
drains what is in flight. The image's own checks (read-only root file system, non-root uid,
HEALTHCHECK) run beside it. Timings: the engine and images about 2 minutes cold (seconds once
cached in ``IMGCLS_DOCKER_ROOT``), the scenarios about 4 minutes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tests.helpers.docker_stack import (
    PROJECT_IMAGE_TAG,
    Engine,
    Stack,
    build_images,
    make_project_folder,
    start_engine,
    stop_engine,
)
from tests.helpers.images import digit_pngs
from tests.helpers.ops import missing_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

T = TypeVar("T")
PROMETHEUS_URL = "http://127.0.0.1:9090"  # compose publishes it there, on loopback only
UID = 1000  # docker-compose.yml's documented IMGCLS_UID default


def wait_for(
    what: str, probe: Callable[[], T], timeout_s: float, done: Callable[[T], bool] = bool
) -> T:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = value = probe()
            if done(value):
                return value
        except (httpx.TransportError, ValueError, KeyError, IndexError) as exc:
            last = exc
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s (last: {last!r})", pytrace=False)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    for tool in ("dockerd", "docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            missing_tool(f"{tool} not found on PATH")
    if os.geteuid() != 0:
        missing_tool("a private dockerd and debootstrap need root")
    engine = start_engine()
    try:
        seconds = build_images(engine)
        size = engine.inspect(f"imgcls:{PROJECT_IMAGE_TAG}")["Size"]
        print(f"bases and image built in {seconds:.0f} s; image {size / 1e6:.0f} MB")
        yield engine
    finally:
        stop_engine(engine)


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack")
    folder.chmod(0o755)
    make_project_folder(folder, UID, ["monitoring/prometheus.yml", "monitoring/alerts.yml"])
    stack = Stack(engine, folder, project="imgclse2e", uid=UID)
    try:
        yield stack
    finally:
        print(stack.logs("api", "prometheus")[-4000:])
        stack.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)


def predict(port: int, image: bytes, client: httpx.Client | None = None) -> httpx.Response:
    send = client.post if client is not None else httpx.post
    return send(
        f"http://127.0.0.1:{port}/predict",
        files={"file": ("d.png", image, "image/png")},
        timeout=30,
    )


def prometheus_query(expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def api_ports(stack: Stack) -> list[int]:
    return [stack.port("api", 8000, index) for index in (1, 2)]


def test_the_trainer_publishes_version_1_into_the_bind_mount_as_the_documented_uid(
    stack: Stack,
) -> None:
    done = stack.compose("--profile", "train", "run", "--rm", "trainer", "--epochs", "3")
    assert "published /models/digits/1 (version 1)" in done.stdout, done.stdout + done.stderr
    version = stack.folder / "models" / "digits" / "1"
    metadata = version / "metadata.json"
    assert metadata.is_file()
    assert metadata.stat().st_uid == UID and version.stat().st_uid == UID
    assert all(p.stat().st_mode & 0o004 for p in version.rglob("*") if p.is_file())


def test_two_replicas_come_up_healthy_found_by_prometheus_and_counted(
    stack: Stack, engine: Engine
) -> None:
    stack.compose("up", "-d", "--no-build", "--scale", "api=2", "api", "prometheus")
    containers = stack.containers("api")
    assert len(containers) == 2
    for container in containers:
        wait_for(
            f"api container {container[:12]} healthy",
            lambda c=container: engine.inspect(c)["State"]["Health"]["Status"],  # type: ignore[misc]
            timeout_s=240,
            done=lambda status: status == "healthy",
        )
    assert engine.inspect(containers[0])["Config"]["User"] == f"{UID}:{UID}"
    # Prometheus finds both replicas by DNS, and loads the project's rules.
    up = wait_for(
        "up{job='api'} for both replicas",
        lambda: prometheus_query('up{job="api"}'),
        timeout_s=120,
        done=lambda rows: len(rows) == 2 and all(row["value"][1] == "1" for row in rows),
    )
    assert len({row["metric"]["instance"] for row in up}) == 2
    rules = httpx.get(f"{PROMETHEUS_URL}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"ImgclsInstanceDown", "ImgclsHighErrorRate", "ImgclsRolloutStuck"} <= names

    # Real digits through each replica's published port, then the same count in Prometheus.
    images = digit_pngs(10)
    for port in api_ports(stack):
        for image in images:
            answer = predict(port, image)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == {"name": "digits", "version": 1}
    wait_for(
        "imgcls_requests_total in Prometheus equal to the 20 requests sent",
        lambda: prometheus_query('sum(imgcls_requests_total{job="api",route="/predict"})'),
        timeout_s=60,
        done=lambda rows: bool(rows) and float(rows[0]["value"][1]) == 20.0,
    )


def test_a_second_version_reaches_both_replicas_while_clients_loop(stack: Stack) -> None:
    ports = api_ports(stack)
    answers: list[tuple[int, int, int | None]] = []  # port, status, version
    stop = threading.Event()
    images = digit_pngs(8)

    def loop(port: int) -> None:
        with httpx.Client(timeout=30) as client:
            sent = 0
            while not stop.is_set():
                try:
                    answer = predict(port, images[sent % len(images)], client)
                    version = (
                        answer.json()["model"]["version"] if answer.status_code == 200 else None
                    )
                    answers.append((port, answer.status_code, version))
                except httpx.TransportError:
                    answers.append((port, 0, None))
                sent += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=loop, args=(port,), daemon=True) for port in ports]
    for thread in threads:
        thread.start()
    try:
        # The gate is not under test here (tests/training/test_gate.py): a loose rule blesses
        # the one-epoch version whatever the small first version scored.
        done = stack.compose(
            "--profile", "train", "run", "--rm", "trainer",
            "--init-from", "1", "--epochs", "1",
            "--gate-max-accuracy-drop", "1", "--gate-max-recall-drop", "1",
        )  # fmt: skip
        assert "(version 2)" in done.stdout and "NOT blessed" not in done.stdout, done.stdout
        wait_for(
            "both replicas answering with version 2",
            lambda: {port for port, _status, version in answers[-40:] if version == 2},
            timeout_s=60,
            done=lambda serving: serving == set(ports),
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert answers and all(status == 200 for _port, status, _version in answers)


def test_stop_drains_what_is_in_flight_exits_0_and_the_instance_down_alert_fires(
    stack: Stack, engine: Engine
) -> None:
    containers = stack.containers("api")
    # Straight to each replica on the compose network, one connection per request: a request
    # the replica never took is then a refused connection, and one it took but did not answer
    # a broken one. (Through the published port, Docker's userland proxy accepts every
    # connection itself; on a kept-alive connection, a request sent as the server closes it
    # idle is lost on the way in, the race every HTTP client retries.)
    addresses = []
    for container in containers:
        networks = engine.inspect(container)["NetworkSettings"]["Networks"]
        addresses.append(next(iter(networks.values()))["IPAddress"])
    outcomes: list[str] = []
    images = digit_pngs(16)
    files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    started = threading.Barrier(17)

    def burst(address: str) -> None:
        started.wait()
        for _ in range(500):
            try:
                answer = httpx.post(
                    f"http://{address}:8000/predict",
                    files=files,
                    timeout=httpx.Timeout(60, connect=5),
                )
                outcomes.append(str(answer.status_code))
                if answer.status_code == 503:
                    return  # "shutting down; retry on another replica": this client goes
            except (httpx.ConnectError, httpx.ConnectTimeout):
                # Not taken: the replica stopped listening (refused), or its container and
                # address are gone (no answer to the connection attempt).
                outcomes.append("refused")
                return
            except httpx.TransportError as exc:
                outcomes.append(f"lost: {type(exc).__name__}")  # taken, never answered
                return

    threads = [
        threading.Thread(target=burst, args=(addresses[i % 2],), daemon=True) for i in range(16)
    ]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(1.0)  # requests in flight on both replicas
    stack.compose("stop", "api", timeout=180)
    for thread in threads:
        thread.join(120)
    assert outcomes.count("200") > 0
    # Each client was told to leave (503, during IMGCLS_SHUTDOWN_DELAY_S) before the listener
    # closed, or found it closed; none lost a request the replica had taken.
    assert not [o for o in outcomes if o.startswith("lost")], outcomes
    assert set(outcomes) <= {"200", "503", "refused"}, set(outcomes)
    for container in containers:
        state = engine.inspect(container)["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, state

    alerts = wait_for(
        "ImgclsInstanceDown firing for the stopped replicas",
        lambda: httpx.get(f"{PROMETHEUS_URL}/api/v1/alerts", timeout=10).json()["data"]["alerts"],
        timeout_s=240,
        done=lambda rows: any(
            a["labels"]["alertname"] == "ImgclsInstanceDown" and a["state"] == "firing"
            for a in rows
        ),
    )
    assert alerts


def test_the_image_runs_read_only_as_its_non_root_uid_and_turns_healthy(
    stack: Stack, engine: Engine
) -> None:
    image = f"imgcls:{PROJECT_IMAGE_TAG}"
    config = engine.inspect(image)["Config"]
    assert config["User"] == "10001:10001" and config["Healthcheck"]["Test"]
    name = "imgcls-readonly-e2e"
    engine.run("rm", "-f", name, check=False)
    engine.run(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--network", "none",
        "-v", f"{stack.folder / 'models'}:/models:ro",
        image,
    )  # fmt: skip
    try:
        wait_for(
            "the read-only container healthy by the image's HEALTHCHECK",
            lambda: engine.inspect(name)["State"]["Health"]["Status"],
            timeout_s=240,
            done=lambda status: status == "healthy",
        )
        state = engine.inspect(name)["State"]
        assert state["Running"]
        whoami = engine.run("exec", name, "id", "-u").stdout.strip()
        assert whoami == "10001"
        probe = engine.run("exec", name, "touch", "/app/x", check=False)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    finally:
        engine.run("rm", "-f", name, check=False)
