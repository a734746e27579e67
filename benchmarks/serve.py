"""Serving benchmark: the bare model versus ``torchship serve`` under load, in one run.

    python benchmarks/serve.py                       # ./models/bbc if present, else a realistic stand-in
    python benchmarks/serve.py --model ./models/bbc:2 --words 12 --duration 10
    python benchmarks/serve.py --configs default 1x1 2x1   # server defaults, then workers x torch threads

(a) the bare model, no HTTP: tokenise + forward + softmax, latency at batch 1 and throughput at the best
batch size (1 and 2 torch threads, the best is kept); (b) ``torchship serve`` (the real CLI, in a
subprocess) under ``wrk`` (Debian's ``apt-get install wrk``; a built-in asyncio client otherwise) at
concurrency 1, 8, 32 and 64: throughput, p50, p99 and errors. It prints

    efficiency = server throughput at c=64 / bare batched throughput       (target >= 0.75)
    overhead   = server p50 at c=1 - bare p50 at batch 1                   (target <= 1 ms)

Both yardsticks are the bare model at its best, over thread counts and batch sizes, whatever the server's
own configuration. On a shared machine the latency of the bare model itself drifts by a millisecond from
one minute to the next, more than the overhead being measured, and its throughput by 10-40%; so c=1 and
c=64 run in rounds that alternate the bare model and the server (on the same texts at c=1), each server
run compared with the bare measurement just before it, and the medians of the rounds are reported. With
several ``--configs``, every config's server is started at the start and each round measures all of them
in turn (in alternating order), so that a slow minute does not fall on one config only.

Inputs are BBC News articles (``--words N`` cuts each to its first N words; 12 words is about 16 tokens,
the regime where the server's own cost matters most). Without ``--model`` and without ``./models/bbc``, a
stand-in package of the demo's size is built: d_model 128, 2 layers, a 16k WordPiece vocabulary trained
on the corpus, untrained weights (speed does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import torch

from peers.package import benchmark_texts
from serve_load import LoadResult, run_load
from torchship.serving.text_classifier import TextClassifierAPI
from torchship.store import resolve_model

THREADS = (1, 2)
PACE = 0.002
"""Seconds between calls for the "paced" bare latency: a c=1 client is idle about this long between its
requests, and on a shared machine a call after a pause runs slower than back-to-back calls (the caches
and the core cool down). The paced figure is printed for information; the target uses the hot one."""


def main() -> None:
    args = _parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchship-bench-"))
    try:
        model = _model_path(args.model, work)
        texts = benchmark_texts(args.words)[: args.texts]
        # Latency is compared on the same texts on both sides, each sent at least once: on whole articles
        # the time is proportional to the length, so two different samples of texts would differ by more
        # than the overhead being measured.
        latency_texts = texts[: args.latency_texts]
        print(
            f"model {model} | {len(texts)} texts, {_mean_tokens(model, texts):.0f} tokens on average; "
            f"latency on the first {len(latency_texts)}"
        )
        bare = BareModel(model, texts, latency_texts)
        bare.throughput(args.duration)
        for config, rounds in serve_under_load(model, texts, latency_texts, bare, args, work).items():
            _report(config, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class BareModel:
    """The built-in handler in this process, called directly: what the server adds nothing to."""

    def __init__(self, model: Path, texts: list[str], latency_texts: list[str]) -> None:
        self.api = TextClassifierAPI(model_path=model)
        self.api.setup()
        self.texts = texts
        self.latency_texts = latency_texts
        self.best = (1, 1)  # (threads, batch) of the best throughput

    def latency(self, threads: int, pause: float = 0.0) -> float:
        """Median seconds of one call with one text, over every latency text once, ``pause`` s apart."""
        torch.set_num_threads(threads)
        self.api.predict(self.latency_texts[:8])  # warm up
        latencies = []
        for text in self.latency_texts:
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            self.api.predict([text])
            latencies.append(time.perf_counter() - start)
        return statistics.median(latencies)

    def throughput(self, duration: float) -> dict[int, float]:
        """Per torch thread count, the best samples/s over batch sizes; remembers the best of all."""
        best: dict[int, float] = {}
        for threads in THREADS:
            rates = {batch: self.rate(threads, batch, duration / 6) for batch in (1, 8, 16, 32, 64, 128)}
            batch = max(rates, key=lambda size: rates[size])
            best[threads] = rates[batch]
            print(f"bare model, {threads} thread(s): best {rates[batch]:.0f} samples/s at batch {batch}")
            if best[threads] >= max(best.values()):
                self.best = (threads, batch)
        return best

    def rate(self, threads: int, batch: int, duration: float) -> float:
        """Samples/s at ``threads`` and ``batch`` over ``duration`` seconds."""
        torch.set_num_threads(threads)
        self.api.predict(self.texts[:batch])  # warm up
        cycle = self.texts * 2  # so that a batch starting near the end wraps around
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            offset = done % len(self.texts)
            chunk = cycle[offset : offset + batch]
            self.api.predict(chunk)
            done += len(chunk)
        return done / (time.perf_counter() - start)


@dataclass(frozen=True)
class Round:
    """One measurement of the server at a concurrency, right after the bare model's yardstick.

    ``bare`` is the bare model's batch-1 p50 per thread count (c=1) or its best throughput (c>1)."""

    concurrency: int
    bare: dict[int, float]
    server: LoadResult
    paced: float = 0.0
    """c=1: the bare model's batch-1 p50 on one thread with a pause before each call (see PACE)."""

    @property
    def overhead(self) -> float:
        """Server p50 - the lowest bare batch-1 p50 (c=1 rounds)."""
        return self.server.p50 - min(self.bare.values())

    @property
    def efficiency(self) -> float:
        """Server throughput / the bare model's best throughput (c>1 rounds)."""
        return self.server.throughput / max(self.bare.values())


