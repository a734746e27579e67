"""TorchServe's REST APIs: inference (``/ping``, ``/predictions``) and management (``/models``).

Routes, query parameters, status codes and JSON bodies follow TorchServe's ``inference_api.md`` and
``management_api.md`` so that its clients work unchanged. Differences, on purpose: ``initial_workers``
defaults to the server's ``--workers`` (TorchServe's 0 leaves a model unusable until scaled);
``DELETE /models/{model}`` unregisters every version of the model; removing the default version moves the
default to the latest version left (TorchServe refuses with 403).

With ``management_api="read_only"`` (replicas of a fleet, which must not drift apart), listing and
describing work and every call that changes what is served (register, scale, set-default, unregister) is a
403 that says to publish to the store instead; ``"off"`` serves no management listener at all (see
:mod:`~torchship.serving.runner`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import ErrorResponse
from torchship.serving.http.auth import Keys
from torchship.serving.http.routing import (
    JSON,
    Endpoint,
    Request,
    Response,
    Route,
    Scope,
    json_response,
)
from torchship.serving.json_body import parse_json
from torchship.serving.protocols.describe import describe, paginate
from torchship.serving.protocols.multipart import FormLimits, form_input, form_parameters, is_form
from torchship.serving.protocols.params import parse_bool, parse_float, parse_int
from torchship.serving.server import Registration, Server
from torchship.serving.workers.batch import Outcome

__all__ = [
    "ManagementReadOnlyError",
    "inference_routes",
    "management_routes",
    "outcome_response",
    "read_only_refusal",
    "registration_from",
    "token_routes",
    "torchserve_error",
]

logger = logging.getLogger("torchship.serving")

_CONTENT_TYPES: dict[str, bytes] = {}


def inference_routes(server: Server) -> list[Route]:
    """``GET /ping``, ``POST``/``PUT /predictions/{model}[/{version}]`` (``curl -T file`` PUTs) and, for
    TorchServe handlers, ``POST /explanations/{model}[/{version}]`` (their ``explain_handle``).

    The body is the input as is (its ``Content-Type`` tells the handler how to read it), or a
    ``multipart/form-data`` form whose ``data`` or ``body`` part, else first file part, is the input.
    """
    form_limits = FormLimits.of(server.settings)
    max_response_size = server.settings.max_response_size

    async def ping(request: Request) -> Response:
        health = server.health()
        return json_response(health.body(), 500 if health.status == "Unhealthy" else 200)

    async def predict(request: Request, explain: bool = False) -> Response:
        start = time.perf_counter()
        version = request.params.get("version")
        served = server.registry.get(request.params["model"], version)
        try:
            if explain and not served.wants_request_meta:
                raise UserInputError(
                    f"Model {served.name} version {served.version} has no explanations: /explanations calls "
                    "a TorchServe handler's explain_handle, and this version is served by "
                    f"{type(served.spec.api).__name__}. Use /predictions/{served.name}"
                )
            body = await request.body(server.settings.max_request_size)
            served = server.registry.reroute(served, version)  # unregistered while the body arrived?
            content_type = request.header(b"content-type").decode("latin-1")
            if served.wants_request_meta:  # a TorchServe handler: the whole request, as its frontend sends it
                meta = request_meta(request, content_type, body, form_limits, explain=explain)
                outcome = await served.submit(content_type, body, meta)
            else:
                if is_form(content_type):
                    content_type, body = form_input(content_type, body, form_limits)
                outcome = await served.submit(content_type, body)
        except TorchshipError as exc:
            served.metrics.request_done(exc.status, time.perf_counter() - start)
            raise
        response = outcome_response(outcome, max_response_size)
        served.metrics.request_done(response.status, time.perf_counter() - start)
        return response

    async def explain(request: Request) -> Response:
        return await predict(request, explain=True)

    return [
        Route("GET", "/ping", ping),
        Route("POST", "/predictions/{model}", predict),
        Route("POST", "/predictions/{model}/{version}", predict),
        Route("PUT", "/predictions/{model}", predict),
        Route("PUT", "/predictions/{model}/{version}", predict),
        Route("POST", "/explanations/{model}", explain),
        Route("POST", "/explanations/{model}/{version}", explain),
    ]


def request_meta(
    request: Request, content_type: str, body: bytes, limits: FormLimits, *, explain: bool = False
) -> dict[str, Any]:
    """What a TorchServe handler reads beside the body (see :mod:`~torchship.serving.workers.child`): the
    request headers (names lower-case) with the two TorchServe's frontend adds (``url_path``, and
    ``explain``, which ``BaseHandler`` reads to call ``explain_handle``), and every form field (None: not a
    form). Like TorchServe's ``/predictions``, no query parameters: they are not the handler's input."""
    headers = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.scope["headers"]]
    headers += [("url_path", ""), ("explain", "True" if explain else "False")]
    return {"headers": headers, "parts": form_parameters(content_type, body, limits)}


def outcome_response(outcome: Outcome, max_size: int = sys.maxsize) -> Response:
    """A worker's outcome as TorchServe answers it: the body as is (with the headers the handler set), or
    the error body; a body over ``max_size`` (``max_response_size``) is a 500 instead."""
    status, content_type, body, error_type, headers = outcome  # one unpacking: this runs per request
    if error_type:
        return torchserve_error(ErrorResponse(status, error_type, body.decode("utf-8")))
    encoded = _CONTENT_TYPES.get(content_type)
    if encoded is None:
        encoded = _content_type(content_type)
        if encoded is None:
            return torchserve_error(
                ErrorResponse(
                    500,
                    "InternalServerException",
                    f"The model's response content type {content_type[:64]!r} cannot be sent: it must be "
                    f"Latin-1 text of at most {MAX_HANDLER_HEADER_SIZE} characters, without control "
                    "characters",
                )
            )
    if headers or len(body) > max_size:
        return _checked_response(outcome, max_size, encoded)
    return Response(status, body, encoded)


MAX_CACHED_CONTENT_TYPES = 64
"""Distinct response content types kept encoded; a handler may set a new one per response."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _content_type(content_type: str) -> bytes | None:
    """``content_type`` encoded for the response header, or None when it cannot be sent (CR/LF: a header
    injection; what the HTTP server would refuse only after the response started)."""
    if not isinstance(content_type, str) or len(content_type) > MAX_HANDLER_HEADER_SIZE:
        return None
    if _CONTROL.search(content_type):
        return None
    try:
        encoded = content_type.encode("latin-1")
    except UnicodeEncodeError:
        return None
    if len(_CONTENT_TYPES) < MAX_CACHED_CONTENT_TYPES:
        _CONTENT_TYPES[content_type] = encoded
    return encoded


