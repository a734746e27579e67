"""Worker processes as the server's event loop sees them: start, send a batch, hear back, stop or kill.

Why processes and not threads, measured with ``benchmarks/serve_workers.py`` on the 2-core machine (shared
with other jobs, so rounded), demo-sized model (d_model 128, 2 layers, 16k vocab), 16-token texts:

* a pipe round trip for a batch of 32 requests (pickle the bodies, send, receive, unpickle the results)
  costs about 75 us, ~2 us per request;
* in one process, the model's Python glue and the HTTP loop fight over the GIL: the HTTP stand-in (JSON
  parse and encode per request) fell from ~137k to ~39k req/s next to a model thread, and the model from
  ~830 to ~250 samples/s. The 2 us per request is far cheaper than a 3x slowdown of both sides;
* and only a process can be killed: a hung or crashed handler is replaced with SIGKILL and a respawn, while
  a stuck thread could never be reclaimed and a crash in native code would take the server down.

Each worker has its own duplex pipe. The event loop watches the pipe with ``loop.add_reader`` and the
process sentinel for its exit, so nothing blocks the loop and no thread per worker is needed. The worker
runs one batch at a time. All metrics are counted in the server process from these messages, which is
why Prometheus needs no multiprocess mode.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

from torchship.errors import ConfigError
from torchship.serving.api import WORKER_PROCESS_PREFIX, ModelAPI
from torchship.serving.worker_process import worker_main

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
    once when the process has exited, whatever the reason."""

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
        self._conn, child_conn = _SPAWN.Pipe(duplex=True)
        self._process = _SPAWN.Process(
            target=worker_main,
            args=(pickled, child_conn, torch_threads, slot),
            name=f"{WORKER_PROCESS_PREFIX}-{api.name}-{version}-{self.id}",
            daemon=True,
        )
        try:
            self._process.start()
        except Exception:
            self._conn.close()
            child_conn.close()
            raise
        child_conn.close()  # keep only the child's copy, so its exit closes the pipe
        self._loop.add_reader(self._conn.fileno(), self._on_readable)
        self._loop.add_reader(self._process.sentinel, self._on_sentinel)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def run(self, batch_id: int, requests: list[tuple[str, bytes]]) -> None:
        """Send a batch; the worker must be READY. Its answer arrives as a ``("done", ...)`` message."""
        self.state = WorkerState.BUSY
        self.batch_id = batch_id
        # Blocks only while the pipe buffer is full, and the idle worker is already reading.
        self._conn.send(("run", batch_id, requests))

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
        try:
            self._conn.send(("stop",))
        except OSError:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: for a worker that is hung or must go now."""
        if self._process.exitcode is None:
            self._process.kill()

    def memory_usage(self) -> int:
        """Resident memory in bytes (0 when unknown), as TorchServe's describe API reports it."""
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _on_readable(self) -> None:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._loop.remove_reader(self._conn.fileno())  # the exit itself arrives via the sentinel
            return
        self._on_message(self, message)

    def _on_sentinel(self) -> None:
        self._loop.remove_reader(self._process.sentinel)
        if not self._conn.closed:
            try:
                while self._conn.poll():  # deliver what the worker sent before it exited
                    self._on_message(self, self._conn.recv())
            except (EOFError, OSError):
                pass
            self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
        self._process.join()
        if self.state is not WorkerState.STOPPING:
            logger.warning(
                "worker %s (pid %s) exited with code %s", self.id, self.pid, self._process.exitcode
            )
        self.state = WorkerState.STOPPED
        self._on_exit(self)

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode
