"""The raw-ASGI router, the one exception-to-response mapping, and the transport that sends each response
in one piece."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import MutableMapping
from typing import Any, cast

import pytest

from torchship.errors import NotFoundError, UserInputError, VersionNotFoundError
from torchship.serving.errors import (
    MethodNotAllowedError,
    QueueFullError,
    ResourceNotFoundError,
    error_response,
)
from torchship.serving.http.edge import Edge
from torchship.serving.http.routing import App, Request, Response, Route, Router
from torchship.serving.http.transport import CoalescingTransport
from torchship.serving.protocols import torchserve_error


async def _endpoint(request: Request) -> Response:
    return Response(200, b"")


ROUTER = Router(
    [
        Route("GET", "/models/{model}", _endpoint),
        Route("DELETE", "/models/{model}", _endpoint),
        Route("PUT", "/models/{model}/{version}/set-default", _endpoint),
        Route("GET", "/ping", _endpoint),
    ]
)


def test_routes_match_segments_and_capture_parameters() -> None:
    assert ROUTER.match("GET", "/models/bbc")[1] == {"model": "bbc"}
    assert ROUTER.match("GET", "/models/bbc/")[1] == {"model": "bbc"}
    assert ROUTER.match("PUT", "/models/bbc/2/set-default")[1] == {"model": "bbc", "version": "2"}


def test_unknown_paths_are_404_and_wrong_methods_405_with_allow() -> None:
    with pytest.raises(ResourceNotFoundError):
        ROUTER.match("GET", "/models/bbc/2/other")
    with pytest.raises(MethodNotAllowedError) as error:
        ROUTER.match("POST", "/models/bbc")
    assert error.value.allow == ("DELETE", "GET")


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (UserInputError("x"), 400, "BadRequestException"),
        (NotFoundError("x"), 404, "ModelNotFoundException"),
        (VersionNotFoundError("x"), 404, "ModelVersionNotFoundException"),
        (QueueFullError("x", retry_after=3), 503, "ServiceUnavailableException"),
        (json.JSONDecodeError("bad", "{", 0), 400, "BadRequestException"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), 400, "BadRequestException"),
        (KeyError("secret internals"), 500, "InternalServerException"),
    ],
)
def test_every_exception_maps_to_a_status_and_type(error: Exception, status: int, kind: str) -> None:
    response = error_response(error)
    assert (response.status, response.type) == (status, kind)
    assert "secret internals" not in response.message


def test_queue_full_carries_retry_after() -> None:
    assert error_response(QueueFullError("full", retry_after=3)).headers == (("retry-after", "3"),)


class _RecordingTransport:
    """What the coalescing wrapper needs of an asyncio transport, recording what reaches the socket."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


def test_a_response_written_in_pieces_leaves_in_one_send() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        raw = _RecordingTransport()
        transport = CoalescingTransport(cast(asyncio.Transport, raw), loop)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        assert raw.sent == [] and transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)  # the end of this loop turn
        assert raw.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)  # the rest is the transport's
        transport.write(b"last")
        transport.close()  # sends what is buffered before closing
        assert raw.sent[-1] == b"last" and raw.closed
        transport.write(b"too late")
        await asyncio.sleep(0)
        assert raw.sent[-1] == b"last"  # nothing is written to a closing transport
        raw = _RecordingTransport()
        transport = CoalescingTransport(cast(asyncio.Transport, raw), loop)
        transport.write(b"never")
        transport.abort()
        await asyncio.sleep(0)
        assert raw.sent == [] and raw.aborted

    asyncio.run(scenario())


class _Exchange:
    """Drives an :class:`App` like uvicorn: a request's body messages in, the response messages out."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming = list(messages)
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> MutableMapping[str, Any]:
        return self.incoming.pop(0) if self.incoming else {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    def run(
        self, app: App, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, dict[bytes, bytes]]:
        scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers}
        asyncio.run(app(scope, self.receive, self.send))
        start = self.sent[0]
        return start["status"], dict(start["headers"])


async def _read_body(request: Request) -> Response:
    return Response(200, await request.body(1000))


def _edge_app() -> App:
    routes = [Route("POST", "/echo", _read_body), Route("GET", "/ping", _endpoint)]
    return App(
        Router(routes), torchserve_error, Edge("inference", origins=["https://app.example"], check_host=True)
    )


def test_the_edge_answers_before_routing_and_its_cors_headers_reach_every_answer() -> None:
    app = _edge_app()
    status, _ = _Exchange().run(app, "GET", "/nowhere", [(b"host", b"attacker.example")])
    assert status == 403  # refused before the router could say 404
    origin = [(b"host", b"localhost"), (b"origin", b"https://app.example")]
    status, headers = _Exchange().run(app, "GET", "/nowhere", origin)
    assert status == 404 and headers[b"access-control-allow-origin"] == b"https://app.example"
    preflight = [*origin, (b"access-control-request-method", b"POST")]
    status, headers = _Exchange().run(app, "OPTIONS", "/echo", preflight)
    assert status == 200 and headers[b"access-control-allow-methods"] == b"GET, POST, OPTIONS"
    exchange = _Exchange({"type": "http.request", "body": b"hello", "more_body": False})
    assert exchange.run(app, "POST", "/echo", [(b"host", b"localhost")])[0] == 200
    assert exchange.sent[1]["body"] == b"hello"


def test_a_body_cut_short_by_a_disconnect_never_reaches_the_endpoint() -> None:
    exchange = _Exchange({"type": "http.request", "body": b'{"text": "half', "more_body": True})
    status, _ = exchange.run(_edge_app(), "POST", "/echo", [(b"host", b"localhost")])
    assert status == 400  # answered into the void: uvicorn drops what is sent to a gone client
    assert b"half" not in exchange.sent[1]["body"]


def test_every_response_is_reported_with_its_route_template_never_its_path() -> None:
    seen: list[tuple[str | None, int]] = []
    routes = [Route("POST", "/echo", _read_body), Route("GET", "/models/{model}", _endpoint)]
    app = App(Router(routes), torchserve_error, observe=lambda route, status: seen.append((route, status)))
    _Exchange().run(app, "GET", "/models/bbc", [])
    _Exchange().run(app, "GET", "/anything/at/all", [])
    _Exchange().run(app, "DELETE", "/models/bbc", [])
    too_large = {"type": "http.request", "body": b"x" * 1001, "more_body": False}
    _Exchange(too_large).run(app, "POST", "/echo", [])
    assert seen == [("/models/{model}", 200), (None, 404), ("/models/{model}", 405), ("/echo", 413)]


def test_large_responses_are_gzipped_only_when_accepted() -> None:
    body = b'{"text": "' + b"abc " * 300 + b'"}'

    async def large(request: Request) -> Response:
        return Response(200, body)

    app = App(Router([Route("GET", "/large", large)]), torchserve_error)
    for accept, compressed in [(b"gzip", True), (b"gzip;q=0", False), (b"", False), (b"br, *", True)]:
        exchange = _Exchange()
        status, headers = exchange.run(app, "GET", "/large", [(b"accept-encoding", accept)])
        assert status == 200 and headers[b"vary"] == b"Accept-Encoding"
        sent = exchange.sent[1]["body"]
        assert (headers.get(b"content-encoding") == b"gzip") is compressed
        assert (gzip.decompress(sent) if compressed else sent) == body
        assert headers[b"content-length"] == b"%d" % len(sent)
        assert len(exchange.sent) == 2  # still one start and one body: one send on the wire
