"""A cheap module-level ``handle(data, context)`` handler for the KServe layout test: each request's body
is a list of numbers (or ``{"x": [numbers]}``), answered with their sum and count.

Takes every body shape the three APIs deliver: a JSON list (a KServe v1 instance, a v2 row, a
``/predictions`` JSON body), a JSON object with ``x``, or the same JSON as text or bytes.
"""

import json
from typing import Any


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    if data is None:  # TorchServe's load-time call
        return None
    return [_answer(row) for row in data]


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    values = body["x"] if isinstance(body, dict) else body
    return {"sum": round(float(sum(values)), 5), "count": len(values)}
