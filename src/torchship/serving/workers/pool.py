"""The worker processes of one model version: keep ``target`` of them alive, know which are idle.

A worker that dies after it has loaded is replaced at once. A worker that dies while loading (a model
that cannot load), or is still loading after ``startup_timeout`` (then it is killed), is retried with
exponential backoff, 1 s up to 30 s, so a broken model costs little while it is being fixed, and a fixed
one comes back without a restart. Scaling down stops idle workers first, then loading ones (killed: they
have no batch to finish), then busy ones after their current batch. The pool reports to its version
through three callbacks: a worker became ready, a worker answered a batch, a worker was lost.

Processes start off the event loop (see :mod:`~torchship.serving.workers.process`), so a scale to many workers
returns at once; one stopped before its process started never runs, and a process that cannot start is
a load failure like a model that cannot load. Once the server shuts down (:meth:`WorkerPool.close`), no
worker is started or replaced: a worker that dies during the drain is gone for good. A wait for the
workers to load ends with an error as soon as they never will: the version is stopped (unregistered) or
scaled to 0 before they load, or the server shuts down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from torchship.serving.errors import HandlerError
from torchship.serving.handler import ModelAPI
from torchship.serving.settings import default_torch_threads
from torchship.serving.workers.process import WorkerProcess, WorkerState

__all__ = ["WorkerPool"]

logger = logging.getLogger("torchship.serving")

_MAX_RESTART_DELAY = 30.0
_SHUTDOWN = "did not load before the server began to shut down"


class WorkerPool:
    """Worker processes for one version; see the module docstring."""

    def __init__(
        self,
        api: ModelAPI,
        version: str,
        *,
        on_ready: Callable[[], None],
        on_done: Callable[[WorkerProcess, int, float, list[Any], list[Any] | None], None],
        on_lost: Callable[[WorkerProcess], None],
        on_load_failure: Callable[[str], None],
    ) -> None:
        self.api = api
        self.version = version
        self.target = 0
        self.idle: list[WorkerProcess] = []
        self.load_error: str | None = None
        self._workers: list[WorkerProcess] = []
        self._on_ready, self._on_done, self._on_lost = on_ready, on_done, on_lost
        self._on_load_failure = on_load_failure
        self._loop = asyncio.get_running_loop()
        self._restart: asyncio.TimerHandle | None = None
        self._restart_delay = 1.0
        self._closing = False
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._exit_waiters: list[asyncio.Future[None]] = []
        self._startup_timers: dict[WorkerProcess, asyncio.TimerHandle] = {}

    @property
    def workers(self) -> list[WorkerProcess]:
        return list(self._workers)

    @property
    def live(self) -> int:
        """Workers that exist or are starting and are not being stopped (what counts against a cap)."""
        return len(self._live())

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: a worker that exits from then on is not replaced."""
        return self._closing

    def close(self) -> None:
        """Mark the pool as shutting down (no worker is started or replaced from now on); the workers keep
        running their batches until :meth:`stop`."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        # No worker will be started or replaced: whoever waits for the workers to load would wait forever.
        self._abandon_waiters(_SHUTDOWN)

    @property
    def serving(self) -> int:
        """Workers that are loaded (idle or running a batch)."""
        return sum(1 for w in self._workers if w.state in (WorkerState.READY, WorkerState.BUSY))

    def release(self, worker: WorkerProcess) -> None:
        """A worker finished its batch: idle again, unless it was asked to stop meanwhile."""
        worker.batch_id = None
        if worker.state is WorkerState.BUSY:
            worker.state = WorkerState.READY
            self.idle.append(worker)

    def scale(self, workers: int) -> None:
        """Aim for ``workers`` processes (see the module docstring for which ones stop first). The processes
        start off the event loop, one after another; :meth:`wait_ready` waits for them."""
        self.target = workers
        if workers == 0:  # nothing will load any more: a wait for the workers ends now, not never
            self._abandon_waiters("was scaled to 0 workers while loading")
        elif self.serving >= workers:  # scaled down to what serves already
            _settle(self._ready_waiters)
        live = self._live()
        for _ in range(0 if self._closing else workers - len(live)):
            self._spawn()
        order = {WorkerState.READY: 0, WorkerState.STARTING: 1, WorkerState.BUSY: 2}
        for worker in sorted(live, key=lambda w: order.get(w.state, 3))[: max(0, len(live) - workers)]:
            if worker in self.idle:
                self.idle.remove(worker)
            worker.stop()

    async def wait_ready(self) -> None:
        """Wait until ``target`` workers are loaded; :class:`HandlerError` if loading fails, or if they
        never will: the pool is stopped or closed, or scaled to 0, before they are."""
        if self.serving >= self.target:
            return
        if self._closing:
            raise HandlerError(f'Model "{self.api.name}" Version {self.version} {_SHUTDOWN}')
        future: asyncio.Future[None] = self._loop.create_future()
        self._ready_waiters.append(future)
        await future

    async def stop(self, timeout: float) -> None:
        """Stop every worker after its batch; kill those still alive after ``timeout`` seconds. A wait
        for the workers to load (:meth:`wait_ready`) ends with :class:`HandlerError`."""
        self._abandon_waiters("was unregistered while loading")
        self.close()
        self.target = 0
        for worker in list(self._workers):
            worker.stop()
        if not self._workers:
            return
        exited: asyncio.Future[None] = self._loop.create_future()
        self._exit_waiters.append(exited)
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
        except asyncio.TimeoutError:
            for worker in list(self._workers):
                worker.kill()
            await exited

    def _abandon_waiters(self, why: str) -> None:
        """End every :meth:`wait_ready` with :class:`HandlerError`: the workers will not load (stopped,
        scaled to 0, shutdown), so a caller waiting for them (a synchronous register or scale, the store
        watcher) gets an answer instead of waiting forever."""
        if self._ready_waiters:
            error = HandlerError(f'Model "{self.api.name}" Version {self.version} {why}')
            _settle(self._ready_waiters, error)

    def _live(self) -> list[WorkerProcess]:
        return [w for w in self._workers if w.state is not WorkerState.STOPPING]

    def _spawn(self) -> None:
        threads = self.api.settings.torch_threads or default_torch_threads(max(1, self.target))
        taken = {w.slot for w in self._live()}
        worker = WorkerProcess(
            self.api,
            version=self.version,
            torch_threads=threads,
            slot=next(slot for slot in range(len(taken) + 1) if slot not in taken),
            on_message=self._on_message,
            on_exit=self._on_exit,
        )
        self._workers.append(worker)
        timeout = self.api.settings.startup_timeout
        self._startup_timers[worker] = self._loop.call_later(timeout, self._on_startup_timeout, worker)
        worker.start()

    def _on_startup_timeout(self, worker: WorkerProcess) -> None:
        self._startup_timers.pop(worker, None)
        if worker.state is not WorkerState.STARTING:
            return
        timeout = self.api.settings.startup_timeout
        self.load_error = (
            f"the worker did not load within startup_timeout={timeout:g}s and was stopped; if loading is "
            "this slow on purpose, raise startup_timeout (--startup_timeout, or the register API's parameter)"
        )
        logger.error("%s version %s: %s", self.api.name, self.version, self.load_error)
        worker.state = WorkerState.STOPPING  # a "ready" already on its way is ignored
        worker.kill()  # its exit (via the sentinel) reports the failure and schedules the retry

    def _on_message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            # The 5th element, when there, is the handler's metric updates (see workers/child.py).
            self._on_done(
                worker, message[1], message[2], message[3], message[4] if len(message) > 4 else None
            )
        elif kind == "ready" and worker.state is WorkerState.STARTING:  # not when asked to stop meanwhile
            _cancel(self._startup_timers.pop(worker, None))
            worker.state = WorkerState.READY
            worker.ready_at = self._loop.time()
            worker.device = str(message[2])
            self.load_error, self._restart_delay = None, 1.0
            self.idle.append(worker)
            if self.serving >= self.target:
                _settle(self._ready_waiters)
            self._on_ready()
        elif kind == "failed":
            self.load_error = f"{message[1]}: {message[2]}"
            logger.error("%s version %s failed to load: %s", self.api.name, self.version, message[2])

    def _on_exit(self, worker: WorkerProcess) -> None:
        _cancel(self._startup_timers.pop(worker, None))
        self._workers.remove(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        self._on_lost(worker)
        if not self._workers:
            _settle(self._exit_waiters)
        if self._closing or len(self._live()) >= self.target:
            return
        if worker.ready_at is not None:
            self._spawn()  # it crashed or was killed while serving: replace it now
            return
        if self.load_error is None:  # it died before it could say why (killed, out of memory, a crash)
            self.load_error = f"the worker exited with code {worker.exitcode} while loading"
        reason = self.load_error
        _settle(self._ready_waiters, HandlerError(f'Model "{self.api.name}" failed to load: {reason}'))
        self._on_load_failure(reason)
        if self._restart is None:
            self._restart = self._loop.call_later(self._restart_delay, self._respawn)
            self._restart_delay = min(_MAX_RESTART_DELAY, self._restart_delay * 2)

    def _respawn(self) -> None:
        self._restart = None
        while not self._closing and len(self._live()) < self.target:
            self._spawn()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def _settle(futures: list[asyncio.Future[None]], error: Exception | None = None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
    futures.clear()
