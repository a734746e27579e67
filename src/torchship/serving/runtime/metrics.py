"""Prometheus metrics for the server, all counted in the server process.

Workers only report how long a batch ran; the server process observes everything else (requests by
status, queue wait, end-to-end latency, batch sizes, queue depth, workers). With one writer process the
numbers are correct with any number of worker processes, without prometheus-client's multiprocess mode.
Each server owns its own ``CollectorRegistry`` so that several servers in one process (tests) do not mix.

Beside the ``torchship_*`` families, TorchServe's own names are served so that its Grafana dashboards work
unchanged (``ts_*`` and ``Requests2XX``/``4XX``/``5XX``; see :class:`TorchServeCounter` for why they are
written here rather than by prometheus-client). The metrics a TorchServe handler updates through
``context.metrics`` arrive with its batch's answer and are served as TorchServe's Prometheus mode serves
them (:class:`HandlerMetrics`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE",
    "MAX_HANDLER_LABELS",
    "MAX_HANDLER_METRICS",
    "MAX_HANDLER_SERIES",
    "HandlerMetrics",
    "Metrics",
    "TorchServeCounter",
    "VersionMetrics",
]

logger = logging.getLogger("torchship.serving")

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


MAX_HANDLER_METRICS = 32
"""Most metric names one model version's handler may create through ``context.metrics``; updates of
further names are dropped, with one warning. Names come from handler code, and each name is a family
that every scrape carries."""
MAX_HANDLER_SERIES = 256
"""Most label sets (series) one model version's handler may create over all its metrics; updates that
would create more are dropped, with one warning (a label holding a request id would grow without bound)."""

# simpleclient's default buckets: TorchServe's Prometheus histograms use them.
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_HANDLER_LABELS = 16
"""Most dimensions (labels) one handler metric may have; an update with more is dropped."""
_MAX_NAME = 200  # characters of a handler metric's name or dimension name: every scrape carries them
_KINDS = ("counter", "gauge", "histogram")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MAX_LABEL_VALUE = 1024  # characters of one label value a handler sets; every scrape carries it


class _Owner:
    """What one model version's handler has created: its names and series, and the limits it was told of."""

    def __init__(self, model: str, version: str) -> None:
        self.label = f"model {model} version {version}"
        self.names: set[str] = set()
        self.series: set[tuple[str, tuple[str, ...]]] = set()
        self.warned: set[str] = set()


class _HandlerFamily:
    """One metric a handler made: counter (added to), gauge (set) or histogram (observed), by label set."""

    def __init__(self, name: str, kind: str, unit: str, labels: tuple[str, ...]) -> None:
        self.name, self.kind, self.unit, self.labels = name, kind, unit, labels
        self.series: dict[tuple[str, ...], list[float]] = {}
        self.owners: dict[tuple[str, ...], set[_Owner]] = {}

    def update(self, values: tuple[str, ...], value: float, owner: _Owner) -> None:
        cells = self.series.get(values)
        if cells is None:
            size = len(_HANDLER_BUCKETS) + 2 if self.kind == "histogram" else 1  # buckets, sum, count
            cells = self.series[values] = [0.0] * size
        self.owners.setdefault(values, set()).add(owner)
        if self.kind == "counter":
            cells[0] += value
        elif self.kind == "gauge":
            cells[0] = value
        else:
            for index, bound in enumerate(_HANDLER_BUCKETS):
                if value <= bound:
                    cells[index] += 1
            cells[-2] += value
            cells[-1] += 1

    def forget(self, owner: _Owner, values: tuple[str, ...]) -> None:
        owners = self.owners.get(values)
        if owners is None:
            return
        owners.discard(owner)
        if not owners:
            del self.owners[values]
            self.series.pop(values, None)

    def render(self) -> str:
        lines = [
            f"# HELP {self.name} Torchserve prometheus {self.kind} metric with unit: {self.unit}\n",
            f"# TYPE {self.name} {self.kind}\n",
        ]
        for values, cells in self.series.items():
            labels = ",".join(f'{key}="{_escape(v)}"' for key, v in zip(self.labels, values, strict=True))
            if self.kind != "histogram":
                lines.append(f"{self.name}{{{labels}}} {cells[0]!r}\n")
                continue
            for bound, count in zip((*_HANDLER_BUCKETS, math.inf), (*cells[:-2], cells[-1]), strict=True):
                le = "+Inf" if bound == math.inf else repr(bound)
                lines.append(f'{self.name}_bucket{{{labels},le="{le}"}} {count!r}\n')
            lines.append(f"{self.name}_count{{{labels}}} {cells[-1]!r}\n")
            lines.append(f"{self.name}_sum{{{labels}}} {cells[-2]!r}\n")
        return "".join(lines)


