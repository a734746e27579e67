"""Serving errors, and the one place where any exception becomes an HTTP error response.

The serving layer extends ``torchship.errors`` with the statuses only a server has::

    TorchshipError                      500  InternalServerException
    ├── UserInputError                  400  BadRequestException
    ├── NotFoundError                   404  ModelNotFoundException
    │   ├── VersionNotFoundError             ModelVersionNotFoundException
    │   └── ResourceNotFoundError            ResourceNotFoundException (unknown route)
    ├── ConflictError                   409  ConflictStatusException
    ├── UnauthorizedError               401  InvalidKeyException (serving.auth; adds WWW-Authenticate)
    ├── ForbiddenError                  403  ForbiddenException (serving.edge: Origin, Host)
    ├── MethodNotAllowedError           405  MethodNotAllowedException
    ├── PayloadTooLargeError            413  RequestEntityTooLargeException
    ├── ServiceUnavailableError         503  ServiceUnavailableException
    │   ├── QueueFullError                   adds ``Retry-After``
    │   └── NoWorkersError
    ├── RequestTimeoutError             504  RequestTimeoutException
    └── HandlerError                    500  InternalServerException (the user's handler failed)
        └── WorkerDiedError                  the worker process died while running the request

:func:`error_response` is the only mapping from exceptions to responses: our errors carry their status and
type as class attributes (so the lookup follows the class hierarchy), and third-party exceptions are
translated by walking their MRO through ``_TRANSLATIONS`` (the kinds a payload can cause even past the
checks: bad JSON or UTF-8, a lone surrogate, nesting past the recursion limit, a number too large for a C
type). Request bodies are parsed by :func:`torchship.serving.protocols.json_body.parse_json`, which
raises 400s itself; these translations are the net under it. Anything else is a 500 whose message points to
the server log; no traceback ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from torchship.errors import NotFoundError, TorchshipError, UserInputError

__all__ = [
    "ErrorResponse",
    "HandlerError",
    "MethodNotAllowedError",
    "NoWorkersError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "ResourceNotFoundError",
    "ServiceUnavailableError",
    "WorkerDiedError",
    "error_response",
]

logger = logging.getLogger("torchship.serving")


class ResourceNotFoundError(NotFoundError):
    """No route matches the request path."""

    type = "ResourceNotFoundException"


class MethodNotAllowedError(TorchshipError):
    """The route exists but not for this HTTP method."""

    status = 405
    type = "MethodNotAllowedException"

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allow)} if self.allow else {}


class PayloadTooLargeError(TorchshipError):
    """The request body is larger than the server's ``max_request_size``."""

    status = 413
    type = "RequestEntityTooLargeException"


class ServiceUnavailableError(TorchshipError):
    """The server cannot take the request now; retrying later may work."""

    status = 503
    type = "ServiceUnavailableException"


class QueueFullError(ServiceUnavailableError):
    """The version's job queue is full; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class NoWorkersError(ServiceUnavailableError):
    """The version has no worker and none is starting."""


class RequestTimeoutError(TorchshipError):
    """The request was not answered within the version's ``response_timeout``."""

    status = 504
    type = "RequestTimeoutException"


class HandlerError(TorchshipError):
    """The model's handler raised, or returned something the server cannot send."""

    status = 500
    type = "InternalServerException"


class WorkerDiedError(HandlerError):
    """The worker process died (crash, out of memory, killed) while running the request."""


@dataclass(frozen=True)
class ErrorResponse:
    """What the client gets: the status, TorchServe's ``type`` and ``message``, and extra headers."""

    status: int
    type: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, object]:
        """TorchServe's error body ``{"code": ..., "type": ..., "message": ...}``."""
        return {"code": self.status, "type": self.type, "message": self.message}


def _bad_json(exc: BaseException) -> TorchshipError:
    assert isinstance(exc, json.JSONDecodeError)
    return UserInputError(
        f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
        "send a JSON document with Content-Type: application/json, or plain text with text/plain."
    )


def _bad_text(exc: BaseException) -> TorchshipError:
    return UserInputError(f"The request body is not valid UTF-8 text ({exc}); send UTF-8 encoded text.")


def _not_text(exc: BaseException) -> TorchshipError:
    # Only a str holding a lone surrogate ("\ud800", which JSON and URLs can carry) fails to encode.
    return UserInputError(
        f"The request holds a character that is not valid Unicode ({exc}); send valid text."
    )


def _too_deep(exc: BaseException) -> TorchshipError:
    logger.warning("a request nested too deeply for the server", exc_info=exc)  # or a bug of ours: log it
    return UserInputError("The request is nested too deeply to process; send a flatter document.")


def _too_large_number(exc: BaseException) -> TorchshipError:
    return UserInputError(f"A number in the request is too large ({exc}); send smaller numbers.")


# Third-party exceptions we know how to explain, looked up along the exception's MRO.
_TRANSLATIONS: dict[type[BaseException], Callable[[BaseException], TorchshipError]] = {
    json.JSONDecodeError: _bad_json,
    UnicodeDecodeError: _bad_text,
    UnicodeEncodeError: _not_text,
    RecursionError: _too_deep,
    OverflowError: _too_large_number,
}


def error_response(exc: BaseException) -> ErrorResponse:
    """Turn any exception into the response a client sees; unexpected ones are logged with a traceback."""
    error = _as_torchship_error(exc)
    headers_of = getattr(error, "headers", None)
    headers = tuple(headers_of().items()) if callable(headers_of) else ()
    return ErrorResponse(error.status, error.type, error.message, headers)


def _as_torchship_error(exc: BaseException) -> TorchshipError:
    if isinstance(exc, TorchshipError):
        return exc
    for cls in type(exc).__mro__:
        translate = _TRANSLATIONS.get(cls)
        if translate is not None:
            return translate(exc)
    logger.error("unexpected error while handling a request", exc_info=exc)
    return TorchshipError(
        f"Internal server error ({type(exc).__name__}); the server log has the details. "
        "Please report it if it happens again."
    )
