"""Soak: ``torchship serve`` near capacity with good and bad traffic, killed workers and a model that comes
and goes, for minutes; then what failed and how the memory moved.

    python benchmarks/soak.py                                # 10 minutes (docs/performance.md's figures)
    python benchmarks/soak.py --duration 60 --kill_every 20  # a quick check

It starts ``torchship serve`` (a subprocess in its own session, every listener on 127.0.0.1 port 0) on a
store holding the demo-sized stand-in model (``benchmarks/peers/package.py``: d_model 128, 2 layers, 16k
vocabulary, untrained weights) or ``--model``, with ``--workers`` workers, and for ``--duration`` seconds
keeps ``--concurrency`` connections busy with the weighted mix of ``soak_traffic.KINDS``: valid texts
(short, medium and whole BBC articles, JSON, plain text and v2 batches) and hostile ones (malformed JSON,
deep nesting, oversized bodies, bad v2 shapes, lone surrogates, unknown models, calls without the key).
Meanwhile it kills one worker of the model with SIGKILL every ``--kill_every`` seconds, and registers a
second model name and unregisters it again every ``--cycle_every`` seconds while requests to it go on.

It prints the requests sent, the answers by kind and status, the failures (good requests not answered
200, and undocumented 5xx to anything), split into those in flight when a worker was killed and the
others, and the RSS of the server and of the model's workers after the warm-up and at the end (the
workers then alive: replacements of killed ones included). The exit status is 1 when anything failed
outside a kill window or the server died; the RSS growth is reported against its goal (5%), not
enforced: on a shared machine it is a figure to read, not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from peers.processes import ServerProcess, StartError
from soak_traffic import EXTRA, Tally, Target, run_load
from torchship.store import read_config

RSS_GOAL = 0.05


# ------------------------------------------------------------------------------- the server
class Soak:
    """The server under soak, and the management calls the soak makes on the side."""

    def __init__(self, process: ServerProcess, urls: dict[str, str], key_file: Path, model: str) -> None:
        self.process = process
        self.urls = urls
        self.key_file = key_file
        self.model = model
        self.victims: list[tuple[int, float]] = []
        """RSS and age (seconds) of each worker just before it was killed: a worker that leaks grows with
        its age, and the workers alive at the end are younger than those measured after the warm-up."""

    def keys(self) -> dict[str, str]:
        if not self.key_file.exists():
            return {}
        return {kind: entry["key"] for kind, entry in json.loads(self.key_file.read_text()).items()}

    def manage(self, method: str, path: str, timeout: float = 300.0, **params: str) -> httpx.Response:
        key = self.keys().get("management")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(
            method, self.urls["management"] + path, params=params, headers=headers, timeout=timeout
        )

    def worker_pids(self) -> list[int]:
        """Pids of the model's loaded workers that are children of the server (never anything else)."""
        [version] = self.manage("GET", f"/models/{self.model}").json()
        pids = [w["pid"] for w in version["workers"] if w["status"] in ("READY", "BUSY") and w["pid"]]
        return [pid for pid in pids if _parent(pid) == self.process.process.pid]

    def kill_a_worker(self, rng: random.Random) -> tuple[int, float] | None:
        """SIGKILL one of the model's workers; its pid and the moment just before the signal."""
        pids = self.worker_pids()
        if not pids:
            return None
        pid = rng.choice(pids)
        self.victims.append((_rss(pid), _age(pid)))
        when = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return pid, when

    def rss(self) -> tuple[int, int, int]:
        """Server RSS, the workers' total RSS, and how many workers, in bytes."""
        pids = self.worker_pids()
        return _rss(self.process.process.pid), sum(_rss(pid) for pid in pids), len(pids)

    def wait_workers(self, count: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < count:
            if time.monotonic() > deadline or self.process.exited():
                raise StartError(f"the model's workers did not come back:\n{self.process.log_tail()}")
            time.sleep(0.2)  # polling interval; the condition decides


def _parent(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _age(pid: int) -> float:
    """Seconds since ``pid`` started (0 when it is gone)."""
    try:
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return uptime - started / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _urls(process: ServerProcess, timeout: float = 300.0) -> dict[str, str]:
    """The listeners' URLs, from the lines ``torchship serve`` prints once it listens."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"torchship: (inference|management|metrics)\s+(\S+)")
    while time.monotonic() < deadline:
        found = dict(pattern.findall(process.log_path.read_text(errors="replace")))
        if len(found) == 3:
            return {name: url.removesuffix("/metrics") for name, url in found.items()}
        if process.exited():
            break
        time.sleep(0.2)  # polling interval; the log decides
    raise StartError(f"torchship serve printed no URLs:\n{process.log_tail()}")


def _address(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.host, int(parsed.port or 80)


# -------------------------------------------------------------------------------------- phases
async def _chaos(soak: Soak, seconds: float, tally: Tally, args: argparse.Namespace) -> None:
    """Kill a worker every ``kill_every`` seconds and, independently, register or unregister EXTRA every
    half ``cycle_every`` (a synchronous registration takes seconds: it must not delay a kill)."""
    start = time.monotonic()
    await asyncio.gather(_kills(soak, start, seconds, tally, args), _cycles(soak, start, seconds, args))


async def _kills(soak: Soak, start: float, seconds: float, tally: Tally, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    due = start + args.kill_every
    while due < start + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        killed = await asyncio.to_thread(soak.kill_a_worker, rng)
        if killed is not None:
            tally.kills.append(killed[1])
        victim = killed[0] if killed else "(none loaded)"
        print(f"  {time.monotonic() - start:6.1f}s  kill -9 worker {victim}", flush=True)
        due += args.kill_every


async def _cycles(soak: Soak, start: float, seconds: float, args: argparse.Namespace) -> None:
    registered = False
    due = start + args.cycle_every / 2
    while due < start + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        registered = await asyncio.to_thread(_cycle, soak, registered)
        state = "registered" if registered else "unregistered"
        print(f"  {time.monotonic() - start:6.1f}s  {EXTRA} {state}", flush=True)
        due += args.cycle_every / 2
    if registered:
        await asyncio.to_thread(_cycle, soak, registered)


def _cycle(soak: Soak, registered: bool) -> bool:
    if registered:
        answer = soak.manage("DELETE", f"/models/{EXTRA}")
    else:
        answer = soak.manage(
            "POST", "/models", url=soak.model, model_name=EXTRA, initial_workers="1", synchronous="true"
        )
    if answer.status_code >= 300:
        print(f"  {EXTRA}: {answer.status_code} {answer.text[:200]}", flush=True)
        return registered
    return not registered


def _probe_giant_shapes(target: Target) -> bool:
    """Whether the server refuses a shape claiming a million empty rows at once (else the soak sends none
    of the 10**9-row ones, which would exhaust this machine's memory on such a server)."""
    host, port = target.inference
    document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [10**6, 0], "data": []}]}
    start = time.monotonic()
    answer = httpx.post(f"http://{host}:{port}/v2/models/{target.model}/infer", json=document, timeout=60)
    refused = 400 <= answer.status_code < 500 and time.monotonic() - start < 2.0
    if not refused:
        print(f"WARNING: a 10**6-row empty v2 shape got {answer.status_code}; sending 10**4-row ones instead")
    return refused


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    args = _parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchship-soak-"))
    try:
        return _soak(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _soak(args: argparse.Namespace, work: Path) -> int:
    from peers.package import benchmark_texts, make_benchmark_package

    store = work / "store"
    if args.model:
        package = Path(args.model).resolve()
        name = read_config(package).name
        shutil.copytree(package, store / name / "1")
    else:
        print("building the demo-sized stand-in package (d_model 128, 2 layers, 16k vocab, untrained)")
        name = read_config(make_benchmark_package(store)).name
    texts = benchmark_texts()
    command = [sys.executable, "-m", "torchship", "serve", "--store", str(store), "--no_snapshot"]
    command += ["--inference_port", "0", "--management_port", "0", "--metrics_port", "0"]
    command += ["--workers", str(args.workers), "--graceful_timeout", "10"]
    process = ServerProcess(command, work / "serve.log", cwd=work)  # keys land in work/key_file.json
    try:
        soak = Soak(process, _urls(process), work / "key_file.json", name)
        soak.wait_workers(args.workers)
        target = Target(
            _address(soak.urls["inference"]), _address(soak.urls["management"]), name, soak.keys()
        )
        target.giant_shapes = _probe_giant_shapes(target)
        print(f"warm-up: {args.warmup:g}s at concurrency {args.concurrency}", flush=True)
        asyncio.run(run_load(target, texts, args.warmup, Tally(), args.concurrency, args.seed))
        soak.wait_workers(args.workers)
        rss_start = soak.rss()
        tally = Tally()
        print(
            f"soak: {args.duration:g}s at concurrency {args.concurrency}, "
            f"kill -9 every {args.kill_every:g}s, {EXTRA} cycled every {args.cycle_every:g}s",
            flush=True,
        )
        began = time.monotonic()
        asyncio.run(_soak_phase(soak, target, texts, tally, args))
        elapsed = time.monotonic() - began
        died = process.exited()
        if not died:
            soak.wait_workers(args.workers)
            rss_end = soak.rss()
        _report(tally, elapsed, rss_start, None if died else rss_end, args)
        if soak.victims:
            shown = ", ".join(f"{rss / 2**20:.0f} MiB at {age:.0f}s" for rss, age in soak.victims)
            print(f"each killed worker's RSS just before its kill, in order: {shown}")
        if died:
            print(f"FAIL: the server exited:\n{process.log_tail()}")
        return 1 if died or tally.failure_count else 0
    finally:
        process.stop()


async def _soak_phase(
    soak: Soak, target: Target, texts: list[str], tally: Tally, args: argparse.Namespace
) -> None:
    await asyncio.gather(
        run_load(target, texts, args.duration, tally, args.concurrency, args.seed),
        _chaos(soak, args.duration, tally, args),
    )


def _report(
    tally: Tally,
    elapsed: float,
    rss_start: tuple[int, int, int],
    rss_end: tuple[int, int, int] | None,
    args: argparse.Namespace,
) -> None:
    total = sum(tally.sent.values())
    good = sum(count for (kind, _), count in tally.by_kind.items() if kind.startswith(("good", "extra")))
    print(
        f"\nrequests sent: {total} in {elapsed:.0f}s ({total / elapsed:.0f}/s); "
        f"good {good}, hostile {total - good}"
    )
    print(
        "answered by status: "
        + ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(tally.statuses.items()))
    )
    for kind in sorted(tally.sent):
        answers = ", ".join(f"{s or 'none'}: {n}" for (k, s), n in sorted(tally.by_kind.items()) if k == kind)
        print(f"  {kind:<24} {answers}")
    print(
        f"good requests failed in flight when a worker was killed: {tally.good_failed_in_kill} "
        f"({len(tally.kills)} kills)"
    )
    print(
        f"failures outside a kill window (goal 0): {tally.failure_count} (good requests not answered "
        "200, or an undocumented 5xx)"
    )
    for failure in tally.failures:
        print(f"  {failure}")
    if tally.refused_ok:
        print(
            f"hostile requests answered 2xx: {tally.refused_ok} (calls without the key: is token auth off?)"
        )
    for label, index in (("server", 0), (f"workers ({rss_start[2]})", 1)):
        start = rss_start[index]
        if rss_end is None:
            print(f"{label} RSS: start {start / 2**20:.0f} MiB, end: the server died")
            continue
        end = rss_end[index]
        growth = (end - start) / start if start else 0.0
        verdict = "ok" if growth <= RSS_GOAL else "above the goal"
        sizes = f"start {start / 2**20:.0f} MiB, end {end / 2**20:.0f} MiB"
        print(f"{label} RSS: {sizes}, {growth:+.1%} (goal <= {RSS_GOAL:.0%}: {verdict})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of soak after the warm-up")
    parser.add_argument(
        "--warmup", type=float, default=20.0, help="seconds of the same load before measuring"
    )
    parser.add_argument("--concurrency", type=int, default=48, help="connections kept busy")
    parser.add_argument(
        "--kill_every", type=float, default=60.0, help="seconds between two kill -9 of a worker"
    )
    parser.add_argument(
        "--cycle_every", type=float, default=60.0, help=f"seconds per register/unregister of {EXTRA}"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers of the model (one is killed at a time)"
    )
    parser.add_argument("--model", help="a package directory to serve (default: the demo-sized stand-in)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the traffic mix and the choice of victims")
    return parser


if __name__ == "__main__":
    sys.exit(main())
