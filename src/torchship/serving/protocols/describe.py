"""TorchServe's describe-model body and list pagination, as pure functions of the registry's state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from torchship.serving.runtime.versions import ServedVersion
from torchship.serving.workers.process import WorkerState

__all__ = ["describe", "paginate"]

T = TypeVar("T")


def paginate(items: Sequence[T], limit: int, token: int) -> tuple[list[T], int | None]:
    """TorchServe's paging: ``limit`` outside 1..100 means 100, a negative token means 0; returns the page
    and the next token (None on the last page). Every page but the last holds at least one item, so
    following ``nextPageToken`` always ends.

    >>> paginate(["a", "b", "c"], limit=2, token=0)
    (['a', 'b'], 2)
    """
    if limit > 100 or limit < 1:
        limit = 100
    token = max(0, token)
    last = token + limit
    if last >= len(items):
        return list(items[token:]), None
    return list(items[token:last]), last


def describe(served: ServedVersion, is_default: bool) -> dict[str, Any]:
    """One version as TorchServe's ``GET /models/{model}`` describes it (plus ``isDefault``)."""
    settings = served.settings
    body: dict[str, Any] = {
        "modelName": served.name,
        "modelVersion": served.version,
        "modelUrl": served.spec.url,
        "engine": "Torch",
        "runtime": "python",
        "minWorkers": served.target_workers,
        "maxWorkers": max(served.target_workers, served.max_workers),
        "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay,
        "responseTimeout": settings.response_timeout,
        "startupTimeout": settings.startup_timeout,
        "loadedAtStartup": served.spec.loaded_at_startup,
        "isDefault": is_default,
        "handler": served.spec.shown_handler or served.spec.handler,
        "workers": [
            {
                "id": str(worker.id),
                "startTime": _iso(worker.start_time),
                "status": "UNLOADING" if worker.state is WorkerState.STOPPING else worker.state.value,
                "memoryUsage": worker.memory_usage(),
                "pid": worker.pid,
                **_device_fields(worker.device),
            }
            for worker in served.workers()
        ],
        "jobQueueStatus": {
            "remainingCapacity": settings.job_queue_size - served.pending,
            "pendingRequests": served.pending,
        },
    }
    if served.load_error:
        body["loadError"] = served.load_error
    return body


def _device_fields(device: str | None) -> dict[str, Any]:
    """TorchServe's ``gpu`` and ``gpuUsage`` (``gpuId::N``), plus the device itself (None while loading)."""
    if device is None or not device.startswith("cuda"):
        return {"gpu": False, "gpuUsage": "N/A", "device": device}
    return {"gpu": True, "gpuUsage": f"gpuId::{device.partition(':')[2] or 0}", "device": device}


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
