"""KServe's v1 protocol (the TensorFlow Serving style REST API) on the inference port, as KServe's Python
model server answers it, so its SDK's ``protocol="v1"`` client and ``curl`` examples work unchanged.

::

    GET  /                          {"status": "alive"}
    GET  /v1/models                 {"models": ["news", ...]}
    GET  /v1/models/{m}             {"name": "news", "ready": true}; 503 while no worker has loaded
    POST /v1/models/{m}:predict     {"instances": ["text", {"text": "...", "top_k": 2}, ...]}
                                    -> {"predictions": [<one answer per instance>, ...]}

Each instance is one request to the model's default version, through the same queue and batcher as
``/predictions`` and v2 ``infer``: a string goes to the handler as ``text/plain``, anything else as its JSON,
so a prediction is exactly what ``POST /predictions/{m}`` answers for that body. An instance the handler
refuses fails the whole call with that instance's status. The number of instances is bounded by the
version's ``job_queue_size`` before any is queued. KServe has no ``/versions/{v}`` form of the v1 routes
and neither does this; ``:explain`` is not served (no explainers here). Errors use KServe's
``{"error": "<message>"}`` body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import ServiceUnavailableError
from torchship.serving.http.routing import Request, Response, Route, json_response
from torchship.serving.json_body import parse_json
from torchship.serving.protocols.v2 import v2_error
from torchship.serving.runtime.versions import ServedVersion
from torchship.serving.workers.batch import Outcome, outcome_value

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["kserve_v1_error", "kserve_v1_routes"]

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


# KServe's v1 error body is the v2 one: ``{"error": "<message>"}``.
kserve_v1_error = v2_error


def kserve_v1_routes(server: Server) -> list[Route]:
    """KServe v1 liveness, model list, model readiness and ``:predict``."""
    registry = server.registry

    async def live(request: Request) -> Response:
        return json_response({"status": "alive"})

    async def models(request: Request) -> Response:
        return json_response({"models": registry.names()})

    async def model_ready(request: Request) -> Response:
        served = registry.get(request.params["model"])
        if not any(worker.ready_at is not None for worker in served.workers()):
            raise ServiceUnavailableError(f"Model with name {served.name} is not ready.")
        return json_response({"name": served.name, "ready": True})

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        served = registry.get(request.params["model"])
        try:
            body = await request.body(server.settings.max_request_size)
            served = registry.reroute(served, None)  # unregistered while the body arrived?
            response = await _predict(served, body)
        except TorchshipError as exc:
            served.metrics.request_done(exc.status, time.perf_counter() - start)
            raise
        served.metrics.request_done(response.status, time.perf_counter() - start)
        return response

    return [
        Route("GET", "/", live),
        Route("GET", "/v1/models", models),
        Route("GET", "/v1/models/{model}", model_ready),
        Route("POST", "/v1/models/{model}:predict", predict),
    ]


async def _predict(served: ServedVersion, body: bytes) -> Response:
    document = parse_json(body, "The predict request")
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise UserInputError(
            'The predict request must be a JSON object with a non-empty "instances" list, '
            'e.g. {"instances": ["a text", {"text": "another"}]}'
        )
    served.check_room(len(instances), "instances")  # before a single request is built
    outcomes: Sequence[Outcome] = await asyncio.gather(
        *(served.submit(*_request(instance)) for instance in instances)
    )
    for position, outcome in enumerate(outcomes):
        if outcome.error_type:
            raise _InstanceError(position, outcome)
    predictions = [outcome_value(outcome) for outcome in outcomes]
    return Response(200, json.dumps({"predictions": predictions}, allow_nan=False).encode("utf-8"))


def _request(instance: Any) -> tuple[str, bytes]:
    if isinstance(instance, str):
        return _TEXT, instance.encode("utf-8")
    return _JSON, json.dumps(instance).encode("utf-8")


class _InstanceError(TorchshipError):
    def __init__(self, position: int, outcome: Outcome) -> None:
        super().__init__(f"Instance {position}: {outcome.body.decode('utf-8', errors='replace')}")
        self.status = outcome.status
        self.type = outcome.error_type
