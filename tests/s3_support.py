"""FIXTURE READY. A real S3-protocol server for the tests: moto's standalone server in a separate process.

One server per test session, on 127.0.0.1 and a port the operating system picks (``moto_server -p 0``
prints it). While it runs, the process environment points every S3 client at it (``AWS_ENDPOINT_URL``,
fake keys, a region), so code under test and the servers and subprocesses it starts find it the way they
would find real S3 or MinIO: through the usual environment, no extra settings.

    def test_publish(s3_url: str) -> None:          # s3://<a fresh empty bucket>/models
        publish_to_s3(s3_url, "news", package_dir)   # a local package directory -> the next version
        ...

    def test_other(s3_server: S3Server) -> None:     # the server itself: endpoint, env, make_bucket()
        url = f"s3://{s3_server.make_bucket()}/store"

The fixtures (``s3_server``, session-scoped; ``s3_url``, a fresh bucket per test) are visible in every
test directory through ``tests/conftest.py``; import the helpers as ``from s3_support import S3Server,
make_bucket, publish_to_s3`` (``tests/`` is on sys.path through that conftest).

CI needs nothing else: the server is ``moto[server]`` from the dev extra, started here.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["S3Server", "make_bucket", "publish_to_s3", "s3_server", "s3_url", "start_s3_server"]

START_TIMEOUT = 60.0
"""Seconds moto's server may take to start (it imports every mocked service's backend)."""

_RUNNING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
_BUCKETS = itertools.count(1)


@dataclass
class S3Server:
    """A running moto server and the environment that points S3 clients at it."""

    endpoint: str
    """``http://127.0.0.1:<port>``."""
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    """The variables set while it runs (``AWS_ENDPOINT_URL``, keys, region): pass them to subprocesses
    started with an explicit ``env=``."""

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name when ``name`` is None) and return its name."""
        return make_bucket(name)


def start_s3_server(log: Path) -> S3Server:
    """Start moto's server on 127.0.0.1, port 0; its log (one line a request) goes to ``log``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    lines = _copy_output(process, log)
    try:
        port = _wait_for_port(process, lines, log)
    except BaseException:
        _stop(process)
        raise
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # No instance-metadata lookups, no credentials or profiles from the developer's ~/.aws.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    return S3Server(endpoint, process, env)


def _copy_output(process: subprocess.Popen[bytes], log: Path) -> queue.Queue[bytes | None]:
    """Copy the server's output into ``log`` for the whole session (the pipe never fills up); its lines
    also go to the queue returned, then None when the output ends."""
    lines: queue.Queue[bytes | None] = queue.Queue()
    output = process.stdout
    assert output is not None

    def copy() -> None:
        with log.open("wb") as sink:
            for line in output:
                sink.write(line)
                sink.flush()
                lines.put(line)
        lines.put(None)

    threading.Thread(target=copy, daemon=True, name="moto-output").start()
    return lines


def _wait_for_port(process: subprocess.Popen[bytes], lines: queue.Queue[bytes | None], log: Path) -> int:
    """The port of the line werkzeug prints once it is bound (each line waited for, no polling)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            output = log.read_text()[-2000:]
            raise RuntimeError(f"moto server did not start within {START_TIMEOUT}s: {output}") from None
        if line is None:
            process.wait(timeout=10)
            raise RuntimeError(f"moto server exited with {process.returncode}: {log.read_text()[-2000:]}")
        match = _RUNNING.search(line)
        if match:
            port = int(match.group(1))
            with socket.create_connection(("127.0.0.1", port), timeout=5):  # it accepts connections
                return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def make_bucket(name: str | None = None) -> str:
    """Create a bucket on the server the environment points at; a unique name when ``name`` is None."""
    import s3fs

    bucket = name or f"torchship-test-{os.getpid()}-{next(_BUCKETS)}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    return bucket


def publish_to_s3(url: str, name: str, package_dir: Path, version: int | None = None) -> int:
    """Publish a local package directory as the next version of ``name`` (or ``version``) in the object
    store at ``url``, with its ``config.json`` stamped with that number, the way training publishes."""
    from torchship.errors import VersionExistsError
    from torchship.store.remote import ObjectStore

    store = ObjectStore(url)
    for _ in range(5):
        number = version if version is not None else (store.latest(name) or 0) + 1

        def write(directory: Path, number: int = number) -> None:
            shutil.copytree(package_dir, directory, dirs_exist_ok=True)
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            config.update(name=name, version=number)
            (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

        try:
            return store.publish(name, write, version=number)
        except VersionExistsError:
            if version is not None:
                raise
    raise AssertionError(f"could not claim a version of {name} in {url}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server for the whole session, with the environment pointing S3 clients at it."""
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _stop(server.process)


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """``s3://<a fresh empty bucket>/models``: a store of its own for each test."""
    return f"s3://{s3_server.make_bucket()}/models"
