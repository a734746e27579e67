"""A module-level ``handle(data, context)`` handler that answers what it was given.

TorchServe calls ``handle(None, context)`` once at load, then with each batch. Each answer describes the
request as the handler saw it (every parameter's name, Python type and value; the ``x-echo`` request
header), so a test can compare the request shape two servers deliver. Bodies and the context drive the
other answers: ``{"fail": ...}`` raises (an unexpected handler error), ``{"code": N}`` raises
TorchServe's ``PredictionException`` with that status, ``{"headers": [names]}`` answers those request
headers as the handler sees them (``None`` for one it does not have), a text body is answered upper-cased as
``text/plain``, an ``application/octet-stream`` body reversed, as bytes.
"""

from typing import Any

from ts.utils.util import PredictionException


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if data is None:
        return None
    answers: list[Any] = []
    for index, row in enumerate(data):
        body = row.get("body")
        if isinstance(body, dict) and "fail" in body:
            raise ValueError("the request asked the handler to fail")
        if isinstance(body, dict) and "code" in body:
            raise PredictionException("rejected by the handler", int(body["code"]))
        echo = context.get_request_header(index, "x-echo")
        if echo is not None:
            context.set_response_header(index, "x-echo", echo)
        answers.append(_answer(index, row, context))
    return answers


def _answer(index: int, row: dict[str, Any], context: Any) -> Any:
    body = row.get("body")
    if isinstance(body, dict) and "headers" in body:
        return {"headers": {name: context.get_request_header(index, name) for name in body["headers"]}}
    if isinstance(body, str) and set(row) == {"body"}:
        context.set_response_content_type(index, "text/plain")
        return body.upper()
    if isinstance(body, (bytes, bytearray)) and set(row) == {"body"}:
        return bytes(reversed(body))
    return {
        "parameters": {name: _describe(value) for name, value in sorted(row.items())},
        "x-echo": context.get_request_header(index, "x-echo"),
    }


def _describe(value: Any) -> dict[str, Any]:
    if isinstance(value, (bytes, bytearray)):
        return {"type": type(value).__name__, "latin-1": bytes(value).decode("latin-1")}
    return {"type": type(value).__name__, "value": value}
