"""Start TorchServe on a torchship package: build the ``.mar``, write ``config.properties``, start, stop.

Everything TorchServe writes goes under one work directory: the model store, its logs (``LOG_LOCATION``,
``METRICS_LOCATION``), and its temp dir (``TMPDIR``/``TEMP``), which also holds its pid file and the
workers' Unix sockets, so this instance cannot collide with another TorchServe on the machine.
TorchServe 0.12 needs explicit ports for its five listeners (REST inference, management, metrics;
gRPC inference, management), hence :func:`~peers.processes.free_port`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peers.processes import ServerProcess, StartError, base_env, free_port, post_ok, wait_until_ready
from peers.servers import SAMPLE_BODY, Endpoint, package_version

__all__ = ["build_archive", "torchserve_server"]

_HANDLER = Path(__file__).with_name("torchserve_handler.py")
_PACKAGE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def build_archive(package: Path, model_store: Path, name: str) -> Path:
    """Pack ``package`` and the custom handler into ``<model_store>/<name>.mar`` with torch-model-archiver."""
    archiver = _tool("torch-model-archiver")
    model_store.mkdir(parents=True, exist_ok=True)
    command = [archiver, "--model-name", name, "--version", "1.0", "--handler", str(_HANDLER)]
    command += ["--extra-files", ",".join(str(package / file) for file in _PACKAGE_FILES)]
    command += ["--export-path", str(model_store), "--force"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise StartError(f"torch-model-archiver failed:\n{result.stdout}{result.stderr}")
    return model_store / f"{name}.mar"


@contextmanager
def torchserve_server(
    package: Path,
    workdir: Path,
    batch_size: int = 16,
    max_batch_delay_ms: int = 5,
    torch_threads: int | None = None,
    deadline_s: float = 180.0,
) -> Iterator[Endpoint]:
    """TorchServe with one worker; ``batch_size=1`` is TorchServe without batching.

    ``torch_threads``: the worker's intra-op threads (None: torch's default, one per core).
    """
    from torchship.store import read_config

    if shutil.which("java") is None:
        raise StartError("TorchServe needs Java 11 or newer on PATH (Debian: apt-get install openjdk-17-jre)")
    name = read_config(package).name
    home = workdir / f"torchserve-batch{batch_size}"
    for folder in ("tmp", "logs"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    archive = build_archive(package, home / "model_store", name)
    port = free_port()
    config = home / "config.properties"
    config.write_text(_properties(archive, name, port, batch_size, max_batch_delay_ms))
    tmp, logs = str(home / "tmp"), str(home / "logs")
    env = base_env(torch_threads, TMPDIR=tmp, TEMP=tmp, LOG_LOCATION=logs, METRICS_LOCATION=logs)
    torchserve = _tool("torchserve")
    command = [torchserve, "--start", "--foreground", "--ncs", "--disable-token-auth"]
    command += ["--ts-config", str(config)]
    process = ServerProcess(command, home / "torchserve.log", cwd=home, env=env)
    url = f"http://127.0.0.1:{port}/predictions/{name}"
    try:
        wait_until_ready("TorchServe", post_ok(url, SAMPLE_BODY), process, deadline_s)
        settings = f"batch {batch_size}, {max_batch_delay_ms} ms" if batch_size > 1 else "no batching"
        yield Endpoint(f"TorchServe {package_version('torchserve')}", settings, url)
    finally:
        # `torchserve --stop` finds this instance through the pid file in our TMPDIR; whatever it leaves
        # running, process.stop() kills with the rest of the session.
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [torchserve, "--stop"], env=env, cwd=home, capture_output=True, timeout=60, check=False
            )
        process.stop(stop_signal=None)


def _properties(archive: Path, name: str, port: int, batch_size: int, delay_ms: int) -> str:
    # Batch settings go through config.properties' `models`, so the management API's model control
    # (off by default since TorchServe 0.11) can stay off. Everything else is TorchServe's default.
    models = {
        name: {
            "1.0": {
                "defaultVersion": True,
                "marName": archive.name,
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": batch_size,
                "maxBatchDelay": delay_ms,
                "responseTimeout": 120,
            }
        }
    }
    lines = [
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{free_port()}",
        f"metrics_address=http://127.0.0.1:{free_port()}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={free_port()}",
        f"grpc_management_port={free_port()}",
        f"model_store={archive.parent}",
        f"load_models={archive.name}",
        "default_workers_per_model=1",
        f"models={json.dumps(models)}",
    ]
    return "\n".join(lines) + "\n"


def _tool(name: str) -> str:
    # The console scripts sit next to this interpreter in a virtual environment.
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise StartError(f"{name} is not installed: pip install torchserve torch-model-archiver")
    return found
