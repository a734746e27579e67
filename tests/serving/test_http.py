"""The raw-ASGI router and the one exception-to-response mapping."""

from __future__ import annotations

import json

import pytest

from torchship.errors import NotFoundError, UserInputError, VersionNotFoundError
from torchship.serving.errors import (
    MethodNotAllowedError,
    QueueFullError,
    ResourceNotFoundError,
    error_response,
)
from torchship.serving.http import Request, Response, Route, Router


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
