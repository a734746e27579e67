"""Threads or processes for workers? The two costs, measured side by side on the demo-sized model.

    python benchmarks/serve_workers.py [--model PATH] [--words 12] [--batch 32]

* process: one pipe round trip per batch (pickle the request bodies, send, receive, unpickle the results);
  the model and the HTTP loop run in separate processes and meet only in the OS scheduler;
* thread: no copy, but the model's Python glue holds the GIL between torch ops, so the HTTP loop (a
  stand-in: JSON parse + dispatch + JSON encode per request) stalls while the model runs, and vice versa.

It prints the pipe round trip per batch, the HTTP stand-in's rate alone and next to a model thread, and
the model's rate alone and next to the HTTP stand-in. The decision and the numbers are in
``torchship/serving/workers/process.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import threading
import time
from multiprocessing.connection import Connection

import torch

from torchship.data.formats import read_examples
from torchship.serving.text_classifier import TextClassifierAPI
from torchship.store import resolve_model


def _echo(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(
            (
                "done",
                0,
                0.001,
                [(200, "application/json", b'{"label": "tech", "score": 0.9}' * 4, "") for _ in message[2]],
            )
        )


def pipe_round_trip(bodies: list[bytes], rounds: int = 300) -> float:
    """Median seconds for one batch to go to a process and its results to come back."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_echo, args=(child,), daemon=True)
    process.start()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        parent.send(("run", 1, [("application/json", body) for body in bodies]))
        parent.recv()
        times.append(time.perf_counter() - start)
    parent.send(None)
    process.join()
    return statistics.median(times)


def http_stand_in(bodies: list[bytes], seconds: float) -> float:
    """Requests per second of the per-request Python work the HTTP process does (parse, route, encode)."""
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for body in bodies:
            json.dumps({"echo": json.loads(body), "status": 200}).encode()
            done += 1
    return done / seconds


def model_rate(api: TextClassifierAPI, texts: list[str], batch: int, stop: threading.Event) -> float:
    done, start = 0, time.perf_counter()
    while not stop.is_set():
        api.predict(texts[done % len(texts) :][:batch] or texts[:batch])
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/bbc")
    parser.add_argument("--words", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts = [" ".join(e.text.split()[: args.words]) for e in read_examples("bbc-news")][:1000]
    bodies = [json.dumps({"text": text}).encode() for text in texts[: args.batch]]
    print(f"pipe round trip, batch of {args.batch}: {pipe_round_trip(bodies) * 1e6:.0f} us")

    api = TextClassifierAPI(model_path=resolve_model(args.model))
    api.setup()
    alone_http = http_stand_in(bodies, args.seconds)
    stop = threading.Event()
    timer = threading.Timer(args.seconds, stop.set)
    timer.start()
    alone_model = model_rate(api, texts, args.batch, stop)
    stop.clear()
    rates: list[float] = []
    thread = threading.Thread(target=lambda: rates.append(model_rate(api, texts, args.batch, stop)))
    thread.start()
    shared_http = http_stand_in(bodies, args.seconds)
    stop.set()
    thread.join()
    print(f"HTTP stand-in: {alone_http:.0f} req/s alone, {shared_http:.0f} req/s next to a model thread")
    print(f"model: {alone_model:.0f} samples/s alone, {rates[0]:.0f} samples/s next to the HTTP stand-in")


if __name__ == "__main__":
    main()
