"""The three ASGI apps, one per listener: inference (8080), management (8081) and metrics (8082).

Separate listeners let an operator expose inference while keeping management and metrics private, as
TorchServe does. Each app is a :class:`~torchship.serving.http.routing.App`: its
:class:`~torchship.serving.http.edge.Edge` (Host, Origin, key), the protocols' routes, and the one error
mapping; the inference app answers errors on ``/v2/...`` in the Open Inference Protocol's body and on
``/v1/...`` in KServe's. This is where HTTP (``http/``, which knows nothing of models) meets the protocols
that drive the ``Server``.
With token authorization on, the management app also serves TorchServe's token API,
``GET /token?type=management|inference``. Each app answers ``OPTIONS /`` and ``GET /api-description``
with the OpenAPI description of its own routes (``protocols/openapi.py``).
Listeners bound to one address (KServe's TorchServe config puts inference and management on one port)
serve their apps through one :class:`SharedApp`. With ``management_api="off"`` no listener serves the
management app (:func:`~torchship.serving.http.addresses.listener_groups` leaves it out), so a shared
address has no management routes either; ``"read_only"`` is the management routes' own business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torchship.serving.errors import ErrorResponse
from torchship.serving.http.auth import Keys
from torchship.serving.http.edge import Edge
from torchship.serving.http.routing import App, Receive, Request, Response, Route, Router, Scope, Send
from torchship.serving.protocols import (
    inference_routes,
    kserve_v1_error,
    kserve_v1_routes,
    management_routes,
    token_routes,
    torchserve_error,
    v2_error,
    v2_routes,
)
from torchship.serving.protocols.openapi import description_routes
from torchship.serving.runtime.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["SharedApp", "inference_app", "management_app", "metrics_app"]


def inference_app(server: Server, edge: Edge | None = None) -> App:
    """TorchServe's inference API, the Open Inference Protocol v2 and KServe's v1 protocol."""
    routes = inference_routes(server) + v2_routes(server) + kserve_v1_routes(server)
    observe = server.metrics.observer("inference")
    return App(Router(routes + description_routes("inference", routes)), _inference_error, edge, observe)


def management_app(server: Server, edge: Edge | None = None, keys: Keys | None = None) -> App:
    """TorchServe's management API, and its token API when there are ``keys``."""
    read_only = server.settings.management_api == "read_only"
    routes = management_routes(server) + (token_routes(keys, read_only=read_only) if keys is not None else [])
    observe = server.metrics.observer("management")
    return App(Router(routes + description_routes("management", routes)), torchserve_error, edge, observe)


def metrics_app(server: Server, edge: Edge | None = None) -> App:
    """``GET /metrics`` in the Prometheus text format; ``?name[]=a&name[]=b`` keeps only those families."""
    content_type = CONTENT_TYPE.encode("latin-1")
    rendering: asyncio.Future[bytes] | None = None

    async def metrics(request: Request) -> Response:
        # Rendering costs milliseconds per hundred series, and anyone who reaches the listener may scrape:
        # it runs off the event loop, and concurrent scrapes share the one render in progress.
        nonlocal rendering
        names = request.query_all("name[]")  # as many as max_header_size lets a query string hold
        if names:
            return Response(200, await asyncio.to_thread(server.metrics.render, names), content_type)
        if rendering is None or rendering.done():
            rendering = asyncio.ensure_future(asyncio.to_thread(server.metrics.render))
        return Response(200, await asyncio.shield(rendering), content_type)

    routes = [Route("GET", "/metrics", metrics)]
    observe = server.metrics.observer("metrics")
    return App(Router(routes + description_routes("metrics", routes)), torchserve_error, edge, observe)


class SharedApp:
    """Several apps on one listener: a request goes to the first app with a route for its path (by any
    method), whose edge then admits it as on a listener of its own, so management routes still need the
    management key; a path no app routes goes to the first app, for its 404. Paths every app has
    (``/api-description``, ``OPTIONS /``) are the first app's."""

    def __init__(self, apps: Sequence[App]) -> None:
        self.apps = tuple(apps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for app in self.apps:
                if app.router.template(path) is not None:
                    await app(scope, receive, send)
                    return
        await self.apps[0](scope, receive, send)


def _inference_error(error: ErrorResponse, scope: Scope) -> Response:
    path: str = scope.get("path", "")
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error(error, scope)
    if path.startswith("/v1/"):
        return kserve_v1_error(error, scope)
    return torchserve_error(error, scope)
