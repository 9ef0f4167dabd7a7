"""Kubernetes manifests in deploy/k8s: probes on the service's routes, ports that agree between
Deployment, Service and the scrape annotations, an HPA aimed at the Deployment, and pods that
run as non-root on a read-only root filesystem with the models volume read-only; beside them,
one rollout controller (rollout-deployment.yaml) that writes that volume."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers.ops import DOCKERFILE, K8S, load_yaml_documents

#: The service's default shutdown_grace_s: the pod must outlive the queue drain.
SHUTDOWN_GRACE_S = 20


#: The rollout controller's manifest, apart from the api's (a second Deployment).
ROLLOUT_MANIFEST = "rollout-deployment.yaml"


def all_documents() -> list[dict[str, Any]]:
    """The api's manifests (the rollout controller's: :func:`rollout_deployment`)."""
    return [
        doc
        for name in ("deployment.yaml", "service.yaml", "hpa.yaml")
        for doc in load_yaml_documents(K8S / name)
    ]


def by_kind() -> dict[str, dict[str, Any]]:
    """One manifest per kind, claims left out (the models claim, and the data claim when it is
    uncommented): :func:`claims_by_name` has those."""
    docs: dict[str, dict[str, Any]] = {}
    for doc in all_documents():
        if doc["kind"] == "PersistentVolumeClaim":
            continue
        assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
        docs[doc["kind"]] = doc
    return docs


def claims_by_name() -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for doc in all_documents()
        if doc["kind"] == "PersistentVolumeClaim"
    }


def rollout_deployment() -> dict[str, Any]:
    (deployment,) = load_yaml_documents(K8S / ROLLOUT_MANIFEST)
    return deployment


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return by_kind()


@pytest.fixture(scope="module")
def claims() -> dict[str, dict[str, Any]]:
    return claims_by_name()


@pytest.fixture(scope="module")
def pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (api,) = pod["containers"]
    return dict(api)


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A numeric port as is; a named port through the container's ports list."""
    if isinstance(port, int):
        return port
    named = {
        entry["name"]: entry["containerPort"] for entry in container["ports"] if "name" in entry
    }
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


