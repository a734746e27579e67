"""Triton's statistics, repository-index and model-configuration extensions of the v2 REST API.

* ``GET /v2/models[/{m}[/versions/{v}]]/stats``: per version, read from the server's Prometheus metrics
  (no second bookkeeping): ``success``/``fail`` counts and cumulative ns of the requests answered below
  and from 400, ``queue`` (time waiting for a worker), ``compute_infer`` (per batch a worker ran),
  ``inference_count`` (requests run) and ``execution_count`` (batches).
* ``POST /v2/repository/index``: the registered versions, ``READY`` when a worker has loaded (only those
  with ``{"ready": true}``). Loading and unloading through the repository API are not served: the
  management API does that, behind its key.
* ``GET /v2/models/{m}[/versions/{v}]/config``: what has a meaning here: ``max_batch_size`` (the version's
  ``batch_size``), inputs and outputs without the batch dimension, ``dynamic_batching`` with
  ``max_queue_delay_microseconds`` (``max_batch_delay``) and the queue size, the instance count.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from torchship.errors import UserInputError
from torchship.serving.http.routing import Request, Response, Route, json_response
from torchship.serving.json_body import parse_json
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.versions import ServedVersion

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["model_config", "repository_routes", "version_stats"]

_NS = 1e9
_Samples = dict[tuple[str, str, str], float]  # (sample name, model, version) -> value


def repository_routes(server: Server) -> list[Route]:
    """The statistics, repository index and configuration routes (``/v2/models/stats`` comes first, so
    that it is not read as the metadata of a model named ``stats``, as in Triton)."""
    registry = server.registry

    async def stats(request: Request) -> Response:
        name, version = request.params.get("model"), request.params.get("version")
        if name is None:
            chosen = registry.all_versions()
        elif version is None:
            chosen = registry.versions(registry.get(name).name)
        else:
            chosen = [registry.get(name, version)]
        samples = _read_samples(server.metrics)
        return json_response({"model_stats": [version_stats(served, samples) for served in chosen]})

    async def index(request: Request) -> Response:
        body = await request.body(server.settings.max_request_size)
        document = parse_json(body, "The index request") if body.strip() else {}
        if not isinstance(document, dict) or not isinstance(document.get("ready", False), bool):
            raise UserInputError('The index request must be empty or {"ready": true|false}')
        entries = [_index_entry(served) for served in registry.all_versions()]
        if document.get("ready"):
            entries = [entry for entry in entries if entry["state"] == "READY"]
        return json_response(entries)

    async def config(request: Request) -> Response:
        return json_response(
            model_config(registry.get(request.params["model"], request.params.get("version")))
        )

    prefix, versioned = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        Route("GET", "/v2/models/stats", stats),
        Route("GET", f"{prefix}/stats", stats),
        Route("GET", f"{versioned}/stats", stats),
        Route("POST", "/v2/repository/index", index),
        Route("GET", f"{prefix}/config", config),
        Route("GET", f"{versioned}/config", config),
    ]


def _read_samples(metrics: Metrics) -> tuple[_Samples, _Samples]:
    """The ``torchship_*`` samples by (name, model, version), and apart the request counts from 400 up."""
    samples: _Samples = defaultdict(float)
    failed: _Samples = defaultdict(float)
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                continue
            key = (sample.name, labels["model"], labels["version"])
            if sample.name == "torchship_requests_total" and int(labels.get("status", "0")) >= 400:
                failed[key] += sample.value
            else:
                samples[key] += sample.value
    return samples, failed


def version_stats(served: ServedVersion, read: tuple[_Samples, _Samples]) -> dict[str, Any]:
    """One entry of Triton's ``model_stats``, from :func:`_read_samples`' tables."""
    samples, failed = read
    model, version = served.name, served.version

    def value(name: str, table: _Samples = samples) -> float:
        return table.get((name, model, version), 0.0)

    def count_ns(count: float, seconds: float) -> dict[str, int]:
        return {"count": int(count), "ns": round(seconds * _NS)}

    succeeded = served.metrics.succeeded_seconds()
    failed_seconds = max(0.0, value("torchship_request_duration_seconds_sum") - succeeded)
    return {
        "name": model,
        "version": version,
        "inference_count": int(value("torchship_batch_size_sum")),
        "execution_count": int(value("torchship_batch_size_count")),
        "inference_stats": {
            "success": count_ns(value("torchship_requests_total"), succeeded),
            "fail": count_ns(value("torchship_requests_total", failed), failed_seconds),
            "queue": count_ns(
                value("torchship_queue_wait_seconds_count"), value("torchship_queue_wait_seconds_sum")
            ),
            "compute_infer": count_ns(
                value("torchship_inference_seconds_count"), value("torchship_inference_seconds_sum")
            ),
        },
    }


def _index_entry(served: ServedVersion) -> dict[str, str]:
    ready = any(worker.ready_at is not None for worker in served.workers())
    entry = {"name": served.name, "version": served.version, "state": "READY" if ready else "UNAVAILABLE"}
    if not ready:
        entry["reason"] = served.load_error or "no worker has loaded the model yet"
    return entry


_TYPES = {"BYTES": "TYPE_STRING"}


def model_config(served: ServedVersion) -> dict[str, Any]:
    """Triton's model configuration, for the fields that have a meaning in torchship."""
    settings, signature = served.settings, served.spec.api.signature()
    on_gpu = any((worker.device or "").startswith("cuda") for worker in served.workers())
    return {
        "name": served.name,
        "version": served.version,
        "platform": "pytorch_torchship",
        "max_batch_size": settings.batch_size,
        "input": [_tensor_config(spec) for spec in signature["inputs"]],
        "output": [_tensor_config(spec) for spec in signature["outputs"]],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(settings.max_batch_delay * 1000),
            "default_queue_policy": {"max_queue_size": settings.job_queue_size},
        },
        "instance_group": [{"count": served.target_workers, "kind": "KIND_GPU" if on_gpu else "KIND_CPU"}],
    }


def _tensor_config(spec: dict[str, Any]) -> dict[str, Any]:
    """A tensor without its batch dimension, as Triton configures a model with ``max_batch_size > 0``: one
    value per request is ``dims [1]`` reshaped to a scalar."""
    datatype = spec["datatype"]
    dims = list(spec["shape"][1:])
    config: dict[str, Any] = {"name": spec["name"], "data_type": _TYPES.get(datatype, f"TYPE_{datatype}")}
    if dims:
        return {**config, "dims": dims}
    return {**config, "dims": [1], "reshape": {"shape": []}}