def _checked_response(outcome: Outcome, max_size: int, content_type: bytes) -> Response:
    if len(outcome.body) > max_size:
        return torchserve_error(
            ErrorResponse(
                500,
                "InternalServerException",
                f"The model's response is {len(outcome.body)} bytes, more than max_response_size={max_size}; "
                "raise max_response_size (--max_response_size, or config.properties) or return less",
            )
        )
    return Response(outcome.status, outcome.body, content_type, handler_headers(outcome.headers))


MAX_HANDLER_HEADERS = 32
"""Most response headers a handler may set on one response; further ones are dropped."""
MAX_HANDLER_HEADER_SIZE = 8192
"""Most bytes (name and value together) of one response header a handler sets; a longer one is dropped."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_HANDLERS = frozenset(  # hop-by-hop, framing, and what the server itself sets
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "date",
        "server",
    }
)
_warned_headers: set[str] = set()


def handler_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers a handler set that may be sent: a token name, a value without CR, LF or NUL,
    encodable as Latin-1, not a hop-by-hop or framing header, at most :data:`MAX_HANDLER_HEADERS` of at
    most :data:`MAX_HANDLER_HEADER_SIZE` bytes. Others are dropped, with one warning per header name."""
    sent: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        reason = _header_problem(name, value, len(sent))
        if reason is None:
            sent.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        elif len(_warned_headers) < MAX_HANDLER_HEADERS and name[:64] not in _warned_headers:
            _warned_headers.add(name[:64])
            logger.warning("a handler's response header %r is not sent: %s", name[:64], reason)
    return tuple(sent)


def _header_problem(name: str, value: str, count: int) -> str | None:
    if count >= MAX_HANDLER_HEADERS:
        return f"more than MAX_HANDLER_HEADERS={MAX_HANDLER_HEADERS} headers"
    if not isinstance(name, str) or not isinstance(value, str) or not _TOKEN.fullmatch(name):
        return "its name is not an HTTP token or its value is not a string"
    if name.lower() in _NOT_HANDLERS:
        return "the server sets it"
    if len(name) + len(value) > MAX_HANDLER_HEADER_SIZE:
        return f"longer than MAX_HANDLER_HEADER_SIZE={MAX_HANDLER_HEADER_SIZE} bytes"
    if _CONTROL.search(value):
        return "its value holds a control character (CR, LF, NUL, ...)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "its value is not Latin-1 text"
    return None