def test_manifest_kinds_and_api_versions(
    manifests: dict[str, dict[str, Any]], claims: dict[str, dict[str, Any]]
) -> None:
    assert manifests["Deployment"]["apiVersion"] == "apps/v1"
    assert manifests["Service"]["apiVersion"] == "v1"
    assert manifests["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert claims, "the models claim"
    assert all(claim["apiVersion"] == "v1" for claim in claims.values())


def test_probes_use_the_service_routes(container: dict[str, Any]) -> None:
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {
        resolve_port(container, container[probe]["httpGet"]["port"])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe")
        if probe in container
    }
    assert ports == {8000}


def test_container_listens_where_the_service_says(container: dict[str, Any]) -> None:
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["IMGCLS_HOST"] == "0.0.0.0"
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    assert ports == {"http": int(env["IMGCLS_PORT"]), "grpc": int(env["IMGCLS_GRPC_PORT"])}


def test_service_selects_the_pods_and_targets_their_port(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: resolve_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}


def test_prometheus_scrape_annotations(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


def test_hpa_scales_the_deployment_on_cpu(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    hpa, deployment = manifests["HorizontalPodAutoscaler"]["spec"], manifests["Deployment"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    cpu = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    # Utilization is relative to the request: without one the HPA cannot compute it.
    assert container["resources"]["requests"]["cpu"]


def test_resources_requested_and_memory_limited(container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_runs_as_non_root_with_read_only_root(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    pod_security, security = pod["securityContext"], container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The uid is the image's own user, so files in the image stay readable.
    match = re.search(r"^ARG APP_UID=(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match and int(match.group(1)) == pod_security["runAsUser"]


def test_models_volume_is_a_read_only_pvc(
    claims: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    models_mount = mounts[env["IMGCLS_MODELS_DIR"]]
    assert models_mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    claim = volumes[models_mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] in claims
    assert claim["readOnly"] is True
    # A read-only root filesystem needs a writable /tmp (Keras, Matplotlib, multiprocess metrics).
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_capture_is_off_or_on_a_volume_every_replica_shares(
    claims: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]
) -> None:
    """With several replicas, captures and feedback must live on one volume that every pod
    mounts (a ReadWriteMany claim): a prediction captured by one pod is labelled through any
    other. Without it capture stays off. Either way capture is off by default (privacy)."""
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert float(env["IMGCLS_CAPTURE_RATE"]) == 0, "capture is off unless an operator opts in"
    folders = [PurePosixPath(env[name]) for name in ("IMGCLS_CAPTURE_DIR", "IMGCLS_FEEDBACK_DIR")]
    assert all(folder.is_absolute() for folder in folders) and folders[0] != folders[1]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for folder in folders:
        mounts = [
            mount
            for mount in container["volumeMounts"]
            if folder.is_relative_to(mount["mountPath"])
        ]
        if not mounts:  # on the read-only root filesystem: feedback answers 503, capture off
            continue
        mount = max(mounts, key=lambda mount: len(mount["mountPath"]))
        assert not mount.get("readOnly"), f"{folder} is written"
        volume = volumes[mount["name"]]
        assert "persistentVolumeClaim" in volume, f"{folder}: a per-pod volume splits the data"
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert "ReadWriteMany" in claim["spec"]["accessModes"], f"{folder}: every pod mounts it"


def test_termination_grace_covers_the_queue_drain(pod: dict[str, Any]) -> None:
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_S


def test_kustomization_lists_every_manifest(container: dict[str, Any]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert sorted(resources) == ["deployment.yaml", "hpa.yaml", ROLLOUT_MANIFEST, "service.yaml"]
    assert sorted(path.name for path in K8S.glob("*.yaml")) == sorted(
        [*resources, "kustomization.yaml"]
    )
    for resource in resources:
        assert Path(K8S / resource).is_file()
    image_names = {image["name"] for image in kustomization["images"]}
    assert container["image"].split(":")[0] in image_names


# --- the rollout controller -------------------------------------------------------------------
@pytest.fixture(scope="module")
def rollout() -> dict[str, Any]:
    return rollout_deployment()


@pytest.fixture(scope="module")
def rollout_pod(rollout: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = rollout["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def rollout_container(rollout_pod: dict[str, Any]) -> dict[str, Any]:
    (controller,) = rollout_pod["containers"]
    return dict(controller)


def option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} once in {command}"
    return command[command.index(flag) + 1]


def test_rollout_runs_exactly_one_controller(
    rollout: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    """replicas 1 and Recreate: an update stops the old pod before it starts the new one (a
    RollingUpdate would run two controllers at once), and no autoscaler targets it."""
    assert rollout["apiVersion"] == "apps/v1" and rollout["kind"] == "Deployment"
    assert rollout["spec"]["replicas"] == 1
    assert rollout["spec"]["strategy"] == {"type": "Recreate"}
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
    assert target != rollout["metadata"]["name"]


def test_rollout_pods_are_apart_from_the_api_pods(
    rollout: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> None:
    """Its own selector; neither the api Deployment nor the api Service selects its pod (the
    Service would send requests to a pod without the API)."""
    labels = rollout["spec"]["template"]["metadata"]["labels"]
    assert rollout["spec"]["selector"]["matchLabels"].items() <= labels.items()
    api = manifests["Deployment"]
    assert rollout["metadata"]["name"] != api["metadata"]["name"]
    assert not api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not manifests["Service"]["spec"]["selector"].items() <= labels.items()


def test_rollout_runs_the_controller_from_the_api_image(
    rollout_container: dict[str, Any], container: dict[str, Any]
) -> None:
    command = rollout_container["command"]
    assert command[:3] == ["python", "-m", "service.rollout"]
    assert rollout_container["image"] == container["image"]
    assert "--scrape" not in command, "Prometheus sees every api pod, whatever restarts"
    url = urlsplit(option(command, "--prometheus"))
    assert url.scheme == "http" and url.hostname and url.port
    # In-cluster Service DNS (<service>.<namespace>.svc), documented in the manifest's comment.
    assert ".svc" in url.hostname
    assert url.geturl() in (K8S / ROLLOUT_MANIFEST).read_text()


def test_rollout_writes_the_api_models_claim(
    rollout_pod: dict[str, Any],
    rollout_container: dict[str, Any],
    pod: dict[str, Any],
    container: dict[str, Any],
    claims: dict[str, dict[str, Any]],
) -> None:
    """--models-dir is a writable mount of the very claim the api pods mount read-only, and
    that claim lets several nodes mount it (the controller's pod may run beside no api pod)."""
    models_dir = option(rollout_container["command"], "--models-dir")
    mounts = {mount["mountPath"]: mount for mount in rollout_container["volumeMounts"]}
    assert not mounts[models_dir].get("readOnly", False)
    volumes = {volume["name"]: volume for volume in rollout_pod["volumes"]}
    claim = volumes[mounts[models_dir]["name"]]["persistentVolumeClaim"]
    assert not claim.get("readOnly", False)

    api_env = {entry["name"]: entry.get("value") for entry in container["env"]}
    api_mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    api_volumes = {volume["name"]: volume for volume in pod["volumes"]}
    api_claim = api_volumes[api_mounts[api_env["IMGCLS_MODELS_DIR"]]["name"]]
    assert claim["claimName"] == api_claim["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in claims[claim["claimName"]]["spec"]["accessModes"]


def test_rollout_metrics_port_probe_and_scrape_annotations(
    rollout: dict[str, Any], rollout_container: dict[str, Any]
) -> None:
    from service.rollout.__main__ import DEFAULT_METRICS_PORT

    assert "--metrics-port" not in rollout_container["command"]
    assert [entry["containerPort"] for entry in rollout_container["ports"]] == [
        DEFAULT_METRICS_PORT
    ]
    annotations = rollout["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == DEFAULT_METRICS_PORT
    probe = rollout_container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/metrics"
    assert resolve_port(rollout_container, probe["port"]) == DEFAULT_METRICS_PORT


def test_rollout_runs_as_non_root_with_read_only_root(
    rollout_pod: dict[str, Any], rollout_container: dict[str, Any], pod: dict[str, Any]
) -> None:
    """The api pods' security settings (same uid, so each can read what the other writes)."""
    assert rollout_pod["securityContext"] == pod["securityContext"]
    security = rollout_container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert rollout_pod["automountServiceAccountToken"] is False
    resources = rollout_container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
