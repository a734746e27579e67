"""The Open Inference Protocol (KServe v2) REST API on the inference port, so KServe/Triton clients work.

``POST /v2/models/{m}/infer`` splits the input tensor into one request per element (per row for
numeric tensors; a dict of rows when there are several inputs), so the rows of one call are batched with
each other and with concurrent TorchServe-style requests. The results are gathered back into output
tensors: for the text classifier ``label`` (BYTES), ``score`` (FP32) and ``probabilities`` (FP32,
``[N, labels]``, columns named by the ``labels`` parameter). Inputs are checked against the metadata a
handler declares (``ModelAPI.signature``; the default one is a placeholder and checks nothing). Served
extensions: binary tensor data both ways (``v2_binary``), Triton's classification (``v2_outputs``),
statistics, repository index and model configuration (``v2_repository``). Errors use the protocol's
``{"error": "..."}`` body with the same status codes as the rest of the server.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchship._version import __version__
from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import ErrorResponse
from torchship.serving.handler import ModelAPI
from torchship.serving.http.routing import Request, Response, Route, Scope, json_response
from torchship.serving.json_body import parse_json
from torchship.serving.protocols.v2_binary import (
    BINARY_HEADER,
    attach_binary_inputs,
    binary_outputs,
    split_body,
)
from torchship.serving.protocols.v2_outputs import binary_names, check_inputs, classify, read_requested
from torchship.serving.protocols.v2_repository import repository_routes
from torchship.serving.protocols.v2_tensors import outputs_from_results, read_inputs, to_requests
from torchship.serving.runtime.versions import ServedVersion
from torchship.serving.workers.batch import Outcome, outcome_value

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["EXTENSIONS", "v2_error", "v2_routes"]

EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics")
"""The protocol extensions served, as ``GET /v2`` lists them (``model_repository``: the index only)."""


def v2_error(error: ErrorResponse, scope: Scope | None = None) -> Response:
    """The protocol's error body ``{"error": "<message>"}``."""
    headers = tuple((key.encode("latin-1"), value.encode("latin-1")) for key, value in error.headers)
    return Response(error.status, json.dumps({"error": error.message}).encode("utf-8"), headers=headers)


def v2_routes(server: Server) -> list[Route]:
    """The v2 health, metadata, readiness and inference routes."""
    registry = server.registry
    # A version never changes once published, and a handler's signature() may read files: once each.
    declared: weakref.WeakKeyDictionary[ServedVersion, list[dict[str, Any]] | None]
    declared = weakref.WeakKeyDictionary()

    def declared_inputs(served: ServedVersion) -> list[dict[str, Any]] | None:
        if served not in declared:
            declared[served] = served.spec.api.signature()["inputs"] if _declares_signature(served) else None
        return declared[served]

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        health = server.health()
        if health.healthy:
            return json_response({"ready": True})
        return json_response({"ready": False, "unavailable": list(health.unavailable)}, 400)

    async def metadata(request: Request) -> Response:
        return json_response({"name": "torchship", "version": __version__, "extensions": list(EXTENSIONS)})

    async def model_metadata(request: Request) -> Response:
        served = registry.get(request.params["model"], request.params.get("version"))
        signature = served.spec.api.signature()
        return json_response(
            {
                "name": served.name,
                "versions": (
                    [served.version]
                    if "version" in request.params
                    else [other.version for other in registry.versions(served.name)]
                ),
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
            header_length = request.header(BINARY_HEADER.lower().encode("latin-1"), b"")
            response = await _infer(
                served, body, header_length.decode("latin-1") or None, declared_inputs(served)
            )
        except TorchshipError as exc:
            served.metrics.request_done(exc.status, time.perf_counter() - start)
            raise
        served.metrics.request_done(response.status, time.perf_counter() - start)
        return response

    prefix, versioned = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        *repository_routes(server),
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


async def _infer(
    served: ServedVersion, body: bytes, header_length: str | None, declared: list[dict[str, Any]] | None
) -> Response:
    header, raw = split_body(body, header_length)
    document = parse_json(header, "The inference request")
    if not isinstance(document, dict):
        raise UserInputError('The inference request must be a JSON object with "inputs"')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise UserInputError('The inference request\'s "id" must be a string')
    attach_binary_inputs(document, raw)
    tensors = read_inputs(document.get("inputs"))
    if declared is not None:
        check_inputs(served.name, tensors, declared)
    served.check_room(tensors[0].rows, "elements in its first dimension")  # before a single row is built
    requested, binary_all = read_requested(document)
    rows = to_requests(tensors)
    outcomes: Sequence[Outcome] = await asyncio.gather(*(served.submit(kind, data) for kind, data in rows))
    for outcome in outcomes:
        if outcome.error_type:
            raise _OutcomeError(outcome)
    names = None if requested is None else [output.name for output in requested]
    outputs = outputs_from_results([outcome_value(outcome) for outcome in outcomes], names)
    if requested is not None:
        outputs = [
            classify(tensor, wanted.class_count) if wanted.class_count else tensor
            for tensor, wanted in zip(outputs, requested, strict=True)
        ]
    binary = binary_names(outputs, requested, binary_all)
    tensor_bytes = binary_outputs(outputs, binary)
    answer: dict[str, Any] = {"model_name": served.name, "model_version": served.version, "outputs": outputs}
    if request_id is not None:
        answer = {"id": request_id, **answer}
    encoded = json.dumps(answer, allow_nan=False).encode("utf-8")
    if not binary:
        return Response(200, encoded)
    length = ((BINARY_HEADER.lower().encode("latin-1"), b"%d" % len(encoded)),)
    return Response(200, encoded + tensor_bytes, b"application/octet-stream", headers=length)


def _declares_signature(served: ServedVersion) -> bool:
    """Inputs are checked against a handler's own metadata; the default one is a placeholder that any
    handler taking JSON keeps, so it checks nothing."""
    return type(served.spec.api).signature is not ModelAPI.signature


class _OutcomeError(TorchshipError):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.body.decode("utf-8"))
        self.status = outcome.status
        self.type = outcome.error_type
