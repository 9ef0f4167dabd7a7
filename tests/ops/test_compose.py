"""docker-compose.yml, as Compose itself resolves it (``docker-compose config``): five services,
the trainer behind a profile, one rollout controller, health-gated start order, one shared models
folder, and no secret with a default value. Needs only the Compose CLI, no Docker engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.helpers.ops import (
    ALERT_RULES,
    COMPOSE_FILE,
    GRAFANA_DASHBOARD_PROVIDERS,
    PROMETHEUS_CONFIG,
    ROLLOUT_JOB,
    ROLLOUT_SERVICE,
    ROOT,
)

pytestmark = pytest.mark.e2e  # every test runs the Compose CLI

PASSWORD = "ops-test-not-a-secret"
#: Compose variables a developer may have exported; the tests must not see them.
_SCRUBBED = (
    "GRAFANA_ADMIN_PASSWORD",
    "COMPOSE_PROFILES",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "IMGCLS_CAPTURE_RATE",
)


def compose_config(
    compose_cmd: list[str], tmp_path: Path, *, password: str | None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    empty_env_file = tmp_path / "empty.env"  # keep a developer's ./.env out of the result
    empty_env_file.write_text("")
    return subprocess.run(
        [
            *compose_cmd,
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            "train",
            "config",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config(compose_cmd: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = compose_config(compose_cmd, tmp_path_factory.mktemp("compose"), password=PASSWORD)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = yaml.safe_load(done.stdout)
    return parsed


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only), from v1's short strings or v2's long form."""
    result: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            source, target = volume.get("source", ""), volume["target"]
            read_only = bool(volume.get("read_only", False))
        result[target] = (source, read_only)
    return result


def published_ports(service: dict[str, Any]) -> list[str]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(str(port.get("published") or ""))
        else:
            parts = str(port).split(":")
            ports.append(parts[-2] if len(parts) > 1 else "")
    return ports


def test_five_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"api", "prometheus", "grafana", "trainer", ROLLOUT_SERVICE}


