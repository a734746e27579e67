"""Serving benchmark: the bare model versus ``torchship serve`` under load, in one run.

    python benchmarks/serve.py                       # ./models/bbc if present, else a realistic stand-in
    python benchmarks/serve.py --model ./models/bbc:2 --words 12 --duration 10
    python benchmarks/serve.py --configs 1x1 1x2 2x1 # workers x torch threads, side by side

(a) the bare model, no HTTP: tokenise + forward + softmax, latency at batch 1 and throughput at the best
batch size (1 and 2 torch threads, the best is kept); (b) ``torchship serve`` (the real CLI, in a
subprocess) under ``wrk`` (Debian's ``apt-get install wrk``; a built-in asyncio client otherwise) at
concurrency 1, 8, 32 and 64: throughput, p50, p99 and errors. It prints

    efficiency = server throughput at c=64 / bare batched throughput       (target >= 0.75)
    overhead   = server p50 at c=1 - bare p50 at batch 1                   (target <= 1 ms)

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
from pathlib import Path

import httpx
import torch

from serve_load import LoadResult, run_load
from torchship.data.formats import read_examples
from torchship.serving.handlers import TextClassifierAPI
from torchship.store import resolve_model


def main() -> None:
    args = _parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchship-bench-"))
    try:
        model = _model_path(args.model, work)
        texts = _texts(args.words, args.texts)
        print(f"model {model} | {len(texts)} texts, {_mean_tokens(model, texts):.0f} tokens on average")
        bare = bare_model(model, texts, args.duration)
        # The yardsticks are the bare model at its best: the lowest latency and the highest throughput
        # over thread counts and batch sizes, whatever the server's own configuration.
        bare_latency = min(latency for latency, _, _ in bare.values())
        bare_throughput = max(throughput for _, throughput, _ in bare.values())
        for config in args.configs:
            workers, threads = (int(part) for part in config.split("x"))
            results = serve_under_load(model, texts, args, workers, threads, work)
            _report(config, results, bare_latency, bare_throughput)
            if threads in bare:
                same = (results[0].p50 - bare[threads][0]) * 1000 if results[0].concurrency == 1 else None
                if same is not None:
                    print(f"overhead at c=1 vs the bare model on the same {threads} thread(s): {same:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bare_model(model: Path, texts: list[str], duration: float) -> dict[int, tuple[float, float, int]]:
    """Per torch thread count: batch-1 p50 latency (s), best throughput (samples/s) and its batch size."""
    api = TextClassifierAPI(model_path=model)
    api.setup()
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        api.predict(texts[:8])  # warm up
        latencies = []
        deadline = time.perf_counter() + duration / 2
        for text in texts:
            start = time.perf_counter()
            api.predict([text])
            latencies.append(time.perf_counter() - start)
            if time.perf_counter() > deadline:
                break
        best, best_batch = 0.0, 1
        for batch in (1, 8, 16, 32, 64, 128):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration / 4:
                offset = done % len(texts)
                chunk = (texts * 2)[offset : offset + batch]
                api.predict(chunk)
                done += len(chunk)
            rate = done / (time.perf_counter() - start)
            if rate > best:
                best, best_batch = rate, batch
        results[threads] = (statistics.median(latencies), best, best_batch)
        print(
            f"bare model, {threads} thread(s): batch 1 p50 {results[threads][0] * 1000:.2f} ms | "
            f"best {best:.0f} samples/s at batch {best_batch}"
        )
    return results


def serve_under_load(
    model: Path, texts: list[str], args: argparse.Namespace, workers: int, threads: int, work: Path
) -> list[LoadResult]:
    """Start ``torchship serve`` with ``workers`` x ``threads``, load it at each concurrency, stop it."""
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
        "--workers",
        str(workers),
        "--torch_threads",
        str(threads),
        "--batch_size",
        str(args.batch_size),
        "--max_batch_delay",
        str(args.max_batch_delay),
    ]
    log = (work / f"serve-{workers}x{threads}.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        url = _inference_url(process)
        _wait_healthy(url)
        name = json.loads((model / "config.json").read_text())["name"]
        bodies = [json.dumps({"text": text}) for text in texts]
        results = []
        for concurrency in args.concurrency:
            run_load(f"{url}/predictions/{name}", bodies, concurrency, min(2.0, args.duration), work)  # warm
            results.append(run_load(f"{url}/predictions/{name}", bodies, concurrency, args.duration, work))
        return results
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def _report(config: str, results: list[LoadResult], bare_latency: float, bare_throughput: float) -> None:
    print(f"\ntorchship serve, {config} (workers x torch threads), load by {results[0].tool}")
    print(f"{'concurrency':>11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'efficiency':>10}")
    for result in results:
        efficiency = result.throughput / bare_throughput
        print(
            f"{result.concurrency:>11} {result.throughput:>9.1f} {result.p50 * 1000:>8.2f} "
            f"{result.p99 * 1000:>8.2f} {result.errors:>7} {efficiency:>10.2f}"
        )
    by_concurrency = {result.concurrency: result for result in results}
    if 64 in by_concurrency:
        print(f"efficiency at c=64: {by_concurrency[64].throughput / bare_throughput:.2f} (target >= 0.75)")
    if 1 in by_concurrency:
        overhead = (by_concurrency[1].p50 - bare_latency) * 1000
        print(f"overhead at c=1:    {overhead:.2f} ms (target <= 1 ms)")


def _model_path(model: str | None, work: Path) -> Path:
    if model is not None:
        return resolve_model(model)
    if Path("models/bbc").is_dir():
        return resolve_model("models/bbc")
    from serve_model import build_stand_in

    print(
        "no ./models/bbc: building a stand-in package of the demo's size (d_model 128, 2 layers, 16k vocab)"
    )
    return build_stand_in(work / "store")


def _texts(words: int | None, count: int) -> list[str]:
    texts = [example.text for example in read_examples("bbc-news")]
    if words is not None:
        texts = [" ".join(text.split()[:words]) for text in texts]
    return texts[:count]


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
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--configs", nargs="+", default=["1x1"], help="workers x torch threads, e.g. 1x1 2x1")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_batch_delay", type=float, default=5.0)
    return parser


if __name__ == "__main__":
    main()
