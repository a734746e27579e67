"""torchship against real TorchServe on the same ``.mar``: one archive, both servers, side by side in one run.

    python benchmarks/compare_mar.py                          # ./models/bbc, or an untrained stand-in
    python benchmarks/compare_mar.py --model ./models/bbc:2 --concurrency 1,16,64 --duration 15
    python benchmarks/compare_mar.py --batch-size 1           # both without batching

The model package and TorchServe handler of ``compare_servers.py`` (``peers/torchserve_handler.py``, a
custom ``BaseHandler``) are packed once, with the real ``torch-model-archiver``, into ``bbc.mar``. That one
file is served by TorchServe 0.12 (``torchserve --start --foreground``: Java frontend, Python worker) and
by ``torchship serve --model_store DIR --models bbc.mar`` (no Java), one server at a time, each with the
same settings from ``config.properties``' ``models=`` entry: one worker, batches of up to
``--batch-size`` requests within ``--batch-delay`` ms. Each server must first answer the check texts like
the package itself; then it gets a short warm-up and ``--duration`` seconds of closed-loop load at each
``--concurrency`` (``serve_load.run_load``: wrk when installed). The table gives req/s, p50 and p99 per
server and concurrency, and torchship's ratios. A server that cannot start is reported and skipped. The
script prints; it does not assert.

Needs ``pip install 'torchship[bench,torchserve]'`` and ``torch-model-archiver``, Java 11+ for TorchServe,
and ``wrk`` (optional).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import peers
from peers import benchmark_texts, free_port
from peers.answers import check_answers, expected_probabilities, ratio, resolve_package, stop_on_sigterm
from peers.processes import ServerProcess, StartError, base_env, post_ok, wait_until_ready
from peers.servers import SAMPLE_BODY, package_version
from serve_load import LoadResult, run_load
from torchship.serving.settings import default_torch_threads

SERVERS = ("torchserve", "torchship")
CHECK_TEXTS = 8
NAME = "bbc"
_HANDLER = Path(peers.__file__).with_name("torchserve_handler.py")
_PACKAGE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class Outcome:
    """One server's results per concurrency, or why there are none."""

    key: str
    name: str = ""
    check: str = ""
    results: dict[int, LoadResult] = field(default_factory=dict)
    failure: str = ""


def main() -> None:
    args = _parse_args()
    stop_on_sigterm()  # stop every started server on `kill`
    with tempfile.TemporaryDirectory(prefix="compare-mar-") as scratch:
        work = Path(args.workdir) if args.workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        package = resolve_package(args.model, work)
        archive = build_archive(package, work / "model_store")
        texts = benchmark_texts(args.max_words or None)
        bodies = [json.dumps({"text": text}) for text in texts]
        expected = expected_probabilities(package, texts[:CHECK_TEXTS])
        _print_conditions(args, package, archive, texts)
        outcomes = [
            _measure(key, archive, work, args, bodies, texts[:CHECK_TEXTS], expected) for key in SERVERS
        ]
        _print_table(outcomes, args.concurrency)