def serve_under_load(
    model: Path,
    texts: list[str],
    latency_texts: list[str],
    bare: BareModel,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, list[Round]]:
    """Start one ``torchship serve`` per config in ``args.configs`` ("default" or workers x threads), all at
    once, and measure them in turns: at c=1 and c=64, ``args.rounds`` rounds, each of which runs every
    config (in alternating order) right after its own bare yardstick; at the other concurrencies, one.
    So a slow minute on the machine falls on every config alike, not on whichever ran then."""
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    logs: list[IO[str]] = []
    try:
        for config in args.configs:
            log = (work / f"serve-{config}.log").open("w")
            logs.append(log)
            process = subprocess.Popen(
                _serve_command(model, args, config), stdout=subprocess.PIPE, stderr=log, text=True
            )
            servers[config] = (process, _inference_url(process))
        name = json.loads((model / "config.json").read_text())["name"]
        urls = {config: f"{base}/predictions/{name}" for config, (_, base) in servers.items()}
        for _, base in servers.values():
            _wait_healthy(base)
        rounds: dict[str, list[Round]] = {config: [] for config in args.configs}
        for concurrency in args.concurrency:
            sent = latency_texts if concurrency == 1 else texts
            bodies = [json.dumps({"text": text}) for text in sent]
            for url in urls.values():
                run_load(url, bodies, concurrency, min(2.0, args.duration), work)  # warm up
            repeats = args.rounds if concurrency in (1, 64) else 1
            for repeat in range(repeats):
                order = args.configs if repeat % 2 == 0 else args.configs[::-1]
                for config in order:
                    if concurrency == 1:
                        yardstick = {threads: bare.latency(threads) for threads in THREADS}
                        paced = bare.latency(1, PACE)
                        duration = args.duration / repeats
                    else:
                        paced = 0.0
                        threads, batch = bare.best
                        yardstick = {threads: bare.rate(threads, batch, args.duration / 3)}
                        duration = args.duration
                    result = run_load(urls[config], bodies, concurrency, duration, work)
                    rounds[config].append(Round(concurrency, yardstick, result, paced))
        return rounds
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(60)
        for file in logs:
            file.close()