class ManagementReadOnlyError(TorchshipError):
    """A call that changes what is served, on a server whose management API is read-only."""

    status = 403
    type = "ForbiddenException"


def read_only_refusal(action: str) -> ManagementReadOnlyError:
    """The 403 for ``action`` (``"registering a model"``...) under ``management_api="read_only"``."""
    return ManagementReadOnlyError(
        f"The management API is read-only on this server (--management_api read_only), so {action} is "
        "refused: a change to one replica would make it serve something the others do not. Publish the "
        "version to the store (torchship train --store ...; a PINNED file there picks the default) and "
        "let the replicas pick it up (--watch_store), or run this server with --management_api on to "
        "manage it by hand"
    )


def _mutation(server: Server, action: str, handler: Endpoint) -> Endpoint:
    """``handler``, or under ``management_api="read_only"`` a handler that refuses before reading the
    request (a refused call changes nothing, not even a queued registration)."""
    if server.settings.management_api != "read_only":
        return handler

    async def refuse(request: Request) -> Response:
        raise read_only_refusal(action)

    return refuse


def management_routes(server: Server) -> list[Route]:
    """TorchServe's management API on ``/models`` (read-only with ``management_api="read_only"``)."""
    registry = server.registry

    async def list_models(request: Request) -> Response:
        limit = parse_int(request.query, "limit", 100)
        token = parse_int(request.query, "next_page_token", 0)
        page, next_token = paginate(registry.names(), limit, token)
        body: dict[str, Any] = {
            "models": [{"modelName": name, "modelUrl": registry.get(name).spec.url} for name in page]
        }
        if next_token is not None:
            body = {"nextPageToken": str(next_token), **body}
        return json_response(body)

    async def describe_model(request: Request) -> Response:
        name, version = request.params["model"], request.params.get("version")
        versions = registry.versions(name) if version == "all" else [registry.get(name, version)]
        return json_response([describe(served, registry.is_default(served)) for served in versions])

    async def register(request: Request) -> Response:
        registration = registration_from(await _register_params(request, server.settings.max_request_size))
        served, workers = await server.register(registration)
        label = f'Model "{served.name}" Version: {served.version} registered with {workers} initial workers'
        if workers == 0:
            return json_response({"status": f"{label}. Use scale workers API to add workers for the model."})
        if not registration.synchronous:
            return json_response({"status": "Processing worker updates..."}, 202)
        return json_response({"status": label})

    async def scale(request: Request) -> Response:
        name, version = request.params["model"], request.params.get("version")
        workers = parse_int(request.query, "min_worker", 1)
        max_workers = parse_int(request.query, "max_worker", workers)
        if workers < 0 or max_workers < workers:
            raise UserInputError("max_worker cannot be less than min_worker, and neither can be negative.")
        synchronous = parse_bool(request.query, "synchronous", False)
        await server.scale(name, version, workers, max_workers, synchronous=synchronous)
        if not synchronous:
            return json_response({"status": "Processing worker updates..."}, 202)
        target = f"model: {name}" + (f", version: {version}" if version is not None else "")
        return json_response({"status": f"Workers scaled to {workers} for {target}"})

    async def set_default(request: Request) -> Response:
        name, version = request.params["model"], request.params["version"]
        registry.set_default(name, version)
        return json_response(
            {"status": f'Default version successfully updated for model "{name}" to "{version}"'}
        )

    async def unregister(request: Request) -> Response:
        name = request.params["model"]
        await registry.unregister(name, request.params.get("version"))
        return json_response({"status": f'Model "{name}" unregistered'})

    registering = _mutation(server, "registering a model", register)
    scaling = _mutation(server, "scaling workers", scale)
    defaulting = _mutation(server, "setting the default version", set_default)
    unregistering = _mutation(server, "unregistering a model", unregister)
    return [
        Route("GET", "/models", list_models),
        Route("POST", "/models", registering),
        Route("GET", "/models/{model}", describe_model),
        Route("PUT", "/models/{model}", scaling),
        Route("DELETE", "/models/{model}", unregistering),
        Route("GET", "/models/{model}/{version}", describe_model),
        Route("PUT", "/models/{model}/{version}", scaling),
        Route("DELETE", "/models/{model}/{version}", unregistering),
        Route("PUT", "/models/{model}/{version}/set-default", defaulting),
    ]