def build_archive(package: Path, model_store: Path) -> Path:
    """``<model_store>/bbc.mar``: the package's files and the TorchServe handler, made by the archiver."""
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    model_store.mkdir(parents=True, exist_ok=True)
    command = [str(archiver), "--model-name", NAME, "--version", "1.0", "--handler", str(_HANDLER)]
    command += ["--extra-files", ",".join(str(package / file) for file in _PACKAGE_FILES)]
    command += ["--export-path", str(model_store), "--force"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise SystemExit(f"torch-model-archiver failed:\n{result.stdout}{result.stderr}")
    return model_store / f"{NAME}.mar"


def _measure(
    key: str,
    archive: Path,
    work: Path,
    args: argparse.Namespace,
    bodies: list[str],
    check_texts: Sequence[str],
    expected: list[dict[str, float]],
) -> Outcome:
    print(f"\n== {key}: starting on {archive.name}", flush=True)
    outcome = Outcome(key)
    server = _torchserve(archive, work, args) if key == "torchserve" else _torchship(archive, work, args)
    try:
        with server as (name, url):
            outcome.name = name
            outcome.check = check_answers(url, check_texts, expected)
            print(f"   {name} at {url}; answers: {outcome.check}", flush=True)
            for concurrency in args.concurrency:
                load_dir = work / f"load-{key}-{concurrency}"
                load_dir.mkdir(exist_ok=True)
                run_load(url, bodies, concurrency, args.warmup, load_dir)
                result = run_load(url, bodies, concurrency, args.duration, load_dir)
                outcome.results[concurrency] = result
                print(
                    f"   {concurrency:>3} clients: {result.throughput:.0f} req/s, p50 "
                    f"{result.p50 * 1e3:.1f} ms, p99 {result.p99 * 1e3:.1f} ms, errors {result.errors} "
                    f"({result.tool})",
                    flush=True,
                )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a server that cannot run is reported, and the other still measured
        outcome.failure = f"{type(exc).__name__}: {exc}"
        print(f"   skipped: {outcome.failure}", flush=True)
    return outcome


def _properties(archive: Path, ports: dict[str, int], args: argparse.Namespace) -> str:
    """One ``config.properties`` for either server: addresses, the store, and the model's settings."""
    models = {
        NAME: {
            "1.0": {
                "defaultVersion": True,
                "marName": archive.name,
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": args.batch_size,
                "maxBatchDelay": args.batch_delay,
                "responseTimeout": 120,
            }
        }
    }
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        f"model_store={archive.parent}",
        f"load_models={archive.name}",
        "default_workers_per_model=1",
        "disable_token_authorization=true",
        f"models={json.dumps(models)}",
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def _torchserve(archive: Path, work: Path, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """TorchServe on ``archive``, everything it writes under ``work/torchserve``."""
    if shutil.which("java") is None:
        raise StartError("TorchServe needs Java 11 or newer on PATH (Debian: apt-get install openjdk-17-jre)")
    home = work / "torchserve"
    for folder in ("tmp", "logs"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    config = home / "config.properties"
    # TorchServe alone also opens two gRPC listeners: on loopback too, on ports of their own.
    grpc = [f"grpc_{api}_port={free_port()}" for api in ("inference", "management")]
    grpc += ["grpc_inference_address=127.0.0.1", "grpc_management_address=127.0.0.1"]
    config.write_text(_properties(archive, ports, args) + "\n".join(grpc) + "\n", encoding="utf-8")
    tmp, logs = str(home / "tmp"), str(home / "logs")
    env = base_env(args.torch_threads or None, TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=logs, METRICS_LOCATION=logs)
    torchserve = str(Path(sys.executable).with_name("torchserve"))
    command = [
        torchserve,
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--ts-config",
        str(config),
    ]
    process = ServerProcess(command, home / "torchserve.log", cwd=home, env=env)
    url = f"http://127.0.0.1:{ports['inference']}/predictions/{NAME}"
    try:
        wait_until_ready("TorchServe", post_ok(url, SAMPLE_BODY), process, 240.0)
        yield f"TorchServe {package_version('torchserve')}", url
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [torchserve, "--stop"], env=env, cwd=home, capture_output=True, timeout=60, check=False
            )
        process.stop(stop_signal=None)


@contextmanager
def _torchship(archive: Path, work: Path, args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """``torchship serve --ts_config FILE``: the same kind of config.properties, the same archive."""
    home = work / "torchship"
    home.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    config = home / "config.properties"
    config.write_text(_properties(archive, ports, args), encoding="utf-8")
    command = [sys.executable, "-m", "torchship", "serve", "--ts_config", str(config), "--no_snapshot"]
    command += ["--archive_cache", str(home / "archives"), "--graceful_timeout", "5"]
    if args.torch_threads:
        command += ["--torch_threads", str(args.torch_threads)]
    process = ServerProcess(
        command, home / "torchship.log", cwd=home, env=base_env(args.torch_threads or None)
    )
    url = f"http://127.0.0.1:{ports['inference']}/predictions/{NAME}"
    try:
        wait_until_ready("torchship", post_ok(url, SAMPLE_BODY), process, 240.0)
        yield f"torchship {package_version('torchship')}", url
    finally:
        process.stop()  # SIGTERM: torchship finishes in-flight requests, then stops its workers


def _print_conditions(args: argparse.Namespace, package: Path, archive: Path, texts: Sequence[str]) -> None:
    from torchship.store import read_config

    config = read_config(package)
    model = config.model
    words = f"first {args.max_words} words of" if args.max_words else "whole"
    print(f"archive   {archive} ({archive.stat().st_size / 1e6:.1f} MB) from {package} (v{config.version})")
    print(
        f"model     {model.n_layers} layers, d_model {model.d_model}, d_ff {model.d_ff}, "
        f"vocab {model.vocab_size}, labels {len(config.labels)}"
    )
    print(f"texts     {len(texts)} BBC News articles ({words} each), cycled")
    batching = (
        f"batches of up to {args.batch_size} within {args.batch_delay} ms"
        if args.batch_size > 1
        else "no batching"
    )
    threads = args.torch_threads or "each server's default number of"
    print(f"workers   1 per server, {threads} torch thread(s), {batching} (config.properties models=)")
    clients = ", ".join(str(c) for c in args.concurrency)
    print(
        f"load      {clients} clients, {args.warmup:g}s warm-up + {args.duration:g}s measured each, one "
        f"server at a time, on {os.cpu_count()} CPUs shared with the load generator"
    )


def _print_table(outcomes: Sequence[Outcome], concurrencies: Sequence[int]) -> None:
    header = f"{'clients':>7}  {'server':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(f"\n{header} {'torchship/TorchServe':>22}")
    theirs = next((o for o in outcomes if o.key == "torchserve"), None)
    for concurrency in concurrencies:
        for outcome in outcomes:
            result = outcome.results.get(concurrency)
            if result is None:
                print(f"{concurrency:>7}  {outcome.key:<20} not measured {outcome.failure}")
                continue
            ratios = ""
            baseline = theirs.results.get(concurrency) if theirs is not None else None
            if outcome.key == "torchship" and baseline is not None:
                ratios = f"{ratio(result.throughput, baseline.throughput)} req/s, "
                ratios += f"{ratio(result.p50, baseline.p50)} p50"
            print(
                f"{concurrency:>7}  {outcome.name:<20} {result.throughput:>8.0f} {result.p50 * 1e3:>8.1f} "
                f"{result.p99 * 1e3:>8.1f} {result.errors:>7d} {ratios:>22}"
            )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="package or store reference (default: ./models/bbc, else a stand-in)")
    parser.add_argument(
        "--concurrency",
        type=lambda value: [int(item) for item in value.split(",") if item.strip()],
        default=[1, 64],
        help="comma-separated client counts, each measured on both servers (default: 1,64)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--batch-size", type=int, default=16, help="the archive's batchSize on both servers")
    parser.add_argument("--batch-delay", type=int, default=5, help="maxBatchDelay in ms on both servers")
    parser.add_argument(
        "--max-words", type=int, default=12, help="send each article's first N words; 0 sends whole articles"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=default_torch_threads(1),
        help="intra-op torch threads of each server's one worker (default: torchship's default for one "
        "worker; 0: each server's own default)",
    )
    parser.add_argument("--workdir", help="keep logs, the archive and the built package here (default: temp)")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; every server started was stopped")
        raise SystemExit(130) from None
