"""Real TorchServe 0.12 (its Java frontend and Python workers) on a model store, for the tests that compare
torchship's answers with TorchServe's on the same archives.

    with torchserve(model_store, workdir, ["text", "echo"]) as urls:
        httpx.post(urls["inference"] + "/predictions/text", json={"text": "..."})

Everything TorchServe writes goes under ``workdir``: its ``config.properties``, logs, and temp dir (which
holds its pid file and the workers' sockets), so this instance collides with no other TorchServe. It
listens on 127.0.0.1 only, on ports picked free just before it starts (TorchServe needs explicit ports),
serves every archive in the store (``load_models=all``) with one worker each, and is stopped with every
process it started when the block ends, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

__all__ = ["TorchServeUnavailable", "torchserve", "torchserve_missing"]


class TorchServeUnavailable(RuntimeError):
    """TorchServe did not start or load its models; the message ends with the tail of its log."""


def torchserve_missing() -> str | None:
    """Why real TorchServe cannot run here (for ``pytest.skip``), or None."""
    if shutil.which("java") is None:
        return "TorchServe needs Java 11+ on PATH (Debian: apt-get install openjdk-17-jre-headless)"
    if not _script("torchserve").exists():
        return "TorchServe is not installed beside this Python: pip install 'torchship[torchserve]'"
    return None


@contextmanager
def torchserve(
    model_store: Path, workdir: Path, models: Sequence[str], deadline_s: float = 240.0
) -> Iterator[dict[str, str]]:
    """TorchServe serving ``model_store``; yields the inference and management base URLs once every model
    in ``models`` has a READY worker."""
    for folder in ("tmp", "logs"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
    config = workdir / "config.properties"
    config.write_text(_properties(model_store, ports), encoding="utf-8")
    tmp, logs = str(workdir / "tmp"), str(workdir / "logs")
    env = {**os.environ, "TMPDIR": tmp, "TEMP": tmp, "LOG_LOCATION": logs, "METRICS_LOCATION": logs}
    # TorchServe's workers run `python` from PATH when the frontend was not told otherwise: this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(_script("torchserve")), "--start", "--foreground", "--ncs", "--disable-token-auth"]
    command += ["--ts-config", str(config), "--model-store", str(model_store)]
    log_path = workdir / "torchserve.log"
    urls = {name: f"http://127.0.0.1:{ports[name]}" for name in ("inference", "management")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,  # its own process group: stopping it stops its workers too
        )
        try:
            _wait_ready(urls["management"], models, process, log_path, deadline_s)
            yield urls
        finally:
            _stop(process, env, workdir)


def _properties(model_store: Path, ports: dict[str, int]) -> str:
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={ports['grpc']}",
        f"grpc_management_port={ports['grpc_mgmt']}",
        f"model_store={model_store}",
        "load_models=all",
        # One worker per model, as torchship is given: the default (one per core) multiplies processes.
        "default_workers_per_model=1",
        "disable_system_metrics=true",
    ]
    return "\n".join(lines) + "\n"


def _wait_ready(
    management: str,
    models: Sequence[str],
    process: subprocess.Popen[bytes],
    log_path: Path,
    deadline_s: float,
) -> None:
    deadline = time.monotonic() + deadline_s
    waiting = list(models)
    while waiting:
        if process.poll() is not None:
            raise TorchServeUnavailable(f"TorchServe exited with {process.returncode}:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError, ValueError, LookupError):
            waiting = [name for name in waiting if not _ready(management, name)]
        if time.monotonic() > deadline:
            raise TorchServeUnavailable(
                f"TorchServe had no READY worker for {waiting} after {deadline_s:.0f}s:\n{_tail(log_path)}"
            )
        time.sleep(0.5)  # polling interval, not synchronisation: the management API decides


def _ready(management: str, name: str) -> bool:
    response = httpx.get(f"{management}/models/{name}", timeout=10)
    if response.status_code != 200:
        return False
    workers = response.json()[0]["workers"]
    return any(worker["status"] == "READY" for worker in workers)


def _stop(process: subprocess.Popen[bytes], env: dict[str, str], workdir: Path) -> None:
    # `torchserve --stop` finds this instance through the pid file in our TMPDIR; SIGKILL to the process
    # group then ends whatever is left (the frontend runs in the foreground, workers are its children).
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [str(_script("torchserve")), "--stop"], env=env, cwd=workdir, capture_output=True, timeout=60
        )
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _script(name: str) -> Path:
    return Path(sys.executable).with_name(name)


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
