"""KServe: the torchship runtimes and the example InferenceServices under ``deploy/kserve/`` are what
KServe's own CRDs accept (``../shared/kserve/``, KServe v0.20), and the runtime's container arguments serve
what KServe's storage initializer leaves in ``/mnt/models``.

The schema check is stricter than the API server: it refuses fields the schema does not name, which the
API server would drop without a word (a misspelt ``protocolVersion`` would leave a runtime without
protocols). The serving tests lay out ``/mnt/models`` in a temporary folder, once as a torchship package
(a version folder of a store, as ``storageUri: s3://bucket/models/bbc/3`` copies it) and once as TorchServe's
``model-store/`` + ``config/config.properties`` (KServe's example file, fixed ports and all), and run the
ClusterServingRuntime's exact arguments through the image's entry point (``deploy/docker/entrypoint.py``)
as real processes, with ``/mnt/models`` and ``{{.Name}}`` substituted and the runtime's env (``TMPDIR``
pointing into the test's folder). Appended, as an InferenceService's args would be (KServe appends them):
``TEST_OPTIONS`` below, which trade the fixed ports for free ones on 127.0.0.1 and one worker for two.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

# The serving tests' helpers live beside them (tests/serving), not on this folder's path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from mar_support import KSERVE_CONFIG as CONFIG
from mar_support import KSERVE_MODEL as MODEL
from mar_support import KSERVE_SNAPSHOT as SNAPSHOT
from mar_support import archive
from serving_support import LABELS, publish_classifier, start_logged, wait_until

from torchship.cli import build_parser
from torchship.serving.command import apply_ts_config, serve_settings
from torchship.store import load_package

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.py"
CRDS = ROOT.parent / "shared" / "kserve"
CRD_FILES = {
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
KUBERNETES_VERSION = "1.32.0"  # kubectl's here; the built-in kinds' schemas
# An InferenceService's name is a DNS-1035 label (KServe makes host names of it); the others DNS-1123.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
TEST_OPTIONS = [
    "--inference_address=null",
    "--management_address=null",
    "--metrics_address=null",
    "--host=127.0.0.1",
    "--inference_port=0",
    "--management_port=0",
    "--metrics_port=0",
    "--workers=1",
]
START_DEADLINE_S = 180.0
TEXTS = ["the team won the cup final", "shares rose after strong profits"]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{index}", document)
        for path in sorted(KSERVE.glob("*.yaml"))
        for index, document in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        if document is not None
    ]


DOCUMENTS = _documents()


def _one(kind: str, name: str = "torchship") -> dict[str, Any]:
    [document] = [d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


@functools.cache
def _crd(kind: str) -> dict[str, Any]:
    path = CRDS / CRD_FILES[kind]
    assert path.is_file(), f"{path} is missing: KServe's CRDs are test data at ../shared/kserve/"
    # libyaml's loader: the InferenceService CRD is 2 MB, seconds to read in pure Python.
    return dict(yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader))


@functools.cache
def _validators(kind: str) -> dict[str, jsonschema.Draft4Validator]:
    """``apiVersion`` -> a validator of the strict schema of each version KServe serves for ``kind``
    (OpenAPI v3's schemas are draft 4's; KServe's own schema is trusted, not checked itself: minutes)."""
    crd = _crd(kind)
    group = crd["spec"]["group"]
    return {
        f"{group}/{version['name']}": jsonschema.Draft4Validator(
            _strict(version["schema"]["openAPIV3Schema"])
        )
        for version in crd["spec"]["versions"]
        if version["served"]
    }


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever it lists properties and keeps no unknown
    fields, so that a field KServe does not know fails here instead of vanishing in the API server."""
    if not isinstance(schema, dict):
        return schema
    strict = dict(schema)
    if "properties" in schema:
        strict["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            strict[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            strict[key] = [_strict(sub) for sub in schema[key]]
    return strict


def _validate_kserve(document: dict[str, Any]) -> None:
    """Raise when KServe's CRD for the document's kind would refuse it (or silently drop a field)."""
    served = _validators(document["kind"])
    assert document["apiVersion"] in served, f"{document['apiVersion']} is not one of {sorted(served)}"
    assert document["kind"] == _crd(document["kind"])["spec"]["names"]["kind"]
    metadata = document["metadata"]
    pattern = DNS_1035 if document["kind"] == "InferenceService" else DNS_1123
    assert pattern.match(metadata["name"]), f"metadata.name {metadata['name']!r} is not a valid name"
    # Namespaced examples are applied with -n; a cluster-scoped object has no namespace at all.
    assert "namespace" not in metadata, "leave the namespace to kubectl apply -n"
    served[document["apiVersion"]].validate({k: v for k, v in document.items() if k != "metadata"})


# ------------------------------------------------------------------------------------- the manifests


@pytest.mark.parametrize("document", [d for _, d in DOCUMENTS], ids=[where for where, _ in DOCUMENTS])
def test_every_manifest_is_what_kserve_or_kubernetes_accepts(document: dict[str, Any]) -> None:
    if document["kind"] in CRD_FILES:
        _validate_kserve(document)
    else:  # the Secret and ServiceAccount the examples run as
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_what_kserve_would_drop_or_reject() -> None:
    runtime = copy.deepcopy(_one("ClusterServingRuntime"))
    runtime["spec"]["protocolVersion"] = runtime["spec"].pop("protocolVersions")  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        _validate_kserve(runtime)
    runtime = copy.deepcopy(_one("ClusterServingRuntime"))
    runtime["spec"]["supportedModelFormats"][0]["autoSelect"] = "yes"
    with pytest.raises(jsonschema.ValidationError, match="'yes' is not of type 'boolean'"):
        _validate_kserve(runtime)


def test_both_runtimes_say_the_same_and_what_kserve_needs() -> None:
    cluster, namespaced = _one("ClusterServingRuntime"), _one("ServingRuntime")
    assert cluster["spec"] == namespaced["spec"]
    spec = cluster["spec"]
    formats = {entry["name"]: entry for entry in spec["supportedModelFormats"]}
    assert set(formats) == {"torchship", "pytorch"}
    # torchship packages pick this runtime by themselves; `pytorch` stays KServe's TorchServe runtime's.
    assert (formats["torchship"]["autoSelect"], formats["pytorch"]["autoSelect"]) == (True, False)
    assert spec["protocolVersions"] == ["v1", "v2"]
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    options = dict(arg.split("=", 1) for arg in container["args"][1:] if "=" in arg)
    assert container["args"][0] == "serve" and "command" not in container  # the image's entry point runs it
    assert (options["--model_dir"], options["--model_name"]) == ("/mnt/models", "{{.Name}}")
    # KServe sends v1 and v2 to the one container port, and Prometheus scrapes the metrics listener.
    assert options["--inference_address"] == f"http://0.0.0.0:{container['ports'][0]['containerPort']}"
    assert (
        options["--metrics_address"] == f"http://0.0.0.0:{spec['annotations']['prometheus.kserve.io/port']}"
    )
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert options["--management_address"].startswith("http://127.0.0.1:")
    assert (options["--management_api"], options["--token_auth"]) == ("read_only", "false")
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    workers = int(options["--workers"])
    assert (
        workers
        == int(container["resources"]["limits"]["cpu"])
        == int(container["resources"]["requests"]["cpu"])
    )


def test_each_example_names_a_format_the_runtime_serves_and_where_its_models_are() -> None:
    formats = {entry["name"] for entry in _one("ClusterServingRuntime")["spec"]["supportedModelFormats"]}
    services = [d for _, d in DOCUMENTS if d["kind"] == "InferenceService"]
    assert len(services) == 3
    accounts = {d["metadata"]["name"] for _, d in DOCUMENTS if d["kind"] == "ServiceAccount"}
    for service in services:
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        assert model["modelFormat"]["name"] in formats
        assert model.get("runtime", "torchship") == "torchship"
        if model["modelFormat"]["name"] == "pytorch":  # not autoSelect: the runtime must be named
            assert model["runtime"] == "torchship"
        assert predictor["serviceAccountName"] in accounts
        store = [arg for arg in model.get("args", []) if arg.startswith("--store=")]
        # Models come from storageUri (copied to /mnt/models) or from a store torchship reads itself.
        assert ("storageUri" in model) != bool(store), service["metadata"]["name"]
        assert all(arg.startswith("--store=s3://") for arg in store)
        annotations = service["metadata"]["annotations"]
        assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"


# ------------------------------------------------------------------------------ the runtime, running


@dataclass
class Runtime:
    """One torchship process started with the runtime's arguments."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def tail(self, lines: int = 40) -> str:
        text = self.stderr.read_text(errors="replace") + self.stdout.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def inference_url(self) -> str | None:
        found = re.search(r"^torchship: inference\s+(\S+)", self.stdout.read_text(errors="replace"), re.M)
        return found[1] if found else None

    def wait_ready(self) -> str:
        """Poll the readiness route the runtime's probe asks until it answers 200; the inference URL."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"torchship exited with {self.process.returncode}:\n{self.tail()}")
            url = self.inference_url()
            with contextlib.suppress(httpx.HTTPError):
                return url is not None and httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
            return False

        wait_until(ready, START_DEADLINE_S, "the runtime's readiness route to answer 200")
        url = self.inference_url()
        assert url is not None
        return url

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            raise


def runtime_command(mnt: Path, name: str) -> list[str]:
    """The ClusterServingRuntime's container arguments for ``name`` with ``mnt`` as /mnt/models, run by
    the image's entry point, with :data:`TEST_OPTIONS` appended."""
    [container] = _one("ClusterServingRuntime")["spec"]["containers"]
    args = [arg.replace("/mnt/models", str(mnt)).replace("{{.Name}}", name) for arg in container["args"]]
    return [sys.executable, str(ENTRYPOINT), *args, *TEST_OPTIONS]


def start_runtime(root: Path, mnt: Path, name: str) -> Runtime:
    [container] = _one("ClusterServingRuntime")["spec"]["containers"]
    tmp = root / "tmp"
    tmp.mkdir()
    env = {**os.environ, **{e["name"]: e["value"].replace("/tmp", str(tmp)) for e in container["env"]}}
    env.pop("TS_CONFIG_FILE", None)
    process, stdout, stderr = start_logged(runtime_command(mnt, name), env, root)
    return Runtime(process, stdout, stderr)


def package_mnt(root: Path) -> Path:
    """/mnt/models for ``storageUri: s3://.../models/bbc/1``: the version folder's files at the top."""
    version = publish_classifier(root / "store", "bbc", seed=3, head_scale=20.0)
    mnt = root / "mnt-models"
    shutil.copytree(root / "store" / "bbc" / str(version), mnt)
    return mnt


def torchserve_mnt(root: Path) -> Path:
    """/mnt/models for KServe's TorchServe layout: the archive in model-store/, and KServe's example
    config.properties as it is (fixed ports, model_store=/mnt/models/model-store, a model_snapshot)."""
    mnt = root / "mnt-models"
    archive(root, MODEL, ROOT / "tests" / "serving" / "mar_handlers" / "mar_kserve_handler.py",
            export_path=mnt / "model-store")  # fmt: skip
    config = mnt / "config" / "config.properties"
    config.parent.mkdir(parents=True)
    snapshot = json.dumps(SNAPSHOT, separators=(",", ":"))
    config.write_text(
        CONFIG.format(inference=8085, metrics=8082, grpc=7070, grpc_management=7071,
                      model_store="/mnt/models/model-store", snapshot=snapshot),
        encoding="utf-8",
    )  # fmt: skip
    return mnt


@dataclass
class Served:
    package: str  # the inference URL of each
    torchserve: str
    package_dir: Path
    runtimes: list[Runtime]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    package_root, mar_root = tmp_path_factory.mktemp("kserve-package"), tmp_path_factory.mktemp("kserve-mar")
    package_dir, mar_dir = package_mnt(package_root), torchserve_mnt(mar_root)
    runtimes: list[Runtime] = []
    try:
        # Both start together: their imports and model loads overlap.
        runtimes.append(start_runtime(package_root, package_dir, "news"))
        runtimes.append(start_runtime(mar_root, mar_dir, "torchserve-adder"))
        urls = [runtime.wait_ready() for runtime in runtimes]
        yield Served(urls[0], urls[1], package_dir, runtimes)
    finally:
        for runtime in runtimes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                runtime.stop()


@pytest.mark.slow
def test_a_package_is_served_under_the_inference_service_name_over_v1_and_v2(served: Served) -> None:
    expected = load_package(served.package_dir).predict_proba(TEXTS)
    v1 = httpx.post(f"{served.package}/v1/models/news:predict", json={"instances": TEXTS}, timeout=60)
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    for prediction, row in zip(predictions, expected.tolist(), strict=True):
        assert prediction["probabilities"] == pytest.approx(dict(zip(LABELS, row, strict=True)), abs=1e-5)
        assert prediction["label"] == LABELS[row.index(max(row))]
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
    v2 = httpx.post(f"{served.package}/v2/models/news/infer", json=request, timeout=60)
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    assert outputs["probabilities"]["data"] == pytest.approx(expected.flatten().tolist(), abs=1e-5)
    assert outputs["label"]["data"] == [p["label"] for p in predictions]
    # Only the InferenceService's name is served: the package's own (bbc) is not.
    assert httpx.get(f"{served.package}/v1/models", timeout=30).json() == {"models": ["news"]}


@pytest.mark.slow
def test_a_torchserve_model_store_is_served_with_its_own_names_over_v1_and_v2(served: Served) -> None:
    assert httpx.get(f"{served.torchserve}/v1/models", timeout=30).json() == {"models": [MODEL]}
    v1 = httpx.post(f"{served.torchserve}/v1/models/{MODEL}:predict",
                    json={"instances": [[1, 2, 3], {"x": [10]}]}, timeout=60)  # fmt: skip
    assert v1.status_code == 200, v1.text
    assert v1.json() == {"predictions": [{"sum": 6.0, "count": 3}, {"sum": 10.0, "count": 1}]}
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    v2 = httpx.post(f"{served.torchserve}/v2/models/{MODEL}/infer", json=request, timeout=60)
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    assert outputs["sum"]["data"] == [6.0, 15.0]


@pytest.mark.slow
def test_the_runtime_stops_cleanly_on_sigterm(served: Served) -> None:
    # Last: the kubelet's SIGTERM drains and exits 0, for both layouts.
    for runtime in served.runtimes:
        assert runtime.stop() == 0, runtime.tail()


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity in binary units (``10Gi``) as bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_the_fleet_example_reads_its_store_itself_with_the_runtime_s_arguments() -> None:
    # KServe appends an InferenceService's args to the runtime's; with --store, --model_dir is not read
    # (nothing is at /mnt/models without a storageUri).
    [container] = _one("ClusterServingRuntime")["spec"]["containers"]
    fleet = _one("InferenceService", "models")["spec"]["predictor"]["model"]
    args = [arg.replace("{{.Name}}", "models") for arg in [*container["args"], *fleet["args"]]]
    parser = build_parser(only="serve")
    apply_ts_config(parser, args)
    settings = serve_settings(parser.parse_args(args)["serve"])
    assert (settings.store, settings.watch_store, settings.keep_versions) == (
        "s3://torchship-models/production",
        30,
        1,
    )
    # The version cache fits the runtime's cache volume, and the pod's ephemeral storage holds both.
    volume = _one("ClusterServingRuntime")["spec"]["volumes"][0]
    assert volume["name"] == "torchship-cache"
    assert settings.store_cache_size < _bytes(volume["emptyDir"]["sizeLimit"])
    assert _bytes(volume["emptyDir"]["sizeLimit"]) < _bytes(
        container["resources"]["limits"]["ephemeral-storage"]
    )
    assert {"name": "XDG_CACHE_HOME", "value": "/var/cache/torchship"} in container["env"]
    assert {"name": "torchship-cache", "mountPath": "/var/cache/torchship"} in container["volumeMounts"]
    # A long first download is covered by the start-up probe, not killed by liveness.
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600
    assert (settings.management_api, settings.model_store, settings.snapshot_path) == (
        "read_only",
        None,
        None,
    )
