"""The Kubernetes manifests (deploy/kubernetes): the Kustomize base and every overlay render with
``kubectl kustomize``, every object they make, and every manifest under ``training/``, is valid against the
Kubernetes schemas (kubernetes-validate, strict: an unknown field is an error), and the values agree with
the server they run. The serve options are read from the rendered ConfigMap by ``torchship serve``'s own
parser, the way the container reads them: probes on health routes that need no key, a grace period that
covers the drain, a writable volume wherever the server writes, the keys from a Secret."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from torchship.cli import build_parser
from torchship.serving.command import serve_settings
from torchship.serving.http.auth import HEALTH_PATHS
from torchship.serving.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
# kubectl's own version (Debian's kubernetes-client), and the newest the installed schemas know.
SCHEMA_VERSIONS = ("1.32", kubernetes_validate.latest_version())
CONFIG_MOUNT = "/etc/torchship/config"
# What the kubelet may take between SIGTERM and SIGKILL beyond the drain: stopping the worker processes.
STOP_MARGIN_S = 5


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not installed: these tests render the manifests with `kubectl kustomize`. "
            "Install it (Debian: apt-get install kubernetes-client; elsewhere "
            "https://kubernetes.io/docs/tasks/tools/) and run them again"
        )
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` makes."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                where = "/".join(str(part) for part in getattr(exc, "absolute_path", []))
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} ({version}) {where}: {exc.message}")
    return errors


def load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("entrypoint", ROOT / "deploy" / "docker" / "entrypoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Rendered:
    """One overlay, rendered: its objects, the Deployment's pod, and the settings its container serves
    with."""

    def __init__(self, name: str, objects: list[dict[str, Any]], config_dir: Path) -> None:
        self.name = name
        self.objects = objects
        self.deployment = self.one("Deployment")
        self.pod = self.deployment["spec"]["template"]["spec"]
        [self.container] = self.pod["containers"]
        self.volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        self.mounts = {mount["mountPath"]: mount for mount in self.container.get("volumeMounts", [])}
        self.settings = self._settings(config_dir)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        [obj] = self.all(kind)
        return obj

    def port(self, name_or_number: str | int) -> int:
        """A container port by name (as probes and Services name them) or number."""
        for port in self.container["ports"]:
            if name_or_number in (port["name"], port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"the container has no port {name_or_number!r}")

    def volume_at(self, path: Path) -> dict[str, Any]:
        """The volume mounted at ``path`` or at the nearest folder above it (none: the root file system)."""
        for folder in (path, *path.parents):
            if str(folder) in self.mounts:
                return self.volumes[self.mounts[str(folder)]["name"]] | {"mount": self.mounts[str(folder)]}
        raise AssertionError(f"{path} is on the read-only root file system: mount a volume there")

    def _settings(self, config_dir: Path) -> ServerSettings:
        """The container's settings: its ConfigMap's files, its arguments as the image's entry point turns
        them into a ``torchship serve`` command line (TORCHSHIP_HOST from the image), parsed by torchship."""
        [config_volume] = [v for v in self.pod["volumes"] if "configMap" in v]
        assert self.mounts[CONFIG_MOUNT]["name"] == config_volume["name"]
        [config_map] = [
            c for c in self.all("ConfigMap") if c["metadata"]["name"] == config_volume["configMap"]["name"]
        ]
        for name, text in config_map["data"].items():
            (config_dir / name).write_text(text)
        assert "command" not in self.container, (
            "keep the image's entry point (exec: SIGTERM reaches torchship)"
        )
        command = ENTRYPOINT.torchship_command(self.container["args"], {"TORCHSHIP_HOST": "0.0.0.0"})
        args = [arg.replace(CONFIG_MOUNT, str(config_dir)) for arg in command[3:]]
        assert args[0] == "serve"
        return serve_settings(SERVE_PARSER.parse_args(args).serve)


ENTRYPOINT = load_entrypoint()
SERVE_PARSER = build_parser(only="serve")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every overlay, rendered once for the module."""
    return {
        name: Rendered(
            name, render(KUBERNETES / "overlays" / name), tmp_path_factory.mktemp(f"config-{name}")
        )
        for name in OVERLAYS
    }


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[str(request.param)]


