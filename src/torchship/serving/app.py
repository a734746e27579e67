"""The three ASGI apps, one per listener: inference (8080), management (8081) and metrics (8082).

Separate listeners let an operator expose inference while keeping management and metrics private, as
TorchServe does. Each app is a :class:`~torchship.serving.http.App`: routes plus the one error mapping;
the inference app answers errors on ``/v2/...`` in the Open Inference Protocol's body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchship.serving.errors import ErrorResponse
from torchship.serving.http import App, Request, Response, Route, Router, Scope, torchserve_error
from torchship.serving.metrics import CONTENT_TYPE
from torchship.serving.protocols import inference_routes, management_routes, v2_error, v2_routes

if TYPE_CHECKING:
    from torchship.serving.server import Server

__all__ = ["inference_app", "management_app", "metrics_app"]


def inference_app(server: Server) -> App:
    """TorchServe's inference API and the Open Inference Protocol v2."""
    return App(Router(inference_routes(server) + v2_routes(server)), _inference_error)


def management_app(server: Server) -> App:
    """TorchServe's management API."""
    return App(Router(management_routes(server)), torchserve_error)


def metrics_app(server: Server) -> App:
    """``GET /metrics`` in the Prometheus text format."""
    content_type = CONTENT_TYPE.encode("latin-1")

    async def metrics(request: Request) -> Response:
        return Response(200, server.metrics.render(), content_type)

    return App(Router([Route("GET", "/metrics", metrics)]), torchserve_error)


def _inference_error(error: ErrorResponse, scope: Scope) -> Response:
    path: str = scope.get("path", "")
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error(error, scope)
    return torchserve_error(error, scope)
