"""Prometheus metrics for the server, all counted in the server process.

Workers only report how long a batch ran; the server process observes everything else (requests by
status, queue wait, end-to-end latency, batch sizes, queue depth, workers). With one writer process the
numbers are correct with any number of worker processes, without prometheus-client's multiprocess mode.
Each server owns its own ``CollectorRegistry`` so that several servers in one process (tests) do not mix.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics", "VersionMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 0.5 ms (the server's own overhead) to 30 s (a slow batch near its timeout).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LABELS = ("model", "version")


class Metrics:
    """The server's metric families; :meth:`for_version` binds their label values once per version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "torchship_requests",
            "Inference requests by model, version and HTTP status.",
            (*_LABELS, "status"),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "torchship_queue_wait_seconds",
            "Time a request waited for a worker.",
            _LABELS,
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.inference = Histogram(
            "torchship_inference_seconds",
            "Time a worker spent on one batch (handler pre/inference/post).",
            _LABELS,
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.latency = Histogram(
            "torchship_request_duration_seconds",
            "End-to-end time from request received to response ready.",
            _LABELS,
            buckets=_LATENCY,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "torchship_batch_size",
            "Requests per batch sent to a worker.",
            _LABELS,
            buckets=_BATCH,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "torchship_queue_depth", "Requests waiting for a worker.", _LABELS, registry=self.registry
        )
        self.workers = Gauge(
            "torchship_workers",
            "Worker processes that are loaded and serving.",
            _LABELS,
            registry=self.registry,
        )

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """The metric children of one model version, bound once so the request path skips label lookups."""
        return VersionMetrics(self, model, version)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)


class VersionMetrics:
    """Bound metric children for one model version."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self.queue_wait = metrics.queue_wait.labels(model, version)
        self.inference = metrics.inference.labels(model, version)
        self.latency = metrics.latency.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.workers = metrics.workers.labels(model, version)
        self._requests: dict[int, Counter] = {}

    def request_done(self, status: int, seconds: float) -> None:
        """Count one answered request and its end-to-end latency."""
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = self._metrics.requests.labels(*self._labels, str(status))
        counter.inc()
        self.latency.observe(seconds)

    def remove(self) -> None:
        """Drop every series of an unregistered version: names come from clients with the management key,
        so keeping them would let registrations grow the server's memory without bound (Prometheus reads a
        version registered again as a counter reset)."""
        metrics = self._metrics
        for family in (
            metrics.queue_wait,
            metrics.inference,
            metrics.latency,
            metrics.batch_size,
            metrics.queue_depth,
            metrics.workers,
        ):
            with contextlib.suppress(KeyError):
                family.remove(*self._labels)
        for status in self._requests:
            with contextlib.suppress(KeyError):
                metrics.requests.remove(*self._labels, str(status))
        self._requests.clear()
