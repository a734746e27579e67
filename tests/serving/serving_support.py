"""Helpers for the serving tests: tiny text-classifier packages, a fixed linear model, and a real server on
port 0 in a background thread. Test modules import these from here, never from ``conftest``: two
directories have a ``conftest.py``, and a worker process that imports a test module could find the other
one first on its sys.path."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from torchship.data.tokenizer import train_tokenizer
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.serving import ModelAPI, ModelSettings, Server, ServerSettings, ServerThread
from torchship.store import ModelStore, PackageConfig, write_package

LABELS = ("business", "sport", "tech")
TEXTS = [
    "shares in the bank rose after strong profits",
    "the market fell as oil prices climbed",
    "the team won the cup final with a late goal",
    "the coach praised his players after the match",
    "a new phone chip makes computers faster",
    "the software update fixes a network bug",
]


def publish_classifier(root: Path, name: str, seed: int, head_scale: float = 1.0, **windows: Any) -> int:
    """Publish a small untrained classifier (weights from ``seed``) as the next version of ``name``;
    ``windows`` sets PackageConfig's ``long_texts`` and ``window_overlap``. ``head_scale`` multiplies the
    classification head's weights: an untrained model's answers are near uniform otherwise."""
    tokenizer = train_tokenizer(TEXTS * 3, vocab_size=120, max_length=48)
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=len(LABELS),
        d_model=16,
        n_heads=2,
        n_layers=1,
        d_ff=32,
        max_length=48,
    )
    model = TransformerClassifier(config).eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    store = ModelStore(root)
    version = (store.latest(name) or 0) + 1
    package = PackageConfig(
        name=name,
        version=version,
        labels=LABELS,
        model=config,
        max_length=windows.pop("max_length", 48),
        **windows,
    )
    return store.publish(
        name,
        lambda tmp: write_package(tmp, config=package, state_dict=model.state_dict(), tokenizer=tokenizer),
        version,
    )


def sum_and_difference() -> torch.nn.Module:
    """A 2 → 2 linear layer with fixed weights: y = [x0 + x1, x0 - x1]."""
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    return layer.eval()


def settings(**changes: Any) -> ServerSettings:
    """Server settings for tests: every port 0, no snapshot, one worker per version unless asked (the
    default, one per core, would start twice the processes on a 2-core machine for nothing these tests
    check; ``test_lifecycle`` serves with the real defaults), and token authorization off: the tests of
    the other APIs would all carry a key for nothing, while ``test_auth`` and ``test_lifecycle`` run with
    the real default (``auth_settings``)."""
    base: dict[str, Any] = dict(
        inference_port=0,
        management_port=0,
        metrics_port=0,
        use_snapshot=False,
        model_defaults=ModelSettings(workers=1),
        token_auth=False,
    )
    base.update(changes)
    return ServerSettings(**base)


def auth_settings(key_file: Path, **changes: Any) -> ServerSettings:
    """:func:`settings` with token authorization at its real default (on), keys written to ``key_file``."""
    return settings(token_auth=True, key_file=key_file, **changes)


def read_key(key_file: Path, kind: str) -> str:
    """A key from a server's key file (``management``, ``inference`` or ``API``), as a client reads it."""
    return str(json.loads(key_file.read_text(encoding="utf-8"))[kind]["key"])


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def running(server_settings: ServerSettings, apis: list[ModelAPI] | None = None) -> Iterator[Server]:
    """Run a server in a background thread until the block ends."""
    with ServerThread(Server(server_settings, apis=apis or [])) as server:
        yield server


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # polling interval, not synchronisation: the condition decides


def wait_ready(server: Server, timeout: float = 120.0) -> None:
    """Wait until every registered version has all its workers loaded. A version whose workers cannot
    load fails the test at once with the reason (the server itself would retry with back-off forever)."""

    def ready() -> bool:
        versions = server.registry.all_versions()
        for v in versions:
            if v.load_error is not None and v.serving_workers == 0:
                raise AssertionError(f'model "{v.name}" version {v.version} cannot load: {v.load_error}')
        return all(v.serving_workers >= v.target_workers for v in versions)

    wait_until(ready, timeout, "workers to load")


def describe(server: Server, path: str) -> Any:
    return httpx.get(server.urls["management"] + path, timeout=30).json()


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, 0 if absent."""
    text = httpx.get(server.urls["metrics"] + "/metrics", timeout=30).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, value = line.rsplit(" ", 1)
            found = sample[len(name) :].strip("{}").split(",")
            if all(part in found for part in wanted.split(",") if part):
                return float(value)
    return 0.0


def stdout_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines ``process`` prints, as a reader thread receives them (``get(timeout=...)`` waits for the
    next one: no polling, and the pipe never fills up)."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def start_logged(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start ``command`` in its own session with stdout and stderr in ``cwd/stdout.log`` and
    ``cwd/stderr.log`` (files, not pipes nobody reads); the process and both paths."""
    stdout, stderr = cwd / "stdout.log", cwd / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return process, stdout, stderr