@pytest.fixture
def single(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["single"]


@pytest.fixture
def fleet(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["fleet"]


# ------------------------------------------------------------------------------------------------ schemas
def test_the_overlays_are_single_and_fleet() -> None:
    assert {"single", "fleet"} <= set(OVERLAYS)


@pytest.mark.parametrize("kustomization", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(kustomization: str) -> None:
    objects = render(KUBERNETES / kustomization)
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= {obj["kind"] for obj in objects}
    assert schema_errors(objects) == []


def training_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object of deploy/kubernetes/training: a folder with a kustomization rendered, other YAML as
    it is."""
    training = KUBERNETES / "training"
    kustomized = {path.parent for path in training.rglob("kustomization.yaml")}
    for folder in sorted(kustomized):
        for obj in render(folder):
            yield str(folder.relative_to(ROOT)), obj
    for path in sorted([*training.rglob("*.yaml"), *training.rglob("*.yml")]):
        if not any(folder in path.parents for folder in kustomized):
            for obj in yaml.safe_load_all(path.read_text()):
                if obj:
                    yield str(path.relative_to(ROOT)), obj


def test_every_training_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    objects = list(training_objects())
    assert objects, "deploy/kubernetes/training/ holds no manifest (the multi-node training Job)"
    assert {"Job", "Service"} <= {obj["kind"] for _, obj in objects}
    assert schema_errors([obj for _, obj in objects]) == []


def test_the_validator_rejects_an_unknown_field() -> None:
    """Strict validation: a misspelt field (here in a probe) fails, rather than being ignored."""
    [deployment] = [obj for obj in render(KUBERNETES / "base") if obj["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["pathh"] = "/v2/health/ready"
    errors = schema_errors([deployment])
    assert len(errors) == len(SCHEMA_VERSIONS) and all("'pathh' was unexpected" in e for e in errors), errors


# ------------------------------------------------------------------------------------------------ probes
def test_probes_ask_health_routes_that_need_no_key(overlay: Rendered) -> None:
    probes = {
        kind: overlay.container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness", "liveness")
    }
    # Ready (and started) only once every model's default version serves: /v2/health/ready is 400 until
    # then (/ping is 200 with one model of several); alive whenever the server answers.
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/v2/health/ready",
        "readiness": "/v2/health/ready",
        "liveness": "/v2/health/live",
    }
    assert all(probe["path"] in HEALTH_PATHS for probe in probes.values())  # exempt from keys...
    assert overlay.settings.health_auth is False  # ...while health_auth is off
    assert all(
        "httpHeaders" not in probe and probe.get("scheme", "HTTP") == "HTTP" for probe in probes.values()
    )
    assert {overlay.port(probe["port"]) for probe in probes.values()} == {overlay.settings.inference_port}
    assert overlay.settings.host == "0.0.0.0"  # the kubelet probes the pod's IP, not its loopback


def test_the_start_up_probe_waits_longer_than_a_worker_may_load(overlay: Rendered) -> None:
    probe = overlay.container["startupProbe"]
    assert (
        probe["failureThreshold"] * probe["periodSeconds"] >= overlay.settings.model_defaults.startup_timeout
    )


def test_the_grace_period_covers_the_pre_stop_pause_and_the_drain(overlay: Rendered) -> None:
    pre_stop = overlay.container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The drain: the open HTTP requests (up to graceful_timeout), then what is still queued on the
    # workers (up to graceful_timeout again), then the workers stop.
    needed = int(pre_stop[1]) + 2 * overlay.settings.graceful_timeout + STOP_MARGIN_S
    assert overlay.pod["terminationGracePeriodSeconds"] >= needed


# ------------------------------------------------------------------------------------------------ security
def test_the_pod_runs_restricted_as_the_image_user(overlay: Rendered) -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    [image_uid] = re.findall(r"^ARG TORCHSHIP_UID=(\d+)$", dockerfile, re.MULTILINE)
    pod_security = overlay.pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == int(image_uid)
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = overlay.container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert overlay.pod["automountServiceAccountToken"] is False
    assert overlay.pod["enableServiceLinks"] is False  # no TORCHSHIP_* variables from the Service


def test_the_server_writes_only_to_volumes(overlay: Rendered) -> None:
    settings = overlay.settings
    assert "emptyDir" in overlay.volume_at(Path("/tmp"))  # archives unpack into the temporary directory
    assert settings.archive_cache is None or "emptyDir" in overlay.volume_at(settings.archive_cache)
    assert settings.store_cache is not None and "emptyDir" in overlay.volume_at(settings.store_cache)
    if settings.store_dir is not None:
        assert "persistentVolumeClaim" in overlay.volume_at(settings.store_dir)
        assert not overlay.volume_at(settings.store_dir)["mount"].get("readOnly", False)
    if settings.snapshot_path is not None:
        assert overlay.volume_at(settings.snapshot_path.parent) == overlay.volume_at(
            settings.store_dir or Path()
        )


def test_the_keys_come_from_a_secret_and_are_never_written(overlay: Rendered) -> None:
    settings = overlay.settings
    assert settings.token_auth is True and settings.keys_from_file is True  # read, never generated
    keys = overlay.volume_at(settings.key_file)
    assert keys["secret"]["secretName"] == "torchship-keys"
    assert keys["mount"]["readOnly"] is True
    assert [item["path"] for item in keys["secret"]["items"]] == [settings.key_file.name]
    assert keys["mount"]["mountPath"] == str(settings.key_file.parent)


def test_resources_are_requested_and_limited_and_the_workers_fit(overlay: Rendered) -> None:
    resources = overlay.container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    settings = overlay.settings.model_defaults
    assert settings.workers is not None and settings.torch_threads is not None
    assert settings.workers * settings.torch_threads <= float(resources["limits"]["cpu"])


# ------------------------------------------------------------------------------------------------ wiring
def test_the_service_the_budget_and_the_deployment_select_the_pods(overlay: Rendered) -> None:
    labels = overlay.deployment["spec"]["template"]["metadata"]["labels"]
    service = overlay.one("Service")
    selectors = {
        "Deployment": overlay.deployment["spec"]["selector"]["matchLabels"],
        "Service": service["spec"]["selector"],
        "PodDisruptionBudget": overlay.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for index, spread in enumerate(overlay.pod.get("topologySpreadConstraints", [])):
        selectors[f"topologySpreadConstraints[{index}]"] = spread["labelSelector"]["matchLabels"]
    for kind, selector in selectors.items():
        assert selector and selector.items() <= labels.items(), kind
        assert selector["app.kubernetes.io/instance"] == overlay.name, kind  # two overlays never mix
    ports = {port["name"]: overlay.port(port["targetPort"]) for port in service["spec"]["ports"]}
    assert ports["inference"] == overlay.settings.inference_port
    assert ports["metrics"] == overlay.settings.metrics_port


def test_prometheus_scrapes_the_metrics_listener_without_a_key(overlay: Rendered) -> None:
    annotations = overlay.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert overlay.port(int(annotations["prometheus.io/port"])) == overlay.settings.metrics_port
    assert overlay.settings.metrics_auth is False


# ------------------------------------------------------------------------------------------------ overlays
def test_single_serves_a_directory_store_on_a_claim_with_management_on(single: Rendered) -> None:
    settings = single.settings
    assert single.deployment["spec"]["replicas"] == 1
    assert single.deployment["spec"]["strategy"] == {"type": "Recreate"}  # one pod at a time on the claim
    assert settings.store_dir == Path("/models") and settings.management_api == "on"
    claim = single.volume_at(Path("/models"))["persistentVolumeClaim"]["claimName"]
    assert claim in [obj["metadata"]["name"] for obj in single.all("PersistentVolumeClaim")]
    assert "emptyDir" not in single.volumes["models"]
    assert settings.snapshot_path == Path("/models/.serve-snapshot.json")  # changes survive a restart
    management = [p for p in single.one("Service")["spec"]["ports"] if p["name"] == "management"]
    assert [single.port(p["targetPort"]) for p in management] == [settings.management_port]


def test_fleet_watches_an_object_store_read_only_and_scales(fleet: Rendered) -> None:
    settings = fleet.settings
    assert settings.store_url is not None and settings.store_url.startswith("s3://")
    assert settings.watch_store == 30 and settings.management_api == "read_only"
    assert settings.snapshot_path is None  # the store is the record
    assert "replicas" not in fleet.deployment["spec"]  # the autoscaler owns the count
    hpa = fleet.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": fleet.deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "management" not in [port["name"] for port in fleet.one("Service")["spec"]["ports"]]


def test_fleet_reads_the_s3_credentials_and_endpoint_from_a_secret(fleet: Rendered) -> None:
    env = {variable["name"]: variable for variable in fleet.container["env"]}
    required = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name in (*required, "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        assert "value" not in env[name], name
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert (reference["name"], reference["key"]) == ("torchship-s3", name)
        assert reference.get("optional", False) is (name not in required)  # AWS itself needs no endpoint
