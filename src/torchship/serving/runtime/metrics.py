"""Prometheus metrics for the server, all counted in the server process.

Workers only report how long a batch ran; the server process observes everything else (requests by
status, queue wait, end-to-end latency, batch sizes, queue depth, workers). With one writer process the
numbers are correct with any number of worker processes, without prometheus-client's multiprocess mode.
Each server owns its own ``CollectorRegistry`` so that several servers in one process (tests) do not mix.

Beside the ``torchship_*`` families, TorchServe's own names are served so that its Grafana dashboards work
unchanged (``ts_*`` and ``Requests2XX``/``4XX``/``5XX``; see :class:`TorchServeCounter` for why they are
written here rather than by prometheus-client).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics", "TorchServeCounter", "VersionMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 0.5 ms (the server's own overhead) to 30 s (a slow batch near its timeout).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LABELS = ("model", "version")
_TS_LABELS = ("model_name", "model_version", "hostname")  # TorchServe's, in its order
_NO_ROUTE = "none"  # the route label of a response no route produced: a 404 path, an Edge refusal
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")  # sample names of a family, for ?name[]=

# Told of every response a listener sends: its route's path template (None: none) and its status.
ResponseObserver = Callable[[str | None, int], None]


class TorchServeCounter:
    """A counter family written exactly as TorchServe writes it: ``name{labels} value`` under
    ``# TYPE name counter``, for names that do not end in ``_total`` as well.

    prometheus-client appends ``_total`` to every counter's samples (and adds ``_created``), so a
    ``Counter("ts_inference_latency_microseconds")`` would be scraped under another name than TorchServe's,
    and a dashboard's queries would find nothing. Values are bumped on the event loop and read by the
    render thread: a lock guards the series dictionary, and a float is read whole.
    """

    def __init__(self, name: str, unit: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self._help = f"# HELP {name} Torchserve prometheus counter metric with unit: {unit}\n"
        self._labels = labels
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> list[float]:
        """The one-cell value of a series (created at 0): bump it with ``cell[0] += amount``."""
        with self._lock:
            return self._series.setdefault(values, [0.0])

    def remove(self, *values: str) -> None:
        with self._lock:
            self._series.pop(values, None)

    def render(self) -> str:
        with self._lock:
            series = [(values, cell[0]) for values, cell in self._series.items()]
        lines = [self._help, f"# TYPE {self.name} counter\n"]
        for values, count in series:
            labels = ",".join(f'{key}="{_escape(v)}"' for key, v in zip(self._labels, values, strict=True))
            lines.append(f"{self.name}{{{labels}}} {count!r}\n")
        return "".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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
        self.responses = Counter(
            "torchship_http_responses",
            "HTTP responses of every listener by route (path template; none: no route) and status.",
            ("listener", "route", "status"),
            registry=self.registry,
        )
        self.hostname = socket.gethostname()
        self.ts_requests = TorchServeCounter("ts_inference_requests_total", "Count", _TS_LABELS)
        self.ts_latency = TorchServeCounter("ts_inference_latency_microseconds", "Microseconds", _TS_LABELS)
        self.ts_queue = TorchServeCounter("ts_queue_latency_microseconds", "Microseconds", _TS_LABELS)
        host = ("Level", "Hostname")
        self.ts_statuses = {kind: TorchServeCounter(f"Requests{kind}XX", "Count", host) for kind in (2, 4, 5)}
        self._torchserve = [self.ts_requests, self.ts_latency, self.ts_queue, *self.ts_statuses.values()]

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """The metric children of one model version, bound once so the request path skips label lookups."""
        return VersionMetrics(self, model, version)

    def observer(self, listener: str) -> ResponseObserver:
        """What a listener's App reports each response to: counted in ``torchship_http_responses`` and
        TorchServe's ``Requests2XX``/``4XX``/``5XX`` (1xx and 3xx only in the former, as in TorchServe).
        Route templates and statuses are few, so the series stay few whatever the paths requested."""
        children: dict[tuple[str | None, int], Counter] = {}
        by_kind = {kind: counter.labels("Host", self.hostname) for kind, counter in self.ts_statuses.items()}

        def observe(route: str | None, status: int) -> None:
            child = children.get((route, status))
            if child is None:
                label = route if route is not None else _NO_ROUTE
                child = children[route, status] = self.responses.labels(listener, label, str(status))
            child.inc()
            cell = by_kind.get(status // 100)
            if cell is not None:
                cell[0] += 1

        return observe

    def render(self, names: Collection[str] = ()) -> bytes:
        """The Prometheus text exposition of everything, or of the families ``names`` names (TorchServe's
        ``?name[]=``): a family by its name as exposed (``torchship_requests_total``) or its base name."""
        if not names:
            ours = generate_latest(self.registry)
            return ours + "".join(family.render() for family in self._torchserve).encode("utf-8")
        wanted = {
            base + suffix
            for name in names
            for base in (name, name.removesuffix("_total"))
            for suffix in _SUFFIXES
        }
        ours = generate_latest(self.registry.restricted_registry(wanted))
        theirs = "".join(family.render() for family in self._torchserve if family.name in names)
        return ours + theirs.encode("utf-8")


class VersionMetrics:
    """Bound metric children for one model version."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._ts_labels = (model, version, metrics.hostname)
        self._ts_requests = metrics.ts_requests.labels(*self._ts_labels)
        self._ts_latency = metrics.ts_latency.labels(*self._ts_labels)
        self._ts_queue = metrics.ts_queue.labels(*self._ts_labels)
        self.queue_wait = metrics.queue_wait.labels(model, version)
        self.inference = metrics.inference.labels(model, version)
        self.latency = metrics.latency.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.workers = metrics.workers.labels(model, version)
        self._requests: dict[int, Counter] = {}

    def request_done(self, status: int, seconds: float) -> None:
        """Count one answered request and its end-to-end latency (in TorchServe's latency counter only when
        it succeeded: TorchServe adds an error's time to none)."""
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = self._metrics.requests.labels(*self._labels, str(status))
        counter.inc()
        self.latency.observe(seconds)
        self._ts_requests[0] += 1
        if status < 400:
            self._ts_latency[0] += seconds * 1e6

    def waited(self, seconds: float) -> None:
        """A request waited ``seconds`` in the queue before a worker took it."""
        self.queue_wait.observe(seconds)
        self._ts_queue[0] += seconds * 1e6

    def succeeded_seconds(self) -> float:
        """Cumulative end-to-end seconds of the requests answered below 400 (v2's statistics read it)."""
        return self._ts_latency[0] / 1e6

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
        for torchserve in (metrics.ts_requests, metrics.ts_latency, metrics.ts_queue):
            torchserve.remove(*self._ts_labels)