def _serve_command(model: Path, args: argparse.Namespace, config: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "torchship",
        "serve",
        "--model",
        str(model),
        "--no_snapshot",
        "--inference_port",
        "0",
        "--management_port",
        "0",
        "--metrics_port",
        "0",
    ]
    if config != "default":
        workers, threads = config.split("x")
        command += ["--workers", workers, "--torch_threads", threads]
    for option in ("batch_size", "max_batch_delay"):
        if getattr(args, option) is not None:
            command += [f"--{option}", str(getattr(args, option))]
    return command


def _report(config: str, rounds: list[Round]) -> None:
    print(f"\ntorchship serve, {config} (workers x torch threads), load by {rounds[0].server.tool}")
    print(
        f"{'concurrency':>11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'bare':>12} {'efficiency':>10} {'overhead':>9}"
    )
    for round_ in rounds:
        server = round_.server
        if round_.concurrency == 1:
            bare = f"{min(round_.bare.values()) * 1000:.2f} ms"
            ratio, overhead = "", f"{round_.overhead * 1000:.2f} ms"
        else:
            bare, ratio, overhead = f"{max(round_.bare.values()):.0f}/s", f"{round_.efficiency:.2f}", ""
        print(
            f"{round_.concurrency:>11} {server.throughput:>9.1f} {server.p50 * 1000:>8.2f} "
            f"{server.p99 * 1000:>8.2f} {server.errors:>7} {bare:>12} {ratio:>10} {overhead:>9}"
        )
    at_64 = [round_.efficiency for round_ in rounds if round_.concurrency == 64]
    if at_64:
        print(
            f"efficiency at c=64: {statistics.median(at_64):.2f}, median of {len(at_64)} rounds "
            "(target >= 0.75)"
        )
    at_1 = [round_.overhead * 1000 for round_ in rounds if round_.concurrency == 1]
    if at_1:
        print(
            f"overhead at c=1:    {statistics.median(at_1):.2f} ms, median of {len(at_1)} rounds "
            "(target <= 1 ms)"
        )
        ones = [round_ for round_ in rounds if round_.concurrency == 1]
        same = statistics.median((r.server.p50 - r.bare[1]) * 1000 for r in ones)
        paced = statistics.median((r.server.p50 - r.paced) * 1000 for r in ones)
        print(
            f"  for information: vs the bare model on 1 thread {same:.2f} ms; vs 1 thread "
            f"called {PACE * 1000:g} ms apart {paced:.2f} ms (bare paced p50 "
            f"{statistics.median(r.paced for r in ones) * 1000:.2f} ms)"
        )
    print(f"errors: {sum(round_.server.errors for round_ in rounds)}")


def _model_path(model: str | None, work: Path) -> Path:
    if model is not None:
        return resolve_model(model)
    if Path("models/bbc").is_dir():
        return resolve_model("models/bbc")
    from peers.package import make_benchmark_package

    print(
        "no ./models/bbc: building a stand-in package of the demo's size (d_model 128, 2 layers, 16k vocab)"
    )
    return make_benchmark_package(work / "store")


def _mean_tokens(model: Path, texts: list[str]) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    return statistics.mean(len(encoding.ids) for encoding in tokenizer.encode_batch(texts[:200]))


def _inference_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("torchship: inference"):
            return line.split()[-1]
    raise RuntimeError(f"torchship serve exited with {process.wait()} before printing its URL")


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/ping").json().get("status") == "Healthy":
            return
        time.sleep(0.1)
    raise RuntimeError("the server's workers did not load in time")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="package dir or <store>/<name>[:VERSION] (default ./models/bbc)")
    parser.add_argument("--words", type=int, default=None, help="cut each article to N words")
    parser.add_argument("--texts", type=int, default=1000, help="distinct request bodies")
    parser.add_argument(
        "--latency_texts", type=int, default=200, help="texts for the batch-1 and c=1 latencies (both sides)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating bare/server rounds at c=1 and at c=64"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["default"],
        help='"default" (the server\'s own choice) or workers x torch threads, e.g. 1x1 2x1',
    )
    parser.add_argument("--batch_size", type=int, default=None, help="default: the server's")
    parser.add_argument("--max_batch_delay", type=float, default=None, help="default: the server's")
    return parser


if __name__ == "__main__":
    main()
