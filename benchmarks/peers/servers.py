"""Start torchship, LitServe or TorchServe on one model package; each yields where to POST a text.

    with litserve_server(package, workdir, max_batch_size=16, torch_threads=1) as endpoint:
        httpx.post(endpoint.url, json={"text": "Shares rose after the results."})

Every server listens on 127.0.0.1 only, on ports picked free just before it starts, runs in its own
process session, and is stopped with everything it spawned when the ``with`` block ends, also on errors.
A server counts as started once it answers a real prediction: health routes answer before the model has
loaded.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from peers.processes import ServerProcess, StartError, base_env, free_port, post_ok, wait_until_ready

__all__ = ["SAMPLE_BODY", "Endpoint", "litserve_server", "package_version", "torchship_server"]

SAMPLE_BODY = json.dumps({"text": "Shares in the bank rose after it reported record profits."}).encode()
"""What the readiness probe sends."""

_LITSERVE_SCRIPT = Path(__file__).with_name("litserve_server.py")


@dataclass(frozen=True)
class Endpoint:
    """A running server: its display name, its settings and the URL that takes ``{"text": ...}``."""

    name: str
    settings: str
    url: str


def package_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"?"``."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


@contextmanager
def torchship_server(
    package: Path,
    workdir: Path,
    extra_args: Sequence[str] = (),
    torch_threads: int | None = None,
    deadline_s: float = 180.0,
) -> Iterator[Endpoint]:
    """``torchship serve --model PACKAGE`` at its defaults but with one worker, as the peers get, plus
    ``extra_args`` (e.g. ``--batch_size=16``, or ``--workers=2``).

    ``torch_threads``: ``--torch_threads`` (None: torchship's default, the cores but one).
    """
    from torchship.store import read_config

    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    command = [sys.executable, "-m", "torchship", "serve", "--model", str(package)]
    for name, port in ports.items():
        command += [f"--{name}_port", str(port)]
    command += ["--no_snapshot", "--graceful_timeout", "5"]
    command += ["--workers", "1"]  # one worker per server, like the peers; extra_args may say otherwise
    command += ["--torch_threads", str(torch_threads)] if torch_threads is not None else []
    command += extra_args
    url = f"http://127.0.0.1:{ports['inference']}/predictions/{read_config(package).name}"
    process = ServerProcess(command, workdir / "torchship.log", cwd=workdir, env=base_env(torch_threads))
    try:
        wait_until_ready("torchship", post_ok(url, SAMPLE_BODY), process, deadline_s)
        settings = " ".join(extra_args) or "defaults"  # batch size and delay: torchship's own
        yield Endpoint(f"torchship {package_version('torchship')}", settings, url)
    finally:
        process.stop()  # SIGTERM: torchship finishes in-flight requests, then stops its workers


@contextmanager
def litserve_server(
    package: Path,
    workdir: Path,
    max_batch_size: int = 16,
    batch_timeout_s: float = 0.005,
    torch_threads: int | None = None,
    deadline_s: float = 180.0,
) -> Iterator[Endpoint]:
    """LitServe with one inference worker and one API server, batching ``max_batch_size`` requests.

    ``torch_threads``: the worker's intra-op threads (None: torch's default, one per core).
    """
    if importlib.util.find_spec("litserve") is None:
        raise StartError("LitServe is not installed: pip install 'litserve>=0.2.19,<0.3'")
    port = free_port()
    command = [sys.executable, str(_LITSERVE_SCRIPT), "--model", str(package), "--port", str(port)]
    command += ["--max_batch_size", str(max_batch_size), "--batch_timeout", str(batch_timeout_s)]
    process = ServerProcess(command, workdir / "litserve.log", cwd=workdir, env=base_env(torch_threads))
    url = f"http://127.0.0.1:{port}/predict"
    try:
        wait_until_ready("LitServe", post_ok(url, SAMPLE_BODY), process, deadline_s)
        settings = f"batch {max_batch_size}, {batch_timeout_s * 1000:g} ms"
        yield Endpoint(f"LitServe {package_version('litserve')}", settings, url)
    finally:
        # LitServe 0.2.19 shuts down on SIGINT (KeyboardInterrupt) but ignores SIGTERM.
        process.stop(signal.SIGINT)
