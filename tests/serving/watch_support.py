"""Helpers for the store watcher tests (``test_watch``, ``test_replicas``): what a server serves, as its
describe API shows it, and client threads that keep sending predictions and count what fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from serving_support import describe, wait_until

from torchship.serving import Server


def versions(server: Server, name: str = "m") -> dict[str, dict[str, Any]]:
    """``{version: describe entry}`` of ``name`` (empty when it is not registered)."""
    body = describe(server, f"/models/{name}/all")
    return {entry["modelVersion"]: entry for entry in body} if isinstance(body, list) else {}


def serves(entry: dict[str, Any]) -> bool:
    """Whether a describe entry has a loaded worker (idle or running a batch)."""
    return any(worker["status"] in ("READY", "BUSY") for worker in entry["workers"])


def switched(server: Server, version: str, name: str = "m") -> bool:
    """Whether ``version`` is the only version of ``name`` left, is the default, and serves."""
    state = versions(server, name)
    return list(state) == [version] and state[version]["isDefault"] and serves(state[version])


@dataclass
class Load:
    """Client threads sending predictions to the default version until stopped, counting failures."""

    url: str
    pause: float
    """Seconds between one thread's requests: steady traffic, not a saturating one, so that the machine
    has CPU left to load the new version (two cores in CI)."""
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(self.url, json={"text": "the team won the cup final"})
                    problem = (
                        None if response.status_code == 200 else f"{response.status_code} {response.text}"
                    )
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                with self.lock:
                    self.sent += 1
                    if problem is not None:
                        self.failed.append(problem)
                self.stop.wait(self.pause)


@contextmanager
def load(server: Server, name: str = "m", threads: int = 2, pause: float = 0.02) -> Iterator[Load]:
    """Send predictions to ``name``'s default version from ``threads`` threads while the block runs
    (it starts once a few were answered)."""
    state = Load(f"{server.urls['inference']}/predictions/{name}", pause)
    workers = [threading.Thread(target=state.run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: state.sent >= 5, what="the load to start")
        yield state
    finally:
        state.stop.set()
        for worker in workers:
            worker.join(60)
