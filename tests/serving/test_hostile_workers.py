"""The worker side under hostile and heavy traffic: payloads of every allowed size cross whole, no payload
kills a worker, spawning never blocks the event loop, and the process group's SIGTERM drains."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_handlers import MeasureAPI
from serving_support import describe, running, settings, wait_until

from torchship.serving import Server
from torchship.serving.errors import HandlerError
from torchship.serving.workers.pool import WorkerPool
from torchship.serving.workers.process import WorkerState

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    apis = [
        # response_timeout bounds how long a batch the pipe lost would hang (it did, before the framing).
        MeasureAPI(name="texts", workers=1, batch_size=32, response_timeout=15),
        MeasureAPI(name="big", workers=1, batch_size=32, response_timeout=60),
        MeasureAPI(name="hostile", workers=2, batch_size=16, max_batch_delay=200),
    ]
    with running(settings(), apis) as server:
        wait_until(lambda: all(v.serving_workers == v.target_workers for v in server.registry.all_versions()))
        yield server


def _pids(server: Server, model: str) -> set[int]:
    return {worker["pid"] for worker in describe(server, f"/models/{model}")[0]["workers"]}


# ------------------------------------------------------------------------------------- sizes (case 2)
def test_32_clients_sending_20_kb_texts_get_only_200s(server: Server) -> None:
    url = server.urls["inference"] + "/predictions/texts"
    text = ("Shares in the bank rose after strong profits. " * 500)[:20_000]
    answers: list[tuple[int, int]] = []
    deadline = time.monotonic() + 3.0

    def client(number: int) -> None:
        sent = f"{text}{number:02d}"
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                response = http.post(url, json={"text": sent})
                size = response.json().get("size", -1) if response.status_code == 200 else -1
                answers.append((response.status_code, size))

    clients = [threading.Thread(target=client, args=(number,)) for number in range(32)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert len(answers) >= 32
    assert set(answers) == {(200, 20_002)}


def test_a_batch_of_32_bodies_of_6_mb_crosses_whole_both_ways(server: Server, tmp_path: Path) -> None:
    url = server.urls["inference"] + "/predictions/big"
    flag = tmp_path / "go"
    os.mkfifo(flag)  # the handler blocks opening it until the test opens it for writing
    blocker = threading.Thread(target=lambda: httpx.post(url, json={"wait_for": str(flag)}, timeout=120))
    blocker.start()  # keeps the worker busy until all 32 wait, so that they run as one batch
    served = server.registry.get("big")
    wait_until(lambda: served.workers()[0].state is WorkerState.BUSY, 60, "the worker to be busy")
    size = 6_000_000
    plain = b"x" * size  # one object for the 31 plain bodies keeps the test's own memory down
    echoed = b"echo" + b"y" * (size - 4)
    answers: dict[int, httpx.Response] = {}

    def send(number: int) -> None:
        body = echoed if number == 0 else plain
        headers = {"content-type": "application/octet-stream"}
        answers[number] = httpx.post(url, content=body, headers=headers, timeout=120)

    senders = [threading.Thread(target=send, args=(number,)) for number in range(32)]
    for thread in senders:
        thread.start()
    wait_until(lambda: served.pending == 32, 120, "32 requests waiting")
    with open(flag, "wb"):  # releases the blocked handler
        pass
    for thread in senders:
        thread.join()
    blocker.join()
    assert sorted(response.status_code for response in answers.values()) == [200] * 32
    assert answers[0].content == echoed
    results = [answers[number].json() for number in range(1, 32)]
    assert {(result["size"], result["batch"]) for result in results} == {(size, 32)}


# ---------------------------------------------------------------------------------- payloads (case 3)
HOSTILE = [
    (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
    (b"[" + b"1" * 5000 + b"]", 400, "4300 digits"),
    (b'{"text": "caf\xe9"}', 400, "not valid UTF-8"),
    (b'{"text": "\\ud800"}', 400, "lone surrogate"),
    (b'{"text": "oops', 400, "not valid JSON"),
    (b'{"raise": "base"}', 500, "Rude"),
    (b'{"deep": 100000}', 500, "nested too deeply to send as JSON"),
]


def test_no_payload_kills_a_worker_and_its_batch_mates_get_200(server: Server) -> None:
    before = _pids(server, "hostile")
    url = server.urls["inference"] + "/predictions/hostile"
    bodies = [body for body, _, _ in HOSTILE] + [b'{"text": "fine"}'] * 8
    answers: dict[int, httpx.Response] = {}

    def send(number: int) -> None:
        headers = {"content-type": "application/json"}
        answers[number] = httpx.post(url, content=bodies[number], headers=headers, timeout=120)

    senders = [threading.Thread(target=send, args=(number,)) for number in range(len(bodies))]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    for number, (_, status, words) in enumerate(HOSTILE):
        assert answers[number].status_code == status, answers[number].text
        assert words in answers[number].json()["message"]
    fine = [answers[number] for number in range(len(HOSTILE), len(bodies))]
    assert [response.status_code for response in fine] == [200] * 8
    assert _pids(server, "hostile") == before
    assert httpx.get(server.urls["inference"] + "/ping", timeout=30).json() == {"status": "Healthy"}


# ---------------------------------------------------------------------------------- spawning (case 5)
def _pool(api: MeasureAPI) -> WorkerPool:
    return WorkerPool(
        api,
        "1",
        on_ready=lambda: None,
        on_done=lambda *_: None,
        on_lost=lambda _: None,
        on_load_failure=print,
    )


def test_worker_processes_start_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    starters: list[threading.Thread] = []
    start = SpawnProcess.start

    def recording_start(process: SpawnProcess) -> None:
        starters.append(threading.current_thread())
        start(process)

    monkeypatch.setattr(SpawnProcess, "start", recording_start)

    async def scenario() -> threading.Thread:
        pool = _pool(MeasureAPI(name="offloop"))
        pool.scale(2)
        await asyncio.wait_for(pool.wait_ready(), 120)
        await pool.stop(10)
        return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert len(starters) == 2 and loop_thread not in starters


def test_workers_stopped_before_their_process_started_never_run() -> None:
    async def scenario() -> list[Any]:
        pool = _pool(MeasureAPI(name="cancelled"))
        pool.scale(3)
        pool.scale(0)  # in the same loop turn: no process has been watched yet
        await asyncio.wait_for(pool.stop(10), 30)
        return pool.workers

    assert asyncio.run(scenario()) == []
    assert not [p for p in multiprocessing.active_children() if "-cancelled-" in p.name]


def test_a_process_that_cannot_start_is_a_load_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_start(process: SpawnProcess) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(SpawnProcess, "start", failing_start)

    async def scenario() -> str | None:
        pool = _pool(MeasureAPI(name="nostart"))
        pool.scale(1)
        with pytest.raises(HandlerError, match="could not start"):
            await asyncio.wait_for(pool.wait_ready(), 30)
        await pool.stop(10)
        return pool.load_error

    assert "the worker process could not start (OSError: [Errno 24] Too many open files)" in (
        asyncio.run(scenario()) or ""
    )


def test_a_worker_signalled_while_it_starts_still_loads() -> None:
    async def scenario() -> tuple[int, int | None]:
        pool = _pool(MeasureAPI(name="early"))
        pool.scale(1)
        [worker] = pool.workers
        deadline = time.monotonic() + 60
        while worker.pid is None and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # poll for the pid, with a deadline
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGTERM)  # long before it has imported its modules
        os.kill(worker.pid, signal.SIGINT)
        await asyncio.wait_for(pool.wait_ready(), 120)
        alive = (worker.pid, worker.exitcode)
        await pool.stop(10)
        return alive

    pid, exitcode = asyncio.run(scenario())
    assert exitcode is None and pid > 0


# ------------------------------------------------------------------------------- SIGTERM (case 8)
_SCRIPT = """
    import sys
    sys.path.insert(0, {tests!r})
    from serving_handlers import SlowAPI

    if __name__ == "__main__":
        SlowAPI(name="slow", workers=2, batch_size=8, max_batch_delay=100).start(
            port=0, management_port=0, metrics_port=0, token_auth=False
        )
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def _metric(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_sigterm_to_the_process_group_drains_like_the_servers_own(tmp_path: Path) -> None:
    script = tmp_path / "serve_slow.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(tests=str(TESTS))))
    log = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        urls: dict[str, str] = {}
        while len(urls) < 3:
            match = re.match(r"torchship: (inference|management|metrics)\s+(\S+)", lines.get(timeout=120))
            if match:
                urls[match[1]] = match[2].removesuffix("/metrics")
        management = httpx.Client(base_url=urls["management"], timeout=30)
        ready = lambda: [w["status"] for w in management.get("/models/slow").json()[0]["workers"]]  # noqa: E731
        wait_until(lambda: ready() == ["READY", "READY"], 120, "two workers")
        workers = _children(process.pid)
        answers: list[int] = []

        def call() -> None:
            response = httpx.post(urls["inference"] + "/predictions/slow", json={"sleep": 2}, timeout=120)
            answers.append(response.status_code)

        clients = [threading.Thread(target=call) for _ in range(16)]
        for thread in clients:
            thread.start()

        def accepted() -> float:  # dispatched to a worker, or waiting for one
            dispatched = _metric(urls["metrics"], "torchship_queue_wait_seconds_count")
            return dispatched + _metric(urls["metrics"], "torchship_queue_depth")

        wait_until(lambda: accepted() == 16, 60, "16 requests in flight")
        os.killpg(process.pid, signal.SIGTERM)  # what systemd and Kubernetes do
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen |= _children(process.pid)
            try:
                process.wait(timeout=0.01)  # returns as soon as the server exits; else sample again
                break
            except subprocess.TimeoutExpired:
                continue
        for thread in clients:
            thread.join()
        assert process.returncode == 0
        assert sorted(answers) == [200] * 16
        assert seen <= workers, f"new processes during the shutdown: {seen - workers}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
