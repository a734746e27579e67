"""ModelAPI classes for the hostile-payload tests. A module of their own, not a test file, because spawned
worker processes import them by name (the tests directory is on their sys.path)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from torchship.serving import ModelAPI


class Rude(BaseException):
    """Not an Exception: what a handler may raise by mistake (as asyncio.CancelledError is)."""


class MeasureAPI(ModelAPI):
    """Answers each payload with its size, a digest and the batch's size and the worker's pid.

    Bytes payloads that start with ``echo`` come back whole. JSON payloads may ask for trouble:
    ``{"raise": "base"}`` raises a BaseException subclass, ``{"deep": n}`` returns a result nested ``n``
    levels deep, ``{"wait_for": path}`` waits until the test opens the FIFO ``path`` for writing,
    ``{"sleep": s}`` takes ``s`` seconds.
    """

    inference_calls_steps = True

    def load(self, model_path: Path | None) -> Any:
        return None

    def inference(self, data: list[Any]) -> list[Any]:
        for item in data:
            if isinstance(item, dict):
                _misbehave(item)
        return [_answer(item, len(data)) for item in data]


def _misbehave(item: dict[str, Any]) -> None:
    if item.get("raise") == "base":
        raise Rude("a BaseException from the handler")
    if "wait_for" in item:
        # A FIFO: opening it for reading blocks until the test opens it for writing (the release), no
        # polling. Should the test never release it, the server's response_timeout replaces this worker.
        os.close(os.open(item["wait_for"], os.O_RDONLY))
    # A slow model, not synchronisation: the time spent is the behaviour under test (timeouts, queues).
    time.sleep(float(item.get("sleep", 0)))


def _answer(item: Any, batch: int) -> Any:
    if isinstance(item, bytes) and item.startswith(b"echo"):
        return item
    if isinstance(item, dict) and "deep" in item:
        nested: list[Any] = []
        for _ in range(int(item["deep"])):
            nested = [nested]
        return nested
    raw = item if isinstance(item, bytes) else repr(item).encode("utf-8", "backslashreplace")
    size = len(item["text"]) if isinstance(item, dict) and "text" in item else len(raw)
    return {"size": size, "sha256": hashlib.sha256(raw).hexdigest(), "batch": batch, "pid": os.getpid()}