def test_trainer_runs_only_with_the_train_profile(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["trainer"]["profiles"] == ["train"]
    for name in ("api", ROLLOUT_SERVICE, "prometheus", "grafana"):
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"
    trainer = services["trainer"]
    entrypoint = trainer["entrypoint"]
    assert entrypoint[:2] == ["python", "training/train.py"]
    assert trainer["image"] == services["api"]["image"], "trainer and api share one image"
    # In the entrypoint, not the command: `run trainer --epochs 3` replaces the command only.
    assert entrypoint[entrypoint.index("--models-dir") + 1] == "/models"
    # The image's /app is read-only for the container user: checkpoints go to the mount.
    assert entrypoint[entrypoint.index("--run-dir") + 1].startswith("/models/")


def test_models_folder_is_shared_read_only_for_the_api(config: dict[str, Any]) -> None:
    services = config["services"]
    api, trainer = mounts(services["api"]), mounts(services["trainer"])
    models = str(ROOT / "models")
    assert api["/models"] == (models, True)
    assert trainer["/models"] == (models, False)
    env = services["api"]["environment"]
    assert env["IMGCLS_MODELS_DIR"] == "/models"
    assert env["IMGCLS_HOST"] == "0.0.0.0"
    assert str(env["IMGCLS_PORT"]) == "8000"
    assert str(env["IMGCLS_GRPC_PORT"]) == "8001"
    assert services["api"]["user"] == services["trainer"]["user"], (
        "api must read what trainer writes"
    )


def test_data_folder_holds_capture_and_feedback_for_api_and_trainer(
    config: dict[str, Any],
) -> None:
    """./data is mounted writable into the api (captures, feedback) and the trainer (it reads
    the feedback as training data), and both folders the api writes lie inside it."""
    services = config["services"]
    data = str(ROOT / "data")
    api, trainer = mounts(services["api"]), mounts(services["trainer"])
    (target,) = [path for path, (source, _) in api.items() if source == data]
    assert api[target] == (data, False), "the api writes captures and feedback"
    assert trainer[target] == (data, False), "the trainer reads the same folder"
    env = services["api"]["environment"]
    for name in ("IMGCLS_CAPTURE_DIR", "IMGCLS_FEEDBACK_DIR"):
        assert PurePosixPath(env[name]).is_relative_to(target), (name, env[name])
    assert env["IMGCLS_CAPTURE_DIR"] != env["IMGCLS_FEEDBACK_DIR"]
    # A bind mount of a missing folder is created by Docker as root: the api's uid could not
    # write it. The folder is in the repository (its contents are ignored).
    assert (ROOT / "data" / ".gitkeep").is_file()


def test_capture_is_off_unless_asked_for(config: dict[str, Any]) -> None:
    """Capture stores users' images: off by default, switched on from the shell or .env."""
    env = config["services"]["api"]["environment"]
    assert float(env["IMGCLS_CAPTURE_RATE"]) == 0
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["api"]["environment"]
    assert raw["IMGCLS_CAPTURE_RATE"] == "${IMGCLS_CAPTURE_RATE:-0}"


def test_api_scales_without_a_fixed_host_port(config: dict[str, Any]) -> None:
    api = config["services"]["api"]
    assert api["ports"], "the api is reachable from the host"
    assert published_ports(api) == ["", ""], "a fixed host port breaks `--scale api=N`"
    assert sorted(int(port["target"]) for port in api["ports"]) == [8000, 8001]  # HTTP, gRPC
    assert "container_name" not in api


def test_healthchecks_and_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("api", ROLLOUT_SERVICE, "prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
    assert any("/healthz" in part for part in services["api"]["healthcheck"]["test"])
    assert services["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # The controller judges what Prometheus scraped: it starts once Prometheus answers.
    rollout = services[ROLLOUT_SERVICE]
    assert rollout["depends_on"]["prometheus"]["condition"] == "service_healthy"


# --- the rollout controller -------------------------------------------------------------------
def test_rollout_controller_is_one_container_of_the_api_image(config: dict[str, Any]) -> None:
    """Exactly one controller: a fixed container name makes ``--scale rollout=N`` fail, and
    nothing asks for more replicas. Same image as the api, restarted like it."""
    services = config["services"]
    rollout, api = services[ROLLOUT_SERVICE], services["api"]
    assert rollout.get("container_name"), "a fixed name keeps `--scale rollout=2` from working"
    assert rollout.get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in rollout
    assert rollout["image"] == api["image"]
    assert rollout["restart"] == api["restart"]
    assert rollout["user"] == services["trainer"]["user"] == api["user"]


def test_rollout_controller_writes_the_api_models_folder(config: dict[str, Any]) -> None:
    """It edits serving.yaml and appends rollout.log in the very folder the api reads: mounted
    writable (the api's is read-only), and named by --models-dir."""
    services = config["services"]
    rollout, api = mounts(services[ROLLOUT_SERVICE]), mounts(services["api"])
    api_models_dir = services["api"]["environment"]["IMGCLS_MODELS_DIR"]
    models_source, api_read_only = api[api_models_dir]
    assert api_read_only
    assert rollout[api_models_dir] == (models_source, False)
    command = services[ROLLOUT_SERVICE]["command"]
    assert command == [
        "python",
        "-m",
        "service.rollout",
        "--models-dir",
        api_models_dir,
        "--prometheus",
        "http://prometheus:9090",
    ]


def test_rollout_metrics_reach_prometheus_only(config: dict[str, Any]) -> None:
    """Its /metrics port is the one Prometheus's imgcls-rollout job scrapes, on the compose
    network (exposed), never published on the host; the health check asks that port."""
    from service.rollout.__main__ import DEFAULT_METRICS_PORT

    rollout = config["services"][ROLLOUT_SERVICE]
    assert "--metrics-port" not in rollout["command"], "the default port, as scraped"
    assert not rollout.get("ports"), "no host port: the metrics have no auth"
    assert [str(port) for port in rollout["expose"]] == [str(DEFAULT_METRICS_PORT)]
    jobs = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    (job,) = [job for job in jobs if job["job_name"] == ROLLOUT_JOB]
    assert job["static_configs"] == [{"targets": [f"{ROLLOUT_SERVICE}:{DEFAULT_METRICS_PORT}"]}]
    health = " ".join(rollout["healthcheck"]["test"])
    assert f"127.0.0.1:{DEFAULT_METRICS_PORT}/metrics" in health


def test_prometheus_gets_its_config_and_rules(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    mounted = mounts(prometheus)
    config_dir = PurePosixPath("/etc/prometheus")
    assert mounted[str(config_dir / "prometheus.yml")] == (str(PROMETHEUS_CONFIG), True)
    # rule_files are relative to the config file: each must be mounted beside it.
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    for rule_file in rule_files:
        assert mounted[str(config_dir / rule_file)] == (str(ALERT_RULES), True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisioning_and_dashboards_are_mounted(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = ROOT / "monitoring" / "grafana" / "provisioning"
    assert mounted["/etc/grafana/provisioning"] == (str(provisioning), True)
    providers = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDERS.read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert mounted[dashboards_path] == (str(ROOT / "monitoring" / "grafana" / "dashboards"), True)


def test_grafana_password_comes_from_the_environment(config: dict[str, Any]) -> None:
    env = config["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == PASSWORD
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    literal = raw["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert literal.startswith("${GRAFANA_ADMIN_PASSWORD:?"), "required variable, no default"


def test_config_fails_without_grafana_password(compose_cmd: list[str], tmp_path: Path) -> None:
    done = compose_config(compose_cmd, tmp_path, password=None)
    assert done.returncode != 0, "a default admin password would ship with the stack"
    assert "GRAFANA_ADMIN_PASSWORD" in done.stderr + done.stdout


def test_third_party_images_are_pinned(config: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        image = config["services"][name]["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag not in {"latest", "main"}, image
        assert tag.lstrip("v")[0].isdigit(), image
