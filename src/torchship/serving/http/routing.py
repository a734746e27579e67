"""A small raw-ASGI toolkit: request, response, router and the app that ties them to the error mapping.

Why not Starlette here: the inference path is the product, and every microsecond in it is overhead on top
of the model. A request on this path costs one dictionary lookup to route, one body read and one
``send`` of pre-built headers. On a POST echo endpoint under uvicorn, the same endpoint in Starlette
served about a third fewer requests per second: its Request/Response objects and routing cost more than
the rest of the request (see the performance page of the docs). The API surface is
small and fixed (TorchServe's routes), so a segment-matching router of forty lines is all it needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from torchship.errors import UserInputError
from torchship.serving.errors import (
    ErrorResponse,
    MethodNotAllowedError,
    PayloadTooLargeError,
    ResourceNotFoundError,
    error_response,
)
from torchship.serving.http.encoding import (
    Inflater,
    accepts_gzip,
    compressible,
    content_coding,
    gzip_compress,
)

if TYPE_CHECKING:
    from torchship.serving.http.edge import Edge

__all__ = [
    "App",
    "ClientDisconnectedError",
    "Request",
    "Response",
    "ResponseObserver",
    "Route",
    "Router",
    "json_response",
]

logger = logging.getLogger("torchship.serving")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: status, body and content type (plus extra headers)."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type), (b"content-length", b"%d" % len(self.body))]
        if not self.content_type:  # TorchServe sends none when its handler set none
            del headers[0]
        headers.extend(self.headers)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def with_headers(self, headers: tuple[tuple[bytes, bytes], ...]) -> Response:
        """A copy with ``headers`` added."""
        return replace(self, headers=self.headers + headers)


class ClientDisconnectedError(UserInputError):
    """The client went away (or was cut off by ``body_timeout``) before it sent the whole body."""


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON response, indented like TorchServe's for the small management bodies."""
    return Response(status, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")


class Request:
    """The parts of an ASGI request the endpoints use; the body is read on demand, within a size limit."""

    __slots__ = ("_query", "params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self._query: dict[str, str] | None = None

    def query_all(self, name: str) -> list[str]:
        """Every value of a repeated query parameter (``?name[]=a&name[]=b``), in order."""
        query = self.scope["query_string"].decode("latin-1")
        return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated key keeps its last value."""
        if self._query is None:
            self._query = dict(
                parse_qsl(self.scope["query_string"].decode("latin-1"), keep_blank_values=True)
            )
        return self._query

    def header(self, name: bytes, default: bytes = b"") -> bytes:
        """A request header by lower-case name."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value  # type: ignore[no-any-return]
        return default

    async def body(self, limit: int) -> bytes:
        """The whole body, inflated when its ``Content-Encoding`` is gzip or deflate (another is a 415);
        :class:`PayloadTooLargeError` (413) as soon as it, or what it inflates to, is known to exceed
        ``limit``."""
        declared = self.header(b"content-length")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        coding = content_coding(self.header(b"content-encoding"))
        inflater = Inflater(coding, limit) if coding is not None else None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                # Nobody is left to answer (what we send is dropped), and half a body must not reach a model.
                raise ClientDisconnectedError("The client closed the connection before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            if inflater is not None:
                inflater.feed(chunk)
            else:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if inflater is not None:
            return inflater.finish()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body ({size} bytes or more) is larger than max_request_size={limit} bytes; send less, "
        "or start the server with a larger --max_request_size"
    )


Endpoint = Callable[[Request], Awaitable[Response]]
ErrorFormatter = Callable[[ErrorResponse, Scope], Response]


@dataclass(frozen=True)
class Route:
    """``Route("POST", "/predictions/{model}", endpoint)``: ``{name}`` segments become ``request.params``;
    a segment may end in a literal after its parameter (``{model}:predict``)."""

    method: str
    path: str
    endpoint: Endpoint

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/")) if self.path != "/" else ()


class Router:
    """Matches by segment count, then literal segments, in the order the routes were given."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = tuple(routes)
        """Every route, in order (the API description and its drift test read them)."""
        self._by_length: dict[int, list[tuple[tuple[str, ...], Route]]] = {}
        for route in routes:
            self._by_length.setdefault(len(route.segments), []).append((route.segments, route))

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        """The endpoint and path parameters, or 404 / 405 (with the allowed methods)."""
        route, params = self.resolve(method, path)
        return route.endpoint, params

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters, or 404 / 405 (with the allowed methods)."""
        parts = tuple(path.strip("/").split("/")) if path.strip("/") else ()
        allowed: list[str] = []
        for segments, route in self._by_length.get(len(parts), ()):
            params = _match(segments, parts)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowedError(
                f"Method {method} is not allowed on {path}; use {' or '.join(sorted(set(allowed)))}",
                allow=tuple(sorted(set(allowed))),
            )
        raise ResourceNotFoundError("Requested resource is not found, please refer to API document.")

    def template(self, path: str) -> str | None:
        """The path template of the first route matching ``path`` by any method (None: no route does)."""
        parts = tuple(path.strip("/").split("/")) if path.strip("/") else ()
        for segments, route in self._by_length.get(len(parts), ()):
            if _match(segments, parts) is not None:
                return route.path
        return None


def _match(segments: tuple[str, ...], parts: tuple[str, ...]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            end = segment.index("}")
            suffix = segment[end + 1 :]  # "{model}:predict" (KServe v1): a literal after the parameter
            if len(part) <= len(suffix) or not part.endswith(suffix):
                return None
            params[segment[1:end]] = part[: len(part) - len(suffix)]
        elif segment != part:
            return None
    return params


# Told of every response an App sends: the path template of its route (None: refused before routing, or no
# route matches) and the status. Templates, not paths, so that what it counts stays bounded.
ResponseObserver = Callable[[str | None, int], None]


class App:
    """An ASGI app: admit (the :class:`~torchship.serving.http.edge.Edge`'s
    Host, Origin and key checks), route,
    run the endpoint, and turn any exception into an error response (one place). Every response is
    reported to ``observe`` (metrics) and gzip-compressed when the client accepts it and it is worth it."""

    def __init__(
        self,
        router: Router,
        format_error: ErrorFormatter,
        edge: Edge | None = None,
        observe: ResponseObserver | None = None,
    ) -> None:
        self.router = router
        self.format_error = format_error
        self.edge = edge
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        admission = self.edge.admit(scope) if self.edge is not None else None
        template: str | None = None
        if admission is None:
            template, response = await self._respond(scope, receive)
        else:
            if admission.refusal is not None:  # formatted, never raised: an instance may be shared
                response = self.format_error(error_response(admission.refusal), scope)
            elif admission.preflight:
                response = Response(200, b"", b"text/plain")
            else:
                template, response = await self._respond(scope, receive)
            if admission.cors:
                response = response.with_headers(admission.cors)
        if compressible(response.content_type, len(response.body)):
            response = _negotiate_encoding(response, scope)
        if self.observe is not None:
            self.observe(template, response.status)
        await response.send(send)

    async def _respond(self, scope: Scope, receive: Receive) -> tuple[str | None, Response]:
        route: Route | None = None
        try:
            route, params = self.router.resolve(scope["method"], scope["path"])
            return route.path, await route.endpoint(Request(scope, receive, params))
        except Exception as exc:
            template = route.path if route is not None else self.router.template(scope["path"])
            return template, self.format_error(error_response(exc), scope)


def _negotiate_encoding(response: Response, scope: Scope) -> Response:
    """``response`` gzip-compressed when the client accepts it (and it is not encoded already), with
    ``Vary: Accept-Encoding`` either way, since its form depends on that header."""
    vary = ((b"vary", b"Accept-Encoding"),)
    if any(name == b"content-encoding" for name, _ in response.headers):
        return response
    accept = b""
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            accept = value
            break
    if not accepts_gzip(accept):
        return response.with_headers(vary)
    headers = (*response.headers, (b"content-encoding", b"gzip"), *vary)
    return replace(response, body=gzip_compress(response.body), headers=headers)
