"""Start a server as a child process, wait until it answers, and stop it with everything it started.

Each server runs in its own session (process group), so stopping it also stops the worker processes it
spawned, and nothing outlives the benchmark even when a server ignores SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "StartError", "base_env", "free_port", "post_ok", "wait_until_ready"]


class StartError(RuntimeError):
    """A server did not start; the message says why and ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for servers that need explicit ports (TorchServe, LitServe).

    Another process may take it before the server binds it; the readiness check then fails clearly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A child process in its own session, with its output in ``log_path``."""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise StartError(f"cannot run {self.command[0]}: {exc}") from exc

    def exited(self) -> bool:
        return self.process.poll() is not None

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, stop_signal: signal.Signals | None = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Send ``stop_signal`` to the server, wait up to ``timeout_s``, then SIGKILL what is left.

        ``stop_signal=None`` only waits (the server was told to stop another way). The final SIGKILL
        goes to the whole session, which also ends workers the server left behind.
        """
        if stop_signal is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the session (the server and every process it started) and reap the server."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def _signal_group(self, signum: signal.Signals) -> None:
        # The session id is the server's pid (start_new_session), so this reaches only what it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


def wait_until_ready(
    name: str,
    ready: Callable[[], bool],
    process: ServerProcess,
    deadline_s: float = 180.0,
    interval_s: float = 0.2,
) -> None:
    """Poll ``ready()`` until it is True; StartError if the process exits or ``deadline_s`` passes.

    ``ready`` should send what the benchmark sends (a real prediction): a server may answer its health
    route before the model has loaded.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        if process.exited():
            status = process.process.returncode
            raise StartError(f"{name} exited with status {status} while starting:\n{process.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StartError(f"{name} did not answer within {deadline_s:.0f}s:\n{process.log_tail()}")
        time.sleep(interval_s)  # polling interval, not synchronisation: ready() decides


def post_ok(url: str, body: bytes, content_type: str = "application/json") -> Callable[[], bool]:
    """A readiness probe: True once POSTing ``body`` to ``url`` answers 200."""

    def probe() -> bool:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=30.0)
        return response.status_code == 200

    return probe


def base_env(torch_threads: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``; ``torch_threads`` sizes the OpenMP and MKL pools that
    torch's intra-op threads come from (for servers that have no setting of their own for it)."""
    env = {**os.environ, **extra}
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
    return env
