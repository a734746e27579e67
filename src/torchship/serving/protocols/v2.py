"""The Open Inference Protocol (KServe v2) REST API on the inference port, so KServe/Triton clients work.

``POST /v2/models/{m}/infer`` splits the input tensor into one request per element (per row for
numeric tensors; a dict of rows when there are several inputs), so the rows of one call are batched with
each other and with concurrent TorchServe-style requests. The results are gathered back into output
tensors: for the text classifier ``label`` (BYTES), ``score`` (FP32) and ``probabilities`` (FP32,
``[N, labels]``, columns named by the ``labels`` parameter). Errors use the protocol's
``{"error": "..."}`` body with the same status codes as the rest of the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchship._version import __version__
from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import ErrorResponse, QueueFullError
from torchship.serving.http.routing import Request, Response, Route, Scope, json_response
from torchship.serving.json_body import parse_json
from torchship.serving.protocols.v2_tensors import outputs_from_results, read_inputs, to_requests
from torchship.serving.runtime.versions import ServedVersion
from torchship.serving.workers.batch import Outcome

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["v2_error", "v2_routes"]


def v2_error(error: ErrorResponse, scope: Scope | None = None) -> Response:
    """The protocol's error body ``{"error": "<message>"}``."""
    headers = tuple((key.encode("latin-1"), value.encode("latin-1")) for key, value in error.headers)
    return Response(error.status, json.dumps({"error": error.message}).encode("utf-8"), headers=headers)


def v2_routes(server: Server) -> list[Route]:
    """The v2 health, metadata, readiness and inference routes."""
    registry = server.registry

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        health = server.health()
        if health.healthy:
            return json_response({"ready": True})
        return json_response({"ready": False, "unavailable": list(health.unavailable)}, 400)

    async def metadata(request: Request) -> Response:
        return json_response({"name": "torchship", "version": __version__, "extensions": []})

    async def model_metadata(request: Request) -> Response:
        served = registry.get(request.params["model"], request.params.get("version"))
        signature = served.spec.api.signature()
        return json_response(
            {
                "name": served.name,
                "versions": [other.version for other in registry.versions(served.name)],
                "platform": "pytorch_torchship",
                "inputs": signature["inputs"],
                "outputs": signature["outputs"],
            }
        )

    async def model_ready(request: Request) -> Response:
        served = registry.get(request.params["model"], request.params.get("version"))
        is_ready = any(worker.ready_at is not None for worker in served.workers())
        return json_response({"name": served.name, "ready": is_ready}, 200 if is_ready else 400)

    async def infer(request: Request) -> Response:
        start = time.perf_counter()
        version = request.params.get("version")
        served = registry.get(request.params["model"], version)
        try:
            body = await request.body(server.settings.max_request_size)
            served = registry.reroute(served, version)  # unregistered while the body arrived?
            response = await _infer(served, body)
        except TorchshipError as exc:
            served.metrics.request_done(exc.status, time.perf_counter() - start)
            raise
        served.metrics.request_done(response.status, time.perf_counter() - start)
        return response

    prefix, versioned = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        Route("GET", "/v2/health/live", live),
        Route("GET", "/v2/health/ready", ready),
        Route("GET", "/v2", metadata),
        Route("GET", prefix, model_metadata),
        Route("GET", versioned, model_metadata),
        Route("GET", f"{prefix}/ready", model_ready),
        Route("GET", f"{versioned}/ready", model_ready),
        Route("POST", f"{prefix}/infer", infer),
        Route("POST", f"{versioned}/infer", infer),
    ]


async def _infer(served: ServedVersion, body: bytes) -> Response:
    document = parse_json(body, "The inference request")
    if not isinstance(document, dict):
        raise UserInputError('The inference request must be a JSON object with "inputs"')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise UserInputError('The inference request\'s "id" must be a string')
    tensors = read_inputs(document.get("inputs"))
    _check_capacity(served, tensors[0].rows)  # before a single row is built
    requested = _requested(document)
    rows = to_requests(tensors)
    outcomes: Sequence[Outcome] = await asyncio.gather(*(served.submit(kind, data) for kind, data in rows))
    for outcome in outcomes:
        if outcome.error_type:
            raise _OutcomeError(outcome)
    outputs = outputs_from_results([_decode(outcome) for outcome in outcomes], requested)
    answer: dict[str, Any] = {"model_name": served.name, "model_version": served.version, "outputs": outputs}
    if request_id is not None:
        answer = {"id": request_id, **answer}
    return Response(200, json.dumps(answer, allow_nan=False).encode("utf-8"))


def _check_capacity(served: ServedVersion, rows: int) -> None:
    """A 400 when ``rows`` could never fit the version's queue, a 503 when they do not fit now."""
    size = served.settings.job_queue_size
    if rows > size:
        raise UserInputError(
            f'The request has {rows} elements in its first dimension; model "{served.name}" takes at most '
            f"{size} at once (its job_queue_size): split the request"
        )
    free = size - served.pending
    if rows > free:
        raise QueueFullError(
            f"The request has {rows} elements but only {free} fit in the queue of model "
            f'"{served.name}" now; send fewer at once or retry later',
            retry_after=1,
        )


class _OutcomeError(TorchshipError):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.body.decode("utf-8"))
        self.status = outcome.status
        self.type = outcome.error_type


def _decode(outcome: Outcome) -> Any:
    if outcome.content_type.startswith("application/json"):
        return json.loads(outcome.body)
    return outcome.body.decode("utf-8", errors="replace")


def _requested(document: dict[str, Any]) -> list[str] | None:
    wanted = document.get("outputs")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise UserInputError('"outputs" must be a list of {"name": "..."} objects')
    return [output["name"] for output in wanted]
