"""The server's side of the worker pipe, measured the way the server uses it: on the event loop.

    python benchmarks/worker_round_trip.py [--rounds 2000] [--batch 32] [--big-mb 6]

A real :class:`~torchship.serving.workers.process.WorkerProcess`
runs an echo handler (it returns each payload's
length, so only the requests are big) on a uvloop event loop; the benchmark sends one batch at a time and
waits for its answer. It prints the median round trip of a batch of small JSON bodies (the hot path: what
the server adds per batch) and of a batch of ``--big-mb`` MB bodies (what the pipe must carry whole).
The choice of transport and its reasons are in ``torchship/serving/workers/process.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import uvloop

from torchship.serving import ModelAPI
from torchship.serving.workers.process import WorkerProcess, WorkerState


class LengthAPI(ModelAPI):
    """Answers each request with the length of its payload."""

    def load(self, model_path: Path | None) -> Any:
        return None

    def predict(self, payloads: list[Any]) -> list[Any]:
        return [{"length": len(payload)} for payload in payloads]


async def round_trips(bodies: list[bytes], rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    answers: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    exited: asyncio.Future[None] = loop.create_future()

    def on_message(worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            ready.set_result(None)
        elif message[0] == "done":
            answers.put_nowait(message)
        else:
            raise RuntimeError(f"the worker failed: {message}")

    worker = WorkerProcess(
        LengthAPI(name="length"),
        version="1",
        torch_threads=1,
        on_message=on_message,
        on_exit=lambda _: exited.set_result(None),
    )
    worker.start()
    await ready
    worker.state = WorkerState.READY
    requests = [("application/octet-stream", body) for body in bodies]
    times = []
    cpu = time.process_time()
    for batch_id in range(rounds):
        begin = time.perf_counter()
        worker.run(batch_id, requests)
        done = await answers.get()
        times.append(time.perf_counter() - begin)
        assert len(done[3]) == len(bodies) and done[3][0][0] == 200
        worker.state = WorkerState.READY
    times.append((time.process_time() - cpu) / rounds)  # last: the server's CPU time per batch
    worker.stop()
    await exited
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--big-rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--big-mb", type=float, default=6.0)
    args = parser.parse_args()
    small = [
        json.dumps({"text": f"shares rose after strong profits at the bank {i}"}).encode()
        for i in range(args.batch)
    ]
    # Distinct bodies: pickle would send one object given 32 times only once.
    big = [bytes([i % 256]) * int(args.big_mb * 1_000_000) for i in range(args.batch)]
    *times, cpu = uvloop.run(round_trips(small, args.rounds))
    print(
        f"batch of {args.batch} small bodies: median {statistics.median(times) * 1e6:.0f} us, "
        f"server CPU {cpu * 1e6:.0f} us per batch"
    )
    *times, cpu = uvloop.run(round_trips(big, args.big_rounds))
    print(
        f"batch of {args.batch} x {args.big_mb:g} MB: median {statistics.median(times) * 1e3:.0f} ms, "
        f"server CPU {cpu * 1e3:.0f} ms per batch"
    )


if __name__ == "__main__":
    main()
