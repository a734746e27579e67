"""TorchServe's API description: ``OPTIONS /`` and ``GET /api-description`` answer an OpenAPI 3 document
of the listener's own routes (inference, management or metrics), the document itself, unwrapped, as
TorchServe answers it.

The document is built once, from the listener's :class:`~torchship.serving.http.routing.Route` list and
:data:`OPERATIONS`, the description of every route keyed by ``(method, path)``. A route missing from the
table is still listed, marked ``x-undocumented``; ``tests/serving/test_openapi.py`` fails naming it, so a
new route cannot ship undescribed. The description names routes only, never models or settings.
``apps.py`` adds ``description_routes(api, routes)`` to each listener's routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from torchship._version import __version__
from torchship.serving.http.routing import Request, Response, Route
from torchship.serving.protocols.openapi_schemas import (
    ANY,
    BINARY,
    BOOLEAN,
    INTEGER,
    NUMBER,
    SCHEMAS,
    STRING,
    Schema,
    obj,
    ref,
)

__all__ = ["OPERATIONS", "description_routes", "openapi_document", "undocumented"]

OPENAPI_VERSION = "3.0.3"
UNDOCUMENTED = "x-undocumented"


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema, *statuses: str) -> dict[str, Any]:
    return {status: {"description": description, "content": _json(schema)} for status in statuses or ("200",)}


_ERROR_REASONS = {
    "400": "Bad request: the message names the parameter or part of the body and what to send",
    "401": "The listener's key is missing or wrong",
    "403": "A Host or Origin this listener does not answer",
    "404": "No such model, version or resource",
    "409": "The model or version already exists",
    "413": "The request body is larger than max_request_size",
    "415": "A Content-Encoding other than gzip, deflate or identity",
    "500": "The handler or the server failed (the message points to the server log)",
    "503": "No worker can take the request now, or the queue is full (Retry-After)",
    "504": "The handler did not answer within response_timeout",
}
_EDGE = ("401", "403")


def _errors(schema: str, *statuses: str) -> dict[str, Any]:
    return {
        status: {"description": _ERROR_REASONS[status], "content": _json(ref(schema))}
        for status in (*_EDGE, *statuses)
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": STRING}


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_MODEL = _path("model", "The model's name")
_VERSION = _path("version", "A version of the model")
_V2_ERRORS = ("400", "404")
_RUN_ERRORS = ("400", "404", "413", "415", "500", "503", "504")

_DESCRIPTION: dict[str, Any] = {
    "summary": "This listener's OpenAPI description",
    "responses": {
        **_ok("An OpenAPI 3 document of this listener's routes", ref("OpenAPI")),
        **_errors("TorchServeError"),
    },
}


def _prediction(versioned: bool, explain: bool = False) -> dict[str, Any]:
    target = "a version of a model" if versioned else "a model's default version"
    return {
        "summary": f"Explain one request on {target} (a TorchServe handler's explain_handle)"
        if explain
        else f"Run one request on {target}",
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "requestBody": {
            "description": "What the version's handler takes: a text classifier takes "
            '{"text": "...", "top_k": 2} or the text itself',
            "content": {
                "application/json": {"schema": ANY, "example": {"text": "the team won", "top_k": 2}},
                "text/plain": {"schema": STRING},
                "application/octet-stream": {"schema": BINARY},
                "multipart/form-data": {"schema": obj(data=STRING, body=STRING)},
            },
        },
        "responses": {
            "200": {
                "description": "The handler's answer; a text classifier's is "
                '{"label": ..., "score": ..., "probabilities": {label: probability}}',
                "content": {"application/json": {"schema": ANY}, "text/plain": {"schema": STRING}},
            },
            **_errors("TorchServeError", *_RUN_ERRORS),
        },
    }


def _v2_metadata(versioned: bool) -> dict[str, Any]:
    return {
        "summary": "v2 model metadata: inputs and outputs",
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "responses": {
            **_ok("The model's metadata", ref("V2ModelMetadata")),
            **_errors("V2Error", *_V2_ERRORS),
        },
    }


def _v2_ready(versioned: bool) -> dict[str, Any]:
    ready = ref("V2ModelReady")
    return {
        "summary": "v2 model readiness: 200 when a worker has loaded, 400 otherwise",
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "responses": {
            **_ok("Ready", ready),
            **_errors("V2Error", "404"),
            "400": {
                "description": "Not ready; or a bad request (the v2 error body)",
                "content": _json({"oneOf": [ready, ref("V2Error")]}),
            },
        },
    }


_V2_EXAMPLE = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the team won"]}]}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Binary tensor data: the length of the JSON header that starts the body",
    "schema": {"type": "integer", "minimum": 0},
}


def _v2_infer(versioned: bool) -> dict[str, Any]:
    return {
        "summary": "v2 inference: one batched request per element of the first input",
        "parameters": [_MODEL, _VERSION, _HEADER_LENGTH] if versioned else [_MODEL, _HEADER_LENGTH],
        "requestBody": {
            "required": True,
            "description": "The JSON request, or (binary tensor data) its JSON header then the tensor bytes",
            "content": {
                "application/json": {"schema": ref("V2InferenceRequest"), "example": _V2_EXAMPLE},
                "application/octet-stream": {"schema": BINARY},
            },
        },
        "responses": {
            "200": {
                "description": "The output tensors; with binary outputs asked for, the JSON header (its "
                "length in Inference-Header-Content-Length) then their bytes",
                "content": {
                    **_json(ref("V2InferenceResponse")),
                    "application/octet-stream": {"schema": BINARY},
                },
            },
            **_errors("V2Error", *_RUN_ERRORS),
        },
    }


def _v2_stats(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": "Triton's statistics extension: request counts and times per version",
        "parameters": parameters,
        "responses": {**_ok("The statistics", ref("V2Stats")), **_errors("V2Error", *_V2_ERRORS)},
    }


def _v2_config(versioned: bool) -> dict[str, Any]:
    return {
        "summary": "Triton's model configuration, for the fields that have a meaning here",
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "responses": {**_ok("The configuration", ref("V2ModelConfig")), **_errors("V2Error", *_V2_ERRORS)},
    }


def _describe(versioned: bool) -> dict[str, Any]:
    version = "one version (`all`: every version)" if versioned else "the default version"
    return {
        "summary": f"Describe {version}: workers, batch settings, queue",
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "responses": {
            **_ok("The descriptions", {"type": "array", "items": ref("ModelDescription")}),
            **_errors("TorchServeError", "400", "404"),
        },
    }


_WORKER_QUERY = [
    _query("min_worker", INTEGER, "Workers to run (default 1)"),
    _query("max_worker", INTEGER, "Most workers (default min_worker)"),
    _query("synchronous", BOOLEAN, "Answer once the workers are scaled (200) instead of at once (202)"),
]


def _scale(versioned: bool) -> dict[str, Any]:
    return {
        "summary": "Scale the workers of " + ("a version" if versioned else "the default version"),
        "parameters": [_MODEL, _VERSION, *_WORKER_QUERY] if versioned else [_MODEL, *_WORKER_QUERY],
        "responses": {
            **_ok("Scaled (200) or scaling (202)", ref("Status"), "200", "202"),
            **_errors("TorchServeError", "400", "404", "500", "503", "504"),
        },
    }


def _unregister(versioned: bool) -> dict[str, Any]:
    return {
        "summary": "Unregister " + ("a version" if versioned else "every version of a model"),
        "parameters": [_MODEL, _VERSION] if versioned else [_MODEL],
        "responses": {**_ok("Unregistered", ref("Status")), **_errors("TorchServeError", "400", "404")},
    }


_REGISTRATION = {
    "url": (STRING, "A model in the store (`bbc`, `bbc/2`), or a package directory or .zip"),
    "model_name": (STRING, "The name to serve it under"),
    "handler": (STRING, "The package's own handler, by name or module:Class; anything else is a 400"),
    "runtime": (STRING, "python or python3 (anything else is a 400)"),
    "s3_sse_kms": (BOOLEAN, "Must be false: the server never downloads"),
    "initial_workers": (INTEGER, "Workers to start"),
    "synchronous": (BOOLEAN, "Answer once the workers have loaded (200) instead of at once (202)"),
    "batch_size": (INTEGER, "Most requests per batch"),
    "max_batch_delay": (NUMBER, "Milliseconds to wait for a batch to fill"),
    "job_queue_size": (INTEGER, "Requests that may wait for a worker"),
    "response_timeout": (NUMBER, "Seconds a batch may take"),
    "startup_timeout": (NUMBER, "Seconds a worker may take to load"),
}

_REGISTER: dict[str, Any] = {
    "summary": "Register a package (query parameters, or the same keys as a JSON body)",
    "parameters": [_query(name, schema, text) for name, (schema, text) in _REGISTRATION.items()],
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {key: schema for key, (schema, _) in _REGISTRATION.items()},
                    "additionalProperties": False,
                },
                "example": {"url": "news/1", "model_name": "news_copy", "initial_workers": 0},
            }
        },
    },
    "responses": {
        **_ok("Registered (200) or loading (202)", ref("Status"), "200", "202"),
        **_errors("TorchServeError", "400", "404", "409", "413", "415", "500", "503", "504"),
    },
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("OPTIONS", "/"): _DESCRIPTION,
    ("GET", "/api-description"): {**_DESCRIPTION, "deprecated": True},
    # inference: TorchServe
    ("GET", "/ping"): {
        "summary": "Health: Healthy, Partial Healthy (naming what cannot serve), or Unhealthy (500)",
        "responses": {**_ok("The health", ref("Health"), "200", "500"), **_errors("TorchServeError")},
    },
    ("POST", "/predictions/{model}"): _prediction(False),
    ("POST", "/predictions/{model}/{version}"): _prediction(True),
    ("PUT", "/predictions/{model}"): _prediction(False),  # curl -T file
    ("PUT", "/predictions/{model}/{version}"): _prediction(True),
    ("POST", "/explanations/{model}"): _prediction(False, explain=True),
    ("POST", "/explanations/{model}/{version}"): _prediction(True, explain=True),
    # inference: Open Inference Protocol v2
    ("GET", "/v2/health/live"): {
        "summary": "v2 liveness",
        "responses": {**_ok("Live", obj(("live",), live=BOOLEAN)), **_errors("V2Error")},
    },
    ("GET", "/v2/health/ready"): {
        "summary": "v2 readiness: 200 when every default version can serve, 400 otherwise",
        "responses": {**_ok("Ready (200) or not (400)", ref("V2Ready"), "200", "400"), **_errors("V2Error")},
    },
    ("GET", "/v2"): {
        "summary": "v2 server metadata",
        "responses": {**_ok("The server's metadata", ref("V2ServerMetadata")), **_errors("V2Error")},
    },
    ("GET", "/v2/models/{model}"): _v2_metadata(False),
    ("GET", "/v2/models/{model}/versions/{version}"): _v2_metadata(True),
    ("GET", "/v2/models/{model}/ready"): _v2_ready(False),
    ("GET", "/v2/models/{model}/versions/{version}/ready"): _v2_ready(True),
    ("POST", "/v2/models/{model}/infer"): _v2_infer(False),
    ("POST", "/v2/models/{model}/versions/{version}/infer"): _v2_infer(True),
    ("GET", "/v2/models/stats"): _v2_stats([]),
    ("GET", "/v2/models/{model}/stats"): _v2_stats([_MODEL]),
    ("GET", "/v2/models/{model}/versions/{version}/stats"): _v2_stats([_MODEL, _VERSION]),
    ("POST", "/v2/repository/index"): {
        "summary": "The registered versions, READY when a worker has loaded",
        "requestBody": {"required": False, "content": _json(obj(ready=BOOLEAN))},
        "responses": {**_ok("The index", ref("V2RepositoryIndex")), **_errors("V2Error", "400")},
    },
    ("GET", "/v2/models/{model}/config"): _v2_config(False),
    ("GET", "/v2/models/{model}/versions/{version}/config"): _v2_config(True),
    # inference: KServe v1
    ("GET", "/"): {
        "summary": "KServe v1 liveness",
        "responses": {**_ok("Alive", obj(("status",), status=STRING)), **_errors("TorchServeError")},
    },
    ("GET", "/v1/models"): {
        "summary": "KServe v1: the names of the models",
        "responses": {
            **_ok("The models", obj(("models",), models={"type": "array", "items": STRING})),
            **_errors("V2Error"),
        },
    },
    ("GET", "/v1/models/{model}"): {
        "summary": "KServe v1 model readiness: 503 while no worker has loaded",
        "parameters": [_MODEL],
        "responses": {
            **_ok("Ready", ref("V2ModelReady")),
            **_errors("V2Error", "400", "404", "503"),
        },
    },
    ("POST", "/v1/models/{model}:predict"): {
        "summary": "KServe v1 predict: one batched request per instance, to the default version",
        "parameters": [_MODEL],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": obj(("instances",), instances={"type": "array", "minItems": 1, "items": ANY}),
                    "example": {"instances": ["the team won", {"text": "shares rose"}]},
                }
            },
        },
        "responses": {
            **_ok(
                "One answer per instance, as POST /predictions answers it",
                obj(("predictions",), predictions={"type": "array", "items": ANY}),
            ),
            **_errors("V2Error", *_RUN_ERRORS),
        },
    },
    # management
    ("GET", "/models"): {
        "summary": "List the models, a page at a time",
        "parameters": [
            _query("limit", INTEGER, "Models per page (1-100; default 100)"),
            _query("next_page_token", INTEGER, "Where the page starts (from nextPageToken)"),
        ],
        "responses": {**_ok("A page of models", ref("ModelList")), **_errors("TorchServeError", "400")},
    },
    ("POST", "/models"): _REGISTER,
    ("GET", "/models/{model}"): _describe(False),
    ("GET", "/models/{model}/{version}"): _describe(True),
    ("PUT", "/models/{model}"): _scale(False),
    ("PUT", "/models/{model}/{version}"): _scale(True),
    ("DELETE", "/models/{model}"): _unregister(False),
    ("DELETE", "/models/{model}/{version}"): _unregister(True),
    ("PUT", "/models/{model}/{version}/set-default"): {
        "summary": "Make a version the default",
        "parameters": [_MODEL, _VERSION],
        "responses": {**_ok("Done", ref("Status")), **_errors("TorchServeError", "400", "404")},
    },
    ("GET", "/token"): {
        "summary": "Replace the management or inference key and answer the new one (needs the API key)",
        "parameters": [
            {**_query("type", {"type": "string", "enum": ["management", "inference"]}, "Which key")}
        ],
        "responses": {**_ok("The new key", ref("Token")), **_errors("TorchServeError", "400")},
    },
    # metrics
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics in the text exposition format",
        "parameters": [
            {
                **_query("name[]", {"type": "array", "items": STRING}, "Only these families (repeatable)"),
                "style": "form",
                "explode": True,
            }
        ],
        "responses": {
            "200": {"description": "The metrics", "content": {"text/plain": {"schema": STRING}}},
            **_errors("TorchServeError"),
        },
    },
}

_TEMPLATE = re.compile(r"\{([^}]+)\}")
_TITLES = {
    "inference": "torchship inference API",
    "management": "torchship management API",
    "metrics": "torchship metrics API",
}


def openapi_document(api: str, routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` on the ``api`` listener; a route missing from
    :data:`OPERATIONS` is listed with :data:`UNDOCUMENTED` set."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = OPERATIONS.get((route.method, route.path))
        if operation is None:
            operation = {
                "summary": "Undocumented",
                UNDOCUMENTED: True,
                "responses": {"default": {"description": "Undocumented"}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = {
            "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{route.method.lower()} {route.path}").strip("_"),
            **operation,
            "parameters": _with_path_params(operation.get("parameters", []), _TEMPLATE.findall(route.path)),
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": _TITLES.get(api, f"torchship {api} API"), "version": __version__},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def _with_path_params(parameters: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """``parameters`` with every path template named (a stub needs them to be valid OpenAPI)."""
    declared = {p["name"] for p in parameters if p["in"] == "path"}
    return parameters + [_path(name, name) for name in names if name not in declared]


def undocumented(routes: Iterable[Route]) -> list[str]:
    """``"METHOD /path"`` of each route :data:`OPERATIONS` does not describe."""
    return [
        f"{route.method} {route.path}" for route in routes if (route.method, route.path) not in OPERATIONS
    ]


def description_routes(api: str, routes: list[Route]) -> list[Route]:
    """``OPTIONS /`` and ``GET /api-description``, answering the document of ``routes`` and themselves."""

    async def description(request: Request) -> Response:
        return response

    own = [Route("OPTIONS", "/", description), Route("GET", "/api-description", description)]
    document = openapi_document(api, routes + own)
    response = Response(200, json.dumps(document, indent=2).encode("utf-8") + b"\n")
    return own
