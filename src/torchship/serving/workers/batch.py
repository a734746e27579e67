"""Run one batch through a ``ModelAPI`` and turn every outcome into bytes for the wire (worker side).

This is where the batch contract is enforced: payloads are decoded by content type, the handler gets one
payload per request and must return one result per request, and each result becomes an
:class:`Outcome` (status, content type, body). A request whose body cannot be decoded fails alone with
400 naming the problem (not valid UTF-8 or JSON, nested too deeply, an integer too long, a lone
surrogate). When a batch of several requests raises, each request is retried on its own so that one bad
input fails only its own request. A result that is an exception, or that cannot be encoded (not JSON,
nested too deeply, too large), fails only its request, with that error's status. Exceptions cross the
process boundary as plain strings, never as pickled objects.

Nothing a payload or a handler raises gets past :func:`run_batch` except ``SystemExit`` and
``KeyboardInterrupt`` (a handler that means to end its worker): any other ``BaseException`` becomes that
request's error, so the worker lives on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import HandlerError, error_response
from torchship.serving.handler import ModelAPI
from torchship.serving.json_body import parse_json

__all__ = ["Outcome", "decode_payload", "encode_result", "error_outcome", "outcome_value", "run_batch"]

logger = logging.getLogger("torchship.serving.worker")

JSON = "application/json"

# A handler that calls sys.exit() means to end its worker (the batch then fails with the exit code); SIGINT
# is ignored in workers, so KeyboardInterrupt is the handler's own doing too.
_EXITS = (SystemExit, KeyboardInterrupt)
_UNDESCRIBABLE = b"Internal server error; the server log has the details."


class Outcome(NamedTuple):
    """One request's answer. On success ``error_type`` is empty; on failure ``body`` is the message.
    ``headers`` are extra response headers a handler set (TorchServe's ``context.set_response_header``);
    an empty ``content_type`` sends no ``Content-Type`` (TorchServe's answer when its handler set none)."""

    status: int
    content_type: str
    body: bytes
    error_type: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def decode_payload(content_type: str, body: bytes) -> Any:
    """JSON (``application/json`` or ``+json``) → object; ``text/*`` → str; anything else → bytes.
    A body that does not decode raises :class:`UserInputError` (400) naming the problem."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON or media.endswith("+json"):
        return parse_json(body, "The request body")
    if media.startswith("text/"):
        return _decode_text(body)
    return body


def encode_result(result: Any) -> Outcome:
    """bytes → octet-stream; str → text/plain; tensors and arrays → lists; the rest → JSON. A result that
    cannot be sent becomes a 500 that says why, whatever it raises."""
    try:
        return _encode(result)
    except TorchshipError as exc:
        return error_outcome(exc)
    except _EXITS:
        raise
    except BaseException as exc:  # a tensor whose tolist() fails, a result too large to encode (MemoryError)
        return error_outcome(
            HandlerError(f"the handler's result cannot be sent ({type(exc).__name__}: {exc})")
        )


def outcome_value(outcome: Outcome) -> Any:
    """A successful outcome's body as a value for a protocol that nests answers in JSON (v2, KServe v1):
    JSON parsed, anything else as text. A TorchServe handler that set no content type answers JSON for any
    result that is not a string or bytes (``json.dumps``), so an untyped body that parses is JSON too."""
    media = outcome.content_type
    if media.startswith(JSON) or not media:
        try:
            return json.loads(outcome.body)
        except ValueError:
            if media:
                raise
    return outcome.body.decode("utf-8", errors="replace")


def error_outcome(exc: BaseException) -> Outcome:
    """The wire form of an error: its status, TorchServe type and message (never the exception object)."""
    try:
        response = error_response(exc)
        status = response.status if isinstance(response.status, int) and 400 <= response.status < 600 else 500
        return Outcome(
            status, JSON, str(response.message).encode("utf-8", "backslashreplace"), str(response.type)
        )
    except _EXITS:
        raise
    except BaseException:  # an exception whose message or status cannot be read
        logger.exception("could not describe an error raised by %s", type(exc).__name__)
        return Outcome(500, JSON, _UNDESCRIBABLE, "InternalServerException")


def run_batch(api: ModelAPI, requests: Sequence[tuple[Any, ...]]) -> list[Outcome]:
    """Run ``requests`` (content type, body) through ``api`` and return one outcome per request.

    An api with a ``handle_requests(requests)`` method (``TorchServeArchiveAPI``) gets the requests as they
    came, ``(content_type, body[, meta])``, and answers them itself, one outcome each."""
    handle_requests = getattr(api, "handle_requests", None)
    if handle_requests is not None:
        return _handled(api, handle_requests, requests)
    outcomes: list[Outcome | None] = [None] * len(requests)
    payloads: list[Any] = []
    positions: list[int] = []
    for position, (content_type, body) in enumerate(requests):
        try:
            payloads.append(decode_payload(content_type, body))
            positions.append(position)
        except _EXITS:
            raise
        except BaseException as exc:  # UserInputError for the client's mistakes; anything else is a 500
            outcomes[position] = error_outcome(exc)
    for position, outcome in zip(positions, _predict(api, payloads), strict=True):
        outcomes[position] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


def _handled(api: ModelAPI, handle_requests: Any, requests: Sequence[tuple[Any, ...]]) -> list[Outcome]:
    """The outcomes of an api that answers its requests itself; what it raises fails the whole batch."""
    try:
        outcomes = list(handle_requests(list(requests)))
    except _EXITS:
        raise
    except BaseException as exc:
        _log_failure(api, exc)
        return [error_outcome(exc)] * len(requests)
    if len(outcomes) != len(requests):
        error = HandlerError(
            f"{type(api).__name__}.handle_requests answered {len(outcomes)} outcome(s) for "
            f"{len(requests)} request(s)"
        )
        return [error_outcome(error)] * len(requests)
    return outcomes


def _predict(api: ModelAPI, payloads: list[Any]) -> list[Outcome]:
    if not payloads:
        return []
    try:
        results = api.predict(payloads)
        count = len(results)
    except _EXITS:
        raise
    except BaseException as exc:
        if len(payloads) > 1:
            # Isolate the culprit: a retry one by one costs time only when a batch has already failed.
            return [outcome for payload in payloads for outcome in _predict(api, [payload])]
        _log_failure(api, exc)
        return [error_outcome(exc)]
    if count != len(payloads):
        error = HandlerError(
            f"{type(api).__name__} returned {count} result(s) for a batch of {len(payloads)} "
            "request(s); return a list with exactly one result per request, in order"
        )
        return [error_outcome(error)] * len(payloads)
    return [encode_result(result) for result in results]


def _log_failure(api: ModelAPI, exc: BaseException) -> None:
    if isinstance(exc, TorchshipError) and exc.status < 500:
        return  # the client's mistake; the response says what it was
    logger.error("%s failed on a request", type(api).__name__, exc_info=exc)


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"The request body is not valid UTF-8 text ({exc.reason} at byte {exc.start}); send UTF-8 "
            "encoded text"
        ) from None


def _encode(result: Any) -> Outcome:
    if isinstance(result, BaseException):
        return error_outcome(result)
    if isinstance(result, bytes):
        return Outcome(200, "application/octet-stream", bytes(result))
    if isinstance(result, str):
        try:
            return Outcome(200, "text/plain; charset=utf-8", result.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise HandlerError(f"the handler returned text that is not valid Unicode ({exc})") from None
    try:
        body = json.dumps(result, ensure_ascii=False, allow_nan=False, default=_jsonable)
    except RecursionError:
        raise HandlerError(
            "the handler's result is nested too deeply to send as JSON; return a flatter structure"
        ) from None
    except (TypeError, ValueError) as exc:
        raise HandlerError(
            f"the handler's result cannot be sent as JSON ({exc}); return dicts, lists, numbers, strings or "
            "bytes"
        ) from None
    try:
        return Outcome(200, JSON, body.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate in a string: as a \\ud800 escape it is still valid JSON
        return Outcome(200, JSON, json.dumps(result, allow_nan=False, default=_jsonable).encode("ascii"))