class HandlerMetrics:
    """The metrics TorchServe handlers update through ``context.metrics``, named as TorchServe's Prometheus
    mode names them: the handler's metric name, its dimensions as labels plus ``Hostname``
    (``HandlerTime{ModelName="m",Level="Model",Hostname="h"}``); a counter adds, a gauge holds the last
    value, a histogram observes (simpleclient's default buckets). A name keeps the type and labels it was
    first seen with (TorchServe's first registration wins); an update that does not fit is dropped.
    Bounded per model version (:data:`MAX_HANDLER_METRICS`, :data:`MAX_HANDLER_SERIES`)."""

    def __init__(self, hostname: str, reserved: Callable[[str], bool]) -> None:
        self._hostname = hostname
        self._reserved = reserved
        self._families: dict[str, _HandlerFamily] = {}
        self._lock = threading.Lock()

    def owner(self, model: str, version: str) -> _Owner:
        return _Owner(model, version)

    def apply(self, owner: _Owner, updates: Sequence[Any]) -> None:
        """Apply a batch's updates (``(name, type, unit, dimension names, dimension values, value)``)."""
        with self._lock:
            for update in updates:
                problem = self._apply(owner, update)
                if problem is not None and problem[0] not in owner.warned:
                    owner.warned.add(problem[0])
                    logger.warning("%s: a handler metric update is dropped: %s", owner.label, problem[1])

    def forget(self, owner: _Owner) -> None:
        """Drop the series only ``owner`` (an unregistered version) kept alive."""
        with self._lock:
            for name, values in owner.series:
                family = self._families.get(name)
                if family is not None:
                    family.forget(owner, values)
                    if not family.series:
                        del self._families[name]
            owner.series.clear()
            owner.names.clear()

    def render(self, names: Collection[str] = ()) -> str:
        with self._lock:
            return "".join(
                family.render() for family in self._families.values() if not names or family.name in names
            )

    def _apply(self, owner: _Owner, update: Any) -> tuple[str, str] | None:
        """None, or (a key for warning once, why) when the update is dropped."""
        try:
            name, kind, unit, dimension_names, dimension_values, raw = update
            labels = (*(str(label) for label in dimension_names), "Hostname")
            values = (*(str(value) for value in dimension_values), self._hostname)
            value = float(raw)
        except (TypeError, ValueError):
            return "malformed", "it is not (name, type, unit, dimension names, dimension values, value)"
        name, unit = str(name), str(unit)
        if (
            kind not in _KINDS
            or len(name) > _MAX_NAME
            or not _METRIC_NAME.fullmatch(name)
            or self._reserved(name)
            or len(labels) > MAX_HANDLER_LABELS + 1  # and Hostname
            or any(len(label) > _MAX_NAME for label in labels)
            or len(labels) != len(values)
            or len(set(labels)) != len(labels)
            or not all(_LABEL_NAME.fullmatch(label) for label in labels)
            or any(len(label_value) > _MAX_LABEL_VALUE for label_value in values)
            or not math.isfinite(value)
        ):
            return f"invalid {name[:64]}", (
                f"metric {name[:64]!r} is not a valid Prometheus metric here (its name, a server metric's "
                f"name, its dimension names, more than {MAX_HANDLER_LABELS} dimensions, a name over "
                f"{_MAX_NAME} or a dimension value over {_MAX_LABEL_VALUE} characters, or a non-finite value)"
            )
        family = self._families.get(name)
        if family is not None and (family.kind != kind or family.labels != labels):
            return f"conflict {name[:64]}", (
                f"metric {name[:64]!r} exists as a {family.kind} with dimensions {list(family.labels)}; "
                f"this update is a {kind} with {list(labels)}"
            )
        if name not in owner.names and len(owner.names) >= MAX_HANDLER_METRICS:
            return "names", f"the handler made more than MAX_HANDLER_METRICS={MAX_HANDLER_METRICS} metrics"
        key = (name, values)
        if key not in owner.series and len(owner.series) >= MAX_HANDLER_SERIES:
            return "series", f"the handler made more than MAX_HANDLER_SERIES={MAX_HANDLER_SERIES} label sets"
        if family is None:
            family = self._families[name] = _HandlerFamily(name, kind, unit, labels)
        owner.names.add(name)
        owner.series.add(key)
        family.update(values, value, owner)
        return None


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
        self.store_passes = Counter(
            "torchship_store_watch_passes",
            "Passes of the store watcher (--watch_store) by outcome: ok, or failed (the store could not be "
            "read; nothing was changed).",
            ("outcome",),
            registry=self.registry,
        )
        self.store_failures = Counter(
            "torchship_store_failures",
            "Store versions the watcher could not download, check or load, by model and version (each is "
            "tried again on a later pass; the series goes when the version leaves the store).",
            _LABELS,
            registry=self.registry,
        )
        self.hostname = socket.gethostname()
        self.ts_requests = TorchServeCounter("ts_inference_requests_total", "Count", _TS_LABELS)
        self.ts_latency = TorchServeCounter("ts_inference_latency_microseconds", "Microseconds", _TS_LABELS)
        self.ts_queue = TorchServeCounter("ts_queue_latency_microseconds", "Microseconds", _TS_LABELS)
        host = ("Level", "Hostname")
        self.ts_statuses = {kind: TorchServeCounter(f"Requests{kind}XX", "Count", host) for kind in (2, 4, 5)}
        self._torchserve = [self.ts_requests, self.ts_latency, self.ts_queue, *self.ts_statuses.values()]
        served = {family.name for family in self._torchserve}
        self.handler_metrics = HandlerMetrics(
            self.hostname, lambda name: name.startswith("torchship_") or name in served
        )

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
            theirs = "".join(family.render() for family in self._torchserve) + self.handler_metrics.render()
            return ours + theirs.encode("utf-8")
        wanted = {
            base + suffix
            for name in names
            for base in (name, name.removesuffix("_total"))
            for suffix in _SUFFIXES
        }
        ours = generate_latest(self.registry.restricted_registry(wanted))
        theirs = "".join(family.render() for family in self._torchserve if family.name in names)
        theirs += self.handler_metrics.render(names)
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
        self._handler = metrics.handler_metrics.owner(model, version)

    def handler_updates(self, updates: Sequence[Any]) -> None:
        """A batch's ``context.metrics`` updates from a TorchServe handler (see :class:`HandlerMetrics`)."""
        self._metrics.handler_metrics.apply(self._handler, updates)

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
        metrics.handler_metrics.forget(self._handler)
