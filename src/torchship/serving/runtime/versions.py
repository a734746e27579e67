"""One served model version: its queue, its batching, its timeouts, over a pool of worker processes.

Everything here runs on the event loop and never blocks: :meth:`ServedVersion.submit` queues a request,
a dispatch runs on the next loop turn (so requests parsed in the same turn share a batch), batches go to
idle workers by the :class:`~torchship.serving.runtime.batcher.Batcher` rule, and results come back through
the pool's callbacks. Failure handling:

* a request that waits longer than ``response_timeout`` is answered 504 and leaves the queue;
* a batch that runs longer than ``response_timeout`` gets 504 and its worker is killed and replaced;
* a worker that dies fails only its own batch (500) and is replaced at once; a model that cannot load
  fails the waiting requests with 503 and the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchship.errors import UserInputError, VersionNotFoundError
from torchship.serving.errors import (
    HandlerError,
    NoWorkersError,
    QueueFullError,
    RequestTimeoutError,
    ServiceUnavailableError,
    WorkerDiedError,
)
from torchship.serving.handler import ModelAPI
from torchship.serving.runtime.batcher import Batch, Batcher
from torchship.serving.runtime.metrics import VersionMetrics
from torchship.serving.workers.batch import Outcome, error_outcome
from torchship.serving.workers.pool import WorkerPool
from torchship.serving.workers.process import WorkerProcess

__all__ = ["Job", "ServedVersion", "VersionSpec"]

logger = logging.getLogger("torchship.serving")


@dataclass(frozen=True)
class VersionSpec:
    """What to serve: the (unloaded) handler, which carries the name and settings, and where it came from."""

    api: ModelAPI
    version: str
    url: str
    handler: str
    loaded_at_startup: bool = False
    shown_handler: str | None = None
    """The handler ``GET /models/{m}`` shows (a TorchServe archive's, from its manifest); None:
    ``handler``."""


@dataclass(eq=False, slots=True)
class Job:
    """One request waiting for, or running in, a worker."""

    content_type: str
    body: bytes
    future: asyncio.Future[Outcome]
    arrival: float
    meta: Any = None  # headers, query and form parts, for a version whose api wants them


@dataclass(eq=False)
class _Running:
    worker: WorkerProcess
    jobs: list[Job]
    timer: asyncio.TimerHandle


class ServedVersion:
    """The runtime of one model version; see the module docstring."""

    def __init__(self, spec: VersionSpec, metrics: VersionMetrics) -> None:
        self.spec = spec
        self.name = spec.api.name
        self.version = spec.version
        self.settings = spec.api.settings
        self.metrics = metrics
        self.max_workers = self.settings.max_workers or 0  # reported only: there is no autoscaling
        self._loop = asyncio.get_running_loop()
        self._batcher = Batcher[Job](
            self.settings.batch_size, self.settings.max_batch_delay_s, self.settings.job_queue_size
        )
        self._pool = WorkerPool(
            spec.api,
            spec.version,
            on_ready=self._on_ready,
            on_done=self._on_done,
            on_lost=self._on_lost,
            on_load_failure=self._on_load_failure,
        )
        self._running: dict[int, _Running] = {}
        self.wants_request_meta = type(spec.api).wants_request_meta
        """Whether :meth:`submit` should get the request's headers, query and form parts (``meta``)."""
        self._batch_ids = itertools.count()
        self._dispatch_pending = False
        # One timer at a time for each purpose, with its due time kept here: uvloop returns a plain Handle
        # without when() for a time already past.
        self._wake: tuple[float, asyncio.Handle] | None = None
        self._expiry: tuple[float, asyncio.Handle] | None = None
        self._seconds_per_request = 0.0  # moving average, for Retry-After
        self._drained: list[asyncio.Future[None]] = []
        self.retired = False
        """Set by ``Registry.unregister``: no new request may be queued here (see :meth:`submit`)."""
        self.on_serving_change: Callable[[], None] | None = None
        """Called when a worker becomes ready, is lost or fails to load (the registry picks the default)."""

    # ----------------------------------------------------------------------------------- requests
    def submit(self, content_type: str, body: bytes, meta: Any = None) -> asyncio.Future[Outcome]:
        """Queue one request; the future resolves to its :class:`Outcome`. Raises 503 errors at once, and a
        404 once the version is unregistered (callers route again first: ``Registry.reroute``). ``meta``
        (see :mod:`~torchship.serving.workers.child`) reaches the worker only when
        :attr:`wants_request_meta`."""
        if self.retired:
            raise VersionNotFoundError(f"Model version: {self.version} does not exist for model: {self.name}")
        if self._pool.target == 0:
            raise self._no_workers()
        if self._pool.serving == 0 and self._pool.load_error is not None:  # fail fast while it cannot load
            raise self._cannot_load(self._pool.load_error)
        if self._batcher.full:
            raise QueueFullError(
                f'Model "{self.name}" Version {self.version} has {len(self._batcher)} requests waiting, its '
                "job_queue_size; retry later, or add workers or raise job_queue_size",
                retry_after=self._retry_after(),
            )
        job = Job(content_type, body, self._loop.create_future(), self._loop.time(), meta)
        self._batcher.add(job, len(body), job.arrival)
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self._loop.call_soon(self._dispatch)
        return job.future

    def check_room(self, count: int, what: str) -> None:
        """Before a protocol builds ``count`` requests for one call (v2 rows, KServe v1 instances): a 400 when
        they could never fit this version's queue, a 503 when they do not fit now. ``what`` names them
        (``"elements in its first dimension"``, ``"instances"``)."""
        size = self.settings.job_queue_size
        if count > size:
            raise UserInputError(
                f'The request has {count} {what}; model "{self.name}" takes at most {size} at once (its '
                "job_queue_size): split the request"
            )
        free = size - self.pending
        if count > free:
            raise QueueFullError(
                f'The request has {count} {what} but only {free} fit in the queue of model "{self.name}" '
                "now; send fewer at once or retry later",
                retry_after=1,
            )

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        now = self._loop.time()
        self._expire_waiting(now)
        idle = self._pool.idle
        while idle:
            batch = self._batcher.next_batch(now, len(idle), len(self._running))
            if not batch.items:
                if batch.wake_at is not None:
                    self._wake_at(batch.wake_at)
                break
            self._send(idle.pop(), batch, now)
        self.metrics.queue_depth.set(len(self._batcher))
        oldest = self._batcher.oldest_arrival()
        if oldest is not None and self._expiry is None:
            due = oldest + self.settings.response_timeout
            self._expiry = (due, self._loop.call_at(due, self._on_timer))
        self._notify_drained()

    def _send(self, worker: WorkerProcess, batch: Batch[Job], now: float) -> None:
        batch_id = next(self._batch_ids)
        for arrival in batch.arrivals:
            self.metrics.waited(now - arrival)
        self.metrics.batch_size.observe(len(batch.items))
        timer = self._loop.call_later(self.settings.response_timeout, self._on_batch_timeout, batch_id)
        self._running[batch_id] = _Running(worker, batch.items, timer)
        # Never blocks: what the pipe does not take at once is written as the worker reads it. A worker
        # that is gone fails the batch through its exit.
        if self.wants_request_meta:
            worker.run(batch_id, [(job.content_type, job.body, job.meta) for job in batch.items])
        else:
            worker.run(batch_id, [(job.content_type, job.body) for job in batch.items])

    def _wake_at(self, when: float) -> None:
        if self._wake is not None and self._wake[0] <= when:
            return
        if self._wake is not None:
            self._wake[1].cancel()
        self._wake = (when, self._loop.call_at(when, self._on_timer))

    def _on_timer(self) -> None:
        now = self._loop.time()
        if self._wake is not None and self._wake[0] <= now:
            self._wake = None
        if self._expiry is not None and self._expiry[0] <= now:
            self._expiry = None
        self._dispatch()

    def _expire_waiting(self, now: float) -> None:
        timeout = self.settings.response_timeout
        expired = self._batcher.expire(now - timeout)
        if not expired:
            return
        if self._pool.serving == 0:
            why = (
                "no worker has loaded the model yet (the version's describe shows its workers STARTING, or "
                "a loadError): retry once a worker is READY"
            )
        else:
            why = "the server is overloaded: retry later, add workers, or raise response_timeout"
        error = RequestTimeoutError(
            f'Model "{self.name}" Version {self.version} did not start this request within '
            f"response_timeout={timeout:g}s; {why}"
        )
        for job in expired:
            _fail(job, error)

    def _retry_after(self) -> int:
        workers = max(1, self._pool.serving)
        return max(1, math.ceil(len(self._batcher) * self._seconds_per_request / workers))

    # --------------------------------------------------------------------------- pool callbacks
    def _on_ready(self) -> None:
        self._update_workers_gauge()
        self._dispatch()
        self._serving_changed()

    def _on_done(
        self,
        worker: WorkerProcess,
        batch_id: int,
        seconds: float,
        outcomes: list[Any],
        metric_updates: list[Any] | None = None,
    ) -> None:
        if metric_updates:
            self.metrics.handler_updates(metric_updates)
        running = self._running.pop(batch_id, None)
        if running is None:
            return  # answered already (timed out); the worker is being killed
        running.timer.cancel()
        self._pool.release(worker)
        self.metrics.inference.observe(seconds)
        self._seconds_per_request += 0.2 * (seconds / len(running.jobs) - self._seconds_per_request)
        self._dispatch()  # refill the worker before answering, so it does not wait for our sends
        if len(outcomes) != len(running.jobs):  # cannot happen with our worker; never hang a client
            error = HandlerError(f"worker answered {len(outcomes)} results for {len(running.jobs)} requests")
            outcomes = [error_outcome(error)] * len(running.jobs)
        for job, outcome in zip(running.jobs, outcomes, strict=True):
            if not job.future.done():
                job.future.set_result(Outcome(*outcome))

    def _on_batch_timeout(self, batch_id: int) -> None:
        running = self._running.pop(batch_id, None)
        if running is None:
            return
        timeout = self.settings.response_timeout
        logger.warning("worker %s ran past response_timeout=%gs; killing it", running.worker.id, timeout)
        running.worker.kill()
        for job in running.jobs:
            _fail(
                job,
                RequestTimeoutError(
                    f'Model "{self.name}" Version {self.version} did not answer within response_timeout='
                    f"{timeout:g}s; its worker was restarted. Retry, or raise response_timeout if the model "
                    "needs longer"
                ),
            )
        self._notify_drained()

    def _on_lost(self, worker: WorkerProcess) -> None:
        running = self._running.pop(worker.batch_id, None) if worker.batch_id is not None else None
        if running is not None:
            running.timer.cancel()
            for job in running.jobs:
                _fail(
                    job,
                    WorkerDiedError(
                        f'The worker of model "{self.name}" version {self.version} died while running '
                        f"this request (exit code {worker.exitcode}); it is being replaced. Retry the "
                        "request; if it keeps failing, the input may crash the model"
                    ),
                )
        self._update_workers_gauge()
        self._notify_drained()
        self._serving_changed()

    def _on_load_failure(self, reason: str) -> None:
        if self._pool.serving > 0:
            return
        for job in self._batcher.clear():
            _fail(job, self._cannot_load(reason))
        self.metrics.queue_depth.set(0)
        self._notify_drained()
        self._serving_changed()

    def _serving_changed(self) -> None:
        if self.on_serving_change is not None and not self.retired:
            self.on_serving_change()

    # ---------------------------------------------------------------------------------- lifecycle
    def scale(self, workers: int) -> None:
        """Aim for ``workers`` worker processes (see :class:`~torchship.serving.workers.pool.WorkerPool`)."""
        self._pool.scale(workers)
        self._update_workers_gauge()
        if workers == 0:  # the workers finish their batches; nobody will take what waits
            for job in self._batcher.clear():
                _fail(job, self._no_workers())
            self.metrics.queue_depth.set(0)
            self._notify_drained()

    def begin_shutdown(self) -> None:
        """The server is shutting down: no worker of this version is started or replaced any more."""
        self._pool.close()

    def _cannot_load(self, reason: str) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f'Model "{self.name}" Version {self.version} has no worker: loading failed ({reason}). Fix the '
            "model and register it again; the server retries loading meanwhile"
        )

    def _no_workers(self) -> NoWorkersError:
        return NoWorkersError(
            f'Model "{self.name}" Version {self.version} has no worker to serve inference request. '
            "Please use scale workers API to add workers."
        )

    async def wait_ready(self) -> None:
        """Wait until the workers are loaded; raises :class:`HandlerError` if loading fails."""
        await self._pool.wait_ready()

    async def drain(self) -> None:
        """Wait until no request is waiting or running (new ones must no longer be routed here)."""
        if not self._batcher and not self._running:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._drained.append(future)
        await future

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker (after its batch); those still alive after ``timeout`` seconds are killed."""
        for timer in (self._wake, self._expiry):
            if timer is not None:
                timer[1].cancel()
        for job in self._batcher.clear():
            _fail(job, ServiceUnavailableError(f'Model "{self.name}" Version {self.version} is stopping'))
        await self._pool.stop(timeout)
        self.metrics.remove()

    @property
    def target_workers(self) -> int:
        return self._pool.target

    @property
    def live_workers(self) -> int:
        """Worker processes running or starting, not counting those being stopped."""
        return self._pool.live

    @property
    def serving_workers(self) -> int:
        """Workers that are loaded (idle or running a batch)."""
        return self._pool.serving

    @property
    def load_error(self) -> str | None:
        return self._pool.load_error

    @property
    def pending(self) -> int:
        return len(self._batcher)

    def workers(self) -> list[WorkerProcess]:
        return self._pool.workers

    def _update_workers_gauge(self) -> None:
        self.metrics.workers.set(self._pool.serving)

    def _notify_drained(self) -> None:
        if self._drained and not self._batcher and not self._running:
            for future in self._drained:
                if not future.done():
                    future.set_result(None)
            self._drained.clear()


def _fail(job: Job, error: Exception) -> None:
    if not job.future.done():
        job.future.set_result(error_outcome(error))
