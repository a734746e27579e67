"""The one mapping from exceptions to responses: our errors by class, the others a payload can cause
translated to a 400, anything else a 500 without a traceback."""

from __future__ import annotations

import pytest

from torchship.serving.errors import QueueFullError, error_response


def _raised(action: object) -> BaseException:
    try:
        assert callable(action)
        action()
    except BaseException as exc:  # whatever the payload causes, as a request handler would see it
        return exc
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda: "\ud800".encode(), "not valid Unicode"),
        (lambda: b"\xff".decode(), "not valid UTF-8"),
        (lambda: int("1" * 5000), None),  # a plain ValueError is not a payload error we can explain: 500
        (lambda: float(10**400), "too large"),
        (lambda: _recurse(0), "nested too deeply"),
    ],
)
def test_payload_failures_are_400_and_others_500(action: object, message: str | None) -> None:
    response = error_response(_raised(action))
    if message is None:
        assert (response.status, response.type) == (500, "InternalServerException")
        assert "Traceback" not in response.message
    else:
        assert (response.status, response.type) == (400, "BadRequestException")
        assert message in response.message


def test_our_errors_keep_their_status_and_headers() -> None:
    response = error_response(QueueFullError("full", retry_after=3))
    assert (response.status, response.headers) == (503, (("retry-after", "3"),))


def _recurse(depth: int) -> int:
    return _recurse(depth + 1) + 1
