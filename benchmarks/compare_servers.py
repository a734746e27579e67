"""torchship serve against LitServe and TorchServe: one run, one model package, the same texts.

    python benchmarks/compare_servers.py --model ./models/bbc                  # its latest version
    python benchmarks/compare_servers.py --concurrency 32 --duration 15        # ./models/bbc or a stand-in
    python benchmarks/compare_servers.py --servers torchship,litserve --torchship-arg=--batch_size=16

Each server starts on 127.0.0.1 (free ports), must first answer a few texts with the probabilities the
package itself computes, gets a short warm-up, then ``--duration`` seconds of closed-loop load from
``--concurrency`` clients (``serve_load.run_load``, shared with ``serve.py``: wrk when installed), and is
stopped before the next one starts. Peers run as the issue describes them: LitServe batching 16 requests
within 5 ms, TorchServe batching 16 within 5 ms and TorchServe without batching, each with one worker;
torchship runs at its defaults unless ``--torchship-arg`` says otherwise. A peer that is missing or fails
to start is reported and skipped. The script prints; it does not assert.

Needs ``pip install 'torchship[bench]'``, Java 11+ for TorchServe, and ``wrk`` (optional).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from peers import (
    Endpoint,
    benchmark_texts,
    litserve_server,
    torchserve_server,
    torchship_server,
)
from peers.answers import check_answers, expected_probabilities, ratio, resolve_package, stop_on_sigterm
from serve_load import LoadResult, run_load
from torchship.serving.settings import default_torch_threads

SERVERS = ("torchship", "litserve", "torchserve", "torchserve-unbatched")
CHECK_TEXTS = 8
"""Texts each server must answer like the package itself before it is measured."""


@dataclass(frozen=True)
class Outcome:
    """One server's row: its result, or why there is none."""

    key: str
    endpoint: Endpoint | None = None
    result: LoadResult | None = None
    check: str = ""
    failure: str = ""


def main() -> None:
    args = _parse_args()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl+C, so every started server is stopped.
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="compare-servers-") as scratch:
        work = Path(args.workdir) if args.workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        package = resolve_package(args.model, work)
        texts = benchmark_texts(args.max_words or None)
        bodies = [json.dumps({"text": text}) for text in texts]
        expected = expected_probabilities(package, texts[:CHECK_TEXTS])
        _print_conditions(args, package, texts)
        outcomes = []
        for key in args.servers:
            outcome = _measure(key, package, work, args, bodies, texts[:CHECK_TEXTS], expected)
            outcomes.append(outcome)
            _print_progress(outcome)
        _print_table(outcomes)


def _start(key: str, package: Path, work: Path, args: argparse.Namespace) -> AbstractContextManager[Endpoint]:
    threads = args.torch_threads or None  # 0: each server's own default
    if key == "torchship":
        return torchship_server(package, work, args.torchship_arg, torch_threads=threads)
    if key == "litserve":
        return litserve_server(package, work, max_batch_size=16, batch_timeout_s=0.005, torch_threads=threads)
    batch = 16 if key == "torchserve" else 1
    return torchserve_server(package, work, batch_size=batch, max_batch_delay_ms=5, torch_threads=threads)


def _measure(
    key: str,
    package: Path,
    work: Path,
    args: argparse.Namespace,
    bodies: list[str],
    check_texts: Sequence[str],
    expected: list[dict[str, float]],
) -> Outcome:
    print(f"\n== {key}: starting", flush=True)
    try:
        with _start(key, package, work, args) as endpoint:
            check = check_answers(endpoint.url, check_texts, expected)
            print(f"   {endpoint.name} ({endpoint.settings}) at {endpoint.url}; answers: {check}", flush=True)
            load_dir = work / f"load-{key}"
            load_dir.mkdir(exist_ok=True)
            run_load(endpoint.url, bodies, args.concurrency, args.warmup, load_dir)
            result = run_load(endpoint.url, bodies, args.concurrency, args.duration, load_dir)
            return Outcome(key, endpoint, result, check)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a peer that cannot run is reported, and the others still measured
        return Outcome(key, failure=f"{type(exc).__name__}: {exc}")


def _print_conditions(args: argparse.Namespace, package: Path, texts: Sequence[str]) -> None:
    from torchship.store import read_config

    config = read_config(package)
    model = config.model
    words = f"first {args.max_words} words of" if args.max_words else "whole"
    print(f"package   {package} ({config.name} v{config.version}, labels {len(config.labels)})")
    print(
        f"model     {model.n_layers} layers, d_model {model.d_model}, d_ff {model.d_ff}, "
        f"vocab {model.vocab_size}, max_length {config.max_length}"
    )
    print(f"texts     {len(texts)} BBC News articles ({words} each), cycled")
    print(
        f"load      {args.concurrency} clients, {args.warmup:g}s warm-up + {args.duration:g}s measured per "
        f"server, one server at a time, on {os.cpu_count()} CPUs shared with the load generator"
    )
    threads = args.torch_threads or "each server's default number of"
    print(f"workers   1 per server, {threads} torch thread(s) each")


def _print_progress(outcome: Outcome) -> None:
    if outcome.result is not None:
        result = outcome.result
        print(
            f"   {result.throughput:.0f} req/s, p50 {result.p50 * 1e3:.1f} ms, "
            f"p99 {result.p99 * 1e3:.1f} ms, errors {result.errors} ({result.tool})",
            flush=True,
        )
    else:
        print(f"   skipped: {outcome.failure}", flush=True)


def _print_table(outcomes: Sequence[Outcome]) -> None:
    ours = next((o.result.throughput for o in outcomes if o.key == "torchship" and o.result), math.nan)
    header = f"{'server':<20} {'settings':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(f"\n{header} {'torchship/peer':>15}")
    for outcome in outcomes:
        if outcome.endpoint is None or outcome.result is None:
            print(f"{outcome.key:<20} not measured (why: above)")
            continue
        result = outcome.result
        against = "" if outcome.key == "torchship" else ratio(ours, result.throughput)
        print(
            f"{outcome.endpoint.name:<20} {outcome.endpoint.settings:<16} {result.throughput:>8.0f} "
            f"{result.p50 * 1e3:>8.1f} {result.p99 * 1e3:>8.1f} {result.errors:>7d} {against:>15}"
        )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        help="package or store reference, e.g. ./models/bbc:2 (default: ./models/bbc if it exists, else "
        "an untrained package of the demo's shape)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument(
        "--max-words",
        type=int,
        default=12,
        help="send each article's first N words (12 words: about 16 tokens); 0 sends whole articles",
    )
    parser.add_argument(
        "--servers",
        type=lambda value: [key.strip() for key in value.split(",") if key.strip()],
        default=list(SERVERS),
        help=f"comma-separated, in order (default: {','.join(SERVERS)})",
    )
    parser.add_argument(
        "--torchship-arg",
        action="append",
        default=[],
        help="extra `torchship serve` option, repeatable: --torchship-arg=--batch_size=16",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=default_torch_threads(1),
        help="intra-op torch threads of every server's one worker (default: torchship's default for "
        "one worker, the cores but one; 0: each server's own default, for the peers one per core, "
        "which loses 5-10x when the load generator shares those cores)",
    )
    parser.add_argument("--workdir", help="keep logs, archives and the built package here (default: temp)")
    args = parser.parse_args()
    unknown = [key for key in args.servers if key not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    return args


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; every server started was stopped")
        raise SystemExit(130) from None
