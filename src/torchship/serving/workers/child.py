"""The body of a worker process: load the model once, then run batches sent over a pipe until told to stop.

Messages are tuples of plain values (never pickled exception objects):

    server → worker   ("run", batch_id, [(content_type, body), ...])   or   ("stop",)
    worker → server   ("ready", pid, device)                            device as str, e.g. "cuda:0"
                      ("failed", error_type, message)                   loading failed; the worker exits
                      ("done", batch_id, seconds, [(status, content_type, body, error_type, headers), ...]
                       [, metric_updates])

A version whose api class has ``wants_request_meta`` gets ``(content_type, body, meta)`` requests instead,
meta = ``{"headers": [(name, value), ...], "query": [(key, value), ...], "parts": [(name, content_type,
bytes), ...] or None}``. An api with ``take_metric_updates()`` (a TorchServe handler's ``context.metrics``)
adds the updates its batch made to ``"done"`` as plain tuples, when there are any.

The worker ignores SIGINT and SIGTERM: Ctrl+C, and the SIGTERM that systemd and Kubernetes send, reach the
whole process group, and the server, not the worker, decides when in-flight batches are finished (it
drains, then sends "stop"). The server starts workers with both signals blocked, so one still importing
its modules survives them too. A worker exits on its own when the pipe closes or the server process goes
away, so a killed server leaves no orphans behind.

The loop survives whatever a batch raises (see :mod:`~torchship.serving.workers.batch`): the batch is then
answered with errors, and only ``SystemExit`` from the handler ends the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from torchship.devices import resolve_device
from torchship.errors import TorchshipError
from torchship.serving.errors import HandlerError
from torchship.serving.handler import ModelAPI
from torchship.serving.workers.batch import error_outcome, run_batch
from torchship.serving.workers.channel import receive

__all__ = ["worker_main"]

logger = logging.getLogger("torchship.serving.worker")

_SHUTDOWN_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_IMPORT_HINT = (
    "Worker processes are fresh Python processes that import the ModelAPI's class by its module and name: "
    "define it in a .py file that a fresh process can import (not in a notebook cell), under a module name "
    "that nothing else on sys.path shadows"
)


def worker_main(pickled_api: bytes, conn: Connection, torch_threads: int, slot: int = 0) -> None:
    """Entry point of a worker process (the target given to ``multiprocessing``'s spawn context).
    ``pickled_api`` is the ModelAPI object, pickled by the server; ``slot`` numbers the version's workers
    from 0 and picks the GPU under ``device`` auto or cuda."""
    for signum in _SHUTDOWN_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)  # one already pending is discarded
    _exit_with_parent()
    _limit_threads(torch_threads)
    try:
        api: ModelAPI = pickle.loads(pickled_api)  # pickled by the server, never by a client
    except BaseException as exc:
        # Typically the handler's class lives where a fresh process cannot import it: a notebook cell, or a
        # module that another module of the same name shadows on sys.path.
        logger.error("a worker could not rebuild its ModelAPI object", exc_info=exc)
        conn.send(("failed", "InternalServerException", f"{type(exc).__name__}: {exc}. {_IMPORT_HINT}"))
        return
    try:
        api.device = resolve_device(api.settings.device, slot)
        if api.device.type == "cpu":
            _yield_to_the_http_loop()
        api.setup()
    except BaseException as exc:  # a model that cannot load must not take the server down
        logger.error("%r failed to load", api, exc_info=exc)
        kind = exc.type if isinstance(exc, TorchshipError) else "InternalServerException"
        conn.send(("failed", kind, f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid(), str(api.device)))
    take_metric_updates: Callable[[], list[Any]] | None = getattr(api, "take_metric_updates", None)
    trim = _allocator_trim()
    trimmed_at = time.monotonic()
    while True:
        if trim is not None and time.monotonic() - trimmed_at >= TRIM_INTERVAL_S:
            trim()  # between batches, after the last answer went out
            trimmed_at = time.monotonic()
        try:
            message = receive(conn)
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        _, batch_id, requests = message
        start = time.perf_counter()
        outcomes = _run(api, requests)
        done: tuple[Any, ...] = ("done", batch_id, time.perf_counter() - start, outcomes)
        if take_metric_updates is not None:
            done += _metric_updates(take_metric_updates)
        try:
            conn.send(done)
        except (EOFError, OSError):
            return
        except Exception as exc:  # MemoryError for results too large to pickle: answer the batch still
            logger.error("could not send the results of a batch", exc_info=exc)
            error = error_outcome(
                HandlerError(f"the batch's results could not be sent ({type(exc).__name__})")
            )
            conn.send(("done", batch_id, time.perf_counter() - start, [tuple(error)] * len(requests)))


TRIM_INTERVAL_S = 10.0
"""Seconds between two returns of freed memory to the system (glibc's ``malloc_trim``) in a worker."""


def _allocator_trim() -> Callable[[], None] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS).

    Why: glibc keeps the memory of freed tensors of varied sizes (texts of mixed lengths) instead of
    returning it, so a worker's RSS creeps up with its age; a trim every few seconds keeps it flat for a
    cost of milliseconds per trim (see the performance page of the docs, "Soak")."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int

    def trim() -> None:
        malloc_trim(0)

    return trim


def _metric_updates(take: Callable[[], list[Any]]) -> tuple[list[Any], ...]:
    """``(updates,)`` to add to a "done" message, or ``()`` when there are none or they cannot be read."""
    try:
        updates = take()
    except Exception as exc:  # a metric the handler broke must not fail the batch it answered
        logger.error("could not read the handler's metric updates", exc_info=exc)
        return ()
    return (updates,) if updates else ()


def _run(api: ModelAPI, requests: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The batch's outcomes as plain tuples; whatever escapes :func:`run_batch` fails the whole batch."""
    try:
        return [tuple(outcome) for outcome in run_batch(api, requests)]
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        logger.error("a batch failed outside the handler", exc_info=exc)
        return [tuple(error_outcome(exc))] * len(requests)


def _limit_threads(torch_threads: int) -> None:
    # Tokenizers (Rust/rayon) sizes its pool from this variable the first time it runs in parallel.
    os.environ.setdefault("RAYON_NUM_THREADS", str(torch_threads))
    import torch

    torch.set_num_threads(torch_threads)
    # Batches run one at a time, so inter-op threads only compete; the call fails (and is skipped) when
    # something the user's module ran at import has already started torch's thread pools.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _yield_to_the_http_loop() -> None:
    """Run this CPU worker's threads (and the threads they start later) under ``SCHED_BATCH`` (Linux).

    The policy keeps the worker's share of the CPU (same nice level) and only changes who runs first on a
    wake-up: the server's HTTP process, woken by a request or by a worker's answer, gets the core sooner
    than a worker in the middle of a batch. On a machine where the workers, the HTTP process and the load
    generator share few cores, that turns the requests around faster and leaves the workers less time
    idle waiting for their next batch: on a 2-core machine at 64 concurrent clients it served a few
    percent more requests per second, with no change at lower concurrency, where ``nice 5`` for the
    workers changed nothing (see the performance page of the docs). GPU workers keep the default policy: their
    thread feeds the GPU, and a wake-up delay there would idle the device.
    """
    if not hasattr(os, "SCHED_BATCH"):  # pragma: no cover - not Linux
        return
    param = os.sched_param(0)
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # pragma: no cover - no /proc: the calling thread only
        threads = [0]
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile, or a policy the host forbids
            os.sched_setscheduler(int(tid), os.SCHED_BATCH, param)


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:  # re-parented: the server is gone
                os._exit(0)

    threading.Thread(target=watch, name="torchship-parent-watch", daemon=True).start()
