"""Run one batch through a ``ModelAPI`` and turn every outcome into bytes for the wire (worker side).

This is where the batch contract is enforced: payloads are decoded by content type, the handler gets one
payload per request and must return one result per request, and each result becomes an
:class:`Outcome` (status, content type, body). A request whose body cannot be decoded fails alone with
400. When a batch of several requests raises, each request is retried on its own so that one bad input
fails only its own request. A result that is an exception fails only its request, with that error's
status. Exceptions cross the process boundary as plain strings, never as pickled objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from torchship.errors import TorchshipError
from torchship.serving.api import ModelAPI
from torchship.serving.errors import HandlerError, error_response

__all__ = ["Outcome", "decode_payload", "encode_result", "error_outcome", "run_batch"]

logger = logging.getLogger("torchship.serving.worker")

JSON = "application/json"


class Outcome(NamedTuple):
    """One request's answer. On success ``error_type`` is empty; on failure ``body`` is the message."""

    status: int
    content_type: str
    body: bytes
    error_type: str = ""


def decode_payload(content_type: str, body: bytes) -> Any:
    """JSON (``application/json`` or ``+json``) → object; ``text/*`` → str; anything else → bytes."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON or media.endswith("+json"):
        return json.loads(body)
    if media.startswith("text/"):
        return body.decode("utf-8")
    return body


def encode_result(result: Any) -> Outcome:
    """bytes → octet-stream; str → text/plain; tensors and arrays → lists; the rest → JSON."""
    if isinstance(result, BaseException):
        return error_outcome(result)
    if isinstance(result, bytes):
        return Outcome(200, "application/octet-stream", result)
    if isinstance(result, str):
        return Outcome(200, "text/plain; charset=utf-8", result.encode("utf-8"))
    try:
        body = json.dumps(result, ensure_ascii=False, allow_nan=False, default=_jsonable)
    except (TypeError, ValueError) as exc:
        return error_outcome(
            HandlerError(
                f"the handler's result cannot be sent as JSON ({exc}); return dicts, lists, "
                "numbers, strings or bytes"
            )
        )
    return Outcome(200, JSON, body.encode("utf-8"))


def error_outcome(exc: BaseException) -> Outcome:
    """The wire form of an error: its status, TorchServe type and message (never the exception object)."""
    response = error_response(exc)
    return Outcome(response.status, JSON, response.message.encode("utf-8"), response.type)


def run_batch(api: ModelAPI, requests: Sequence[tuple[str, bytes]]) -> list[Outcome]:
    """Run ``requests`` (content type, body) through ``api`` and return one outcome per request."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    payloads: list[Any] = []
    positions: list[int] = []
    for position, (content_type, body) in enumerate(requests):
        try:
            payloads.append(decode_payload(content_type, body))
            positions.append(position)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            outcomes[position] = error_outcome(exc)
    for position, outcome in zip(positions, _predict(api, payloads), strict=True):
        outcomes[position] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


def _predict(api: ModelAPI, payloads: list[Any]) -> list[Outcome]:
    if not payloads:
        return []
    try:
        results = api.predict(payloads)
    except Exception as exc:
        if len(payloads) > 1:
            # Isolate the culprit: a retry one by one costs time only when a batch has already failed.
            return [outcome for payload in payloads for outcome in _predict(api, [payload])]
        _log_failure(api, exc)
        return [error_outcome(exc)]
    if len(results) != len(payloads):
        error = HandlerError(
            f"{type(api).__name__} returned {len(results)} result(s) for a batch of {len(payloads)} "
            "request(s); return a list with exactly one result per request, in order"
        )
        return [error_outcome(error)] * len(payloads)
    return [encode_result(result) for result in results]


def _log_failure(api: ModelAPI, exc: Exception) -> None:
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
