"""Worker processes as the server's event loop sees them: start, send a batch, hear back, stop or kill.

Why processes and not threads (measured with ``benchmarks/serve_workers.py``; the numbers are on the
performance page of the docs):

* a pipe round trip for a batch (pickle the bodies, send, receive, unpickle the results) costs a few
  microseconds per request;
* in one process, the model's Python glue and the HTTP loop fight over the GIL: next to a model thread,
  both the HTTP side and the model ran about three times slower. A few microseconds per request are far
  cheaper;
* and only a process can be killed: a hung or crashed handler is replaced with SIGKILL and a respawn, while
  a stuck thread could never be reclaimed and a crash in native code would take the server down.

Each worker has its own duplex pipe; the event loop watches it and the process sentinel (its exit), so no
thread per worker is needed. The worker runs one batch at a time. All metrics are counted in the server
process from its messages, which is why Prometheus needs no multiprocess mode.

The pipe carries a batch of any size whole, both ways (:mod:`~torchship.serving.workers.channel`): the worker
blocks on its end (``Connection.send``, and :func:`~torchship.serving.workers.channel.receive`, which reads a
frame straight into a buffer of its size and so spends less CPU than ``Connection.recv`` on a big
batch), and the server writes and parses the same framing on its non-blocking end, with an output buffer
written as the worker reads. Chosen over the alternatives, measured with
``benchmarks/worker_round_trip.py`` (a real worker on uvloop):

* it costs the hot path nothing: the server's CPU per round trip of a batch of 32 small requests did
  not grow (one ``writev`` and one ``read`` where ``Connection`` made a write and two reads), and a batch
  of 32 bodies of 6 MB, which the non-blocking ``Connection`` could not send at all, crosses whole (one
  pickle copy and the writes);
* blocking writes in a thread would put a thread hop on every batch to help only the big ones;
* shared memory would save the pickle copy of a big batch, at the price of segments to size, reuse, and
  free after a worker is SIGKILLed;
* chunking into messages of our own would be what the output buffer already does, plus a protocol.

Starting a process (fork, exec, pickling its arguments) takes tens of milliseconds, so it happens in one
spawner thread, never on the event loop; a worker is watched once its process exists.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import resource_tracker
from typing import Any

from torchship.errors import ConfigError
from torchship.serving.handler import WORKER_PROCESS_PREFIX, ModelAPI
from torchship.serving.workers.channel import Channel
from torchship.serving.workers.child import worker_main

__all__ = ["WorkerProcess", "WorkerState"]

logger = logging.getLogger("torchship.serving")

_SPAWN = multiprocessing.get_context("spawn")  # fork would copy the event loop, sockets and locks
_ids = itertools.count(9000)  # TorchServe numbers its workers from 9000


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class WorkerProcess:
    """One worker process. ``on_message(worker, message)`` gets every message; ``on_exit(worker)`` runs
    once when the process has exited, whatever the reason (one stopped before it started included).

    Construction is cheap and does not start the process: :meth:`start` does, off the event loop.
    """

    def __init__(
        self,
        api: ModelAPI,
        *,
        version: str,
        torch_threads: int,
        slot: int = 0,
        on_message: Callable[[WorkerProcess, tuple[Any, ...]], None],
        on_exit: Callable[[WorkerProcess], None],
    ) -> None:
        self.id = next(_ids)
        self.state = WorkerState.STARTING
        self.start_time = time.time()
        self.batch_id: int | None = None
        self.ready_at: float | None = None  # loop time of its "ready" message; None while loading
        self.timed_out = False
        self.slot = slot  # numbers the version's live workers from 0; picks its GPU (see devices.py)
        self.device: str | None = None  # what the worker reported once loaded, e.g. "cpu" or "cuda:0"
        self._on_message = on_message
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._started = False  # the process exists (set on the loop once Process.start returned)
        self._kill_asked = False  # killed before it started: it must not run
        try:
            # Pickled here rather than by multiprocessing, so that the child unpickles it inside
            # worker_main, where a class it cannot import becomes a load error the server reports.
            pickled = pickle.dumps(api)
        except Exception as exc:
            raise ConfigError(
                f"cannot start a worker for {api!r}: {type(exc).__name__}: {exc}. The ModelAPI object must "
                "be picklable: define its class at the top level of a module, and create unpicklable things "
                "(models, clients, files) in load() rather than in __init__"
            ) from exc
        conn, self._child_conn = _SPAWN.Pipe(duplex=True)
        self._channel = Channel(conn, self._loop, lambda message: self._on_message(self, message))
        self._process = _SPAWN.Process(
            target=worker_main,
            args=(pickled, self._child_conn, torch_threads, slot),
            name=f"{WORKER_PROCESS_PREFIX}-{api.name}-{version}-{self.id}",
            daemon=True,
        )

    def start(self) -> None:
        """Start the process in the spawner thread; it is watched once it exists. A start that fails is
        reported as a ``("failed", ...)`` message, then as an exit, like a worker that cannot load."""
        started = self._loop.run_in_executor(_spawner(), self._start_process)
        started.add_done_callback(self._on_started)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._started else None

    def run(self, batch_id: int, requests: list[tuple[Any, ...]]) -> None:
        """Send a batch of ``(content_type, body)`` requests, or ``(content_type, body, meta)`` ones for an
        api that wants them (see :mod:`~torchship.serving.workers.child`); the worker must be READY. Its
        answer arrives as a ``("done", ...)`` message."""
        self.state = WorkerState.BUSY
        self.batch_id = batch_id
        self._channel.send(("run", batch_id, requests))

    def stop(self) -> None:
        """Ask the worker to exit after its current batch (it reads the message when it is done). One still
        loading has no batch to finish and would read the message only once loaded: it is killed."""
        if self.state is WorkerState.STOPPED:
            return
        loading = self.state is WorkerState.STARTING
        self.state = WorkerState.STOPPING
        if loading:
            self.kill()
            return
        self._channel.send(("stop",))

    def kill(self) -> None:
        """SIGKILL: for a worker that is hung or must go now (one not started yet never runs)."""
        if not self._started:
            self._kill_asked = True
        elif self._process.exitcode is None:
            self._process.kill()

    def memory_usage(self) -> int:
        """Resident memory in bytes (0 when unknown), as TorchServe's describe API reports it."""
        if self.pid is None:
            return 0
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode if self._started else None

    def _start_process(self) -> bool:  # runs in the spawner thread
        if self._kill_asked:
            return False
        # Launching multiprocessing's resource tracker unblocks SIGINT and SIGTERM in the calling thread:
        # have it running first, then start the worker with both blocked (see _spawner).
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)
        self._process.start()
        return True

    def _on_started(self, started: asyncio.Future[bool]) -> None:
        self._child_conn.close()  # keep only the child's copy, so its exit closes the pipe
        error = started.exception()
        if error is not None or not started.result():
            if error is not None:
                logger.error("could not start a worker process", exc_info=error)
                reason = f"the worker process could not start ({type(error).__name__}: {error})"
                self._on_message(self, ("failed", "InternalServerException", reason))
            self._exited()
            return
        self._started = True
        self._channel.open()
        self._loop.add_reader(self._process.sentinel, self._on_sentinel)
        if self._kill_asked:
            self._process.kill()

    def _on_sentinel(self) -> None:
        self._loop.remove_reader(self._process.sentinel)
        asked_to_stop = self.state is WorkerState.STOPPING
        self.state = WorkerState.STOPPING  # a batch answered in its last words must not make it idle again
        self._channel.drain()  # deliver what the worker sent before it exited
        self._process.join()
        if not asked_to_stop:
            logger.warning(
                "worker %s (pid %s) exited with code %s", self.id, self.pid, self._process.exitcode
            )
        self._exited()

    def _exited(self) -> None:
        self._channel.close()
        self.state = WorkerState.STOPPED
        self._on_exit(self)


_SHUTDOWN_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_spawner_pool: ThreadPoolExecutor | None = None


def _spawner() -> ThreadPoolExecutor:
    """The one thread that starts worker processes, for every server in this process.

    ``Process.start`` of the spawn context takes tens of milliseconds (fork, exec, pickling the process
    object): here it never holds up the event loop, and a scale to many workers starts them one after
    another. The thread blocks SIGINT and SIGTERM, and a process inherits the mask of the thread that
    forked it: a worker still importing its modules when the process group gets SIGTERM (Ctrl+C, systemd,
    Kubernetes) holds the signal until ``worker_main`` ignores it, instead of dying. The server's own
    handlers run in the main thread, which does not block them.
    """
    global _spawner_pool
    if _spawner_pool is None:
        _spawner_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchship-spawner")
    return _spawner_pool