_REGISTER_PARAMS = (
    "url",
    "model_name",
    "handler",
    "runtime",
    "batch_size",
    "max_batch_delay",
    "initial_workers",
    "synchronous",
    "response_timeout",
    "startup_timeout",
    "s3_sse_kms",
    "job_queue_size",  # torchship's; TorchServe sets it server-wide
)
"""``POST /models``' parameters: TorchServe's (``RegisterModelRequest``), then torchship's."""
_RUNTIMES = ("python", "python3")


def registration_from(params: Mapping[str, str]) -> Registration:
    """``POST /models``' parameters, typed: a 400 names the first bad or unknown one. ``runtime`` must be
    Python's and ``s3_sse_kms`` false (the server never downloads); the others become the registration."""
    unknown = [key for key in params if key not in _REGISTER_PARAMS]
    if unknown:
        raise UserInputError(
            f"Unknown registration parameter {unknown[0][:40]!r}; known: {', '.join(_REGISTER_PARAMS)}"
        )
    runtime = params.get("runtime", "")
    if runtime and runtime.lower() not in _RUNTIMES:
        raise UserInputError(
            f"Parameter runtime={runtime[:40]!r} is not supported: models run on Python here "
            f"(runtime={' or '.join(_RUNTIMES)}, or leave it out)"
        )
    if parse_bool(params, "s3_sse_kms", False):
        raise UserInputError(
            "Parameter s3_sse_kms=true does not apply: the server never downloads models (from S3 or "
            "elsewhere). Copy the package into the store or a --model_roots directory and register it there"
        )

    def optional_int(key: str) -> int | None:
        # TorchServe treats an empty value as absent.
        return parse_int(params, key, 0) if params.get(key) else None

    return Registration(
        url=params.get("url", ""),
        name=params.get("model_name") or None,
        handler=params.get("handler") or None,
        initial_workers=optional_int("initial_workers"),
        synchronous=parse_bool(params, "synchronous", False),
        batch_size=optional_int("batch_size"),
        max_batch_delay=parse_float(params, "max_batch_delay"),
        job_queue_size=optional_int("job_queue_size"),
        response_timeout=parse_float(params, "response_timeout"),
        startup_timeout=parse_float(params, "startup_timeout"),
    )


async def _register_params(request: Request, limit: int) -> dict[str, str]:
    """Query parameters, or a JSON body (TorchServe accepts both)."""
    params = dict(request.query)
    if request.header(b"content-type").split(b";")[0].strip() == b"application/json":
        body = await request.body(limit)
        data = parse_json(body, "The registration body") if body.strip() else {}
        if not isinstance(data, dict):
            raise UserInputError('The registration body must be a JSON object such as {"url": "bbc"}')
        params.update({key: _as_param(key, value) for key, value in data.items()})
    return params


def _as_param(key: str, value: object) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    if value is None or isinstance(value, str | int | float):
        return str(value) if value is not None else ""
    raise UserInputError(f"Registration parameter {key[:40]!r} must be a string, number or boolean")


def token_routes(keys: Keys, *, read_only: bool = False) -> list[Route]:
    """TorchServe's token API: ``GET /token?type=management|inference`` replaces that key and answers the
    new one (``{"management": {"key": ...}}``); the edge's guard asks for the API key. ``read_only``
    (``management_api="read_only"``): a 403, since a key replaced on one replica would differ from the
    others' (replace the key file the replicas read instead)."""

    async def token(request: Request) -> Response:
        kind = request.query.get("type", "")
        if not kind:
            raise UserInputError(
                "Parameter type is required: /token?type=management or /token?type=inference"
            )
        return json_response({kind: keys.rotate(kind).entry()})

    async def refuse(request: Request) -> Response:
        raise read_only_refusal("replacing a key")

    return [Route("GET", "/token", refuse if read_only else token)]


def torchserve_error(error: ErrorResponse, scope: Scope | None = None) -> Response:
    """TorchServe's error body ``{"code", "type", "message"}`` with the error's headers."""
    headers = tuple((key.encode("latin-1"), value.encode("latin-1")) for key, value in error.headers)
    return Response(error.status, json.dumps(error.body(), indent=2).encode("utf-8") + b"\n", JSON, headers)
