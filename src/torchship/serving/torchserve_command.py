"""``torchship torchserve``: TorchServe's own command line, run by ``torchship serve``.

    torchship torchserve --start --model-store=/mnt/models/model-store \\
        --ts-config=/mnt/models/config/config.properties        KServe's kserve-torchserve runtime
    torchship torchserve --start --model-store ./model-store --models all --disable-token-auth
    torchship torchserve --stop                                  stops the one this user started here

Each TorchServe flag becomes the ``torchship serve`` option of the same meaning, and any other
``torchship serve`` option may follow (``--device cuda``, ``--store ./models``), so the command line wins over
the config file as in TorchServe. The server always runs in the foreground (what a container needs): there
is no JVM to start in the background, and ``--foreground`` changes nothing. Like TorchServe, it keeps a pid
file (in the temporary directory, per user) for ``--stop``, reads ``TS_CONFIG_FILE`` before
``--ts-config``, and ``./config.properties`` when neither is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from torchship.errors import ConfigError

__all__ = ["STOP_TIMEOUT", "pid_file", "run_torchserve", "torchserve_arguments", "torchserve_parser"]

STOP_TIMEOUT = 90.0
"""Seconds ``--stop`` waits for the server to finish its in-flight requests and stop its workers."""

_DESCRIPTION = (
    "TorchServe's command line, served by torchship (no JVM): the flags below mean what they mean to "
    "torchserve, and any `torchship serve` option may follow them (`torchship serve --help`). The server "
    "always runs in the foreground, with or without --foreground; --stop stops it from another shell."
)


def torchserve_parser() -> argparse.ArgumentParser:
    """TorchServe 0.12's ``torchserve`` flags (``ts/arg_parser.py``), with what each does here."""
    parser = argparse.ArgumentParser(
        prog="torchship torchserve", description=_DESCRIPTION, allow_abbrev=False, exit_on_error=False
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-v", "--version", action="store_true", help="Print torchship's version")
    action.add_argument("--start", action="store_true", help="Start the server (the default)")
    action.add_argument("--stop", action="store_true", help="Stop the server started by --start")
    parser.add_argument(
        "--ts-config",
        dest="ts_config",
        metavar="FILE",
        help="TorchServe's config.properties (TS_CONFIG_FILE wins over it; default ./config.properties when "
        "it exists); the keys torchship does not honour are logged at start",
    )
    parser.add_argument(
        "--model-store", dest="model_store", metavar="DIR", help="Folder of .mar archives (model_store)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="all, x.mar or name=x.mar, from the model store (load_models); torchship never downloads",
    )
    parser.add_argument(
        "--workflow-store", dest="workflow_store", help="Refused: torchship serves no workflows"
    )
    parser.add_argument(
        "--log-config", dest="log_config", help="Not read: torchship logs to stderr through Python's logging"
    )
    parser.add_argument("--cpp-log-config", dest="cpp_log_config", help="Not read: there is no C++ backend")
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="Accepted; torchship always runs in the foreground (stop it with Ctrl-C, SIGTERM or --stop)",
    )
    parser.add_argument(
        "--no-config-snapshots",
        "--ncs",
        dest="no_config_snapshots",
        action="store_true",
        help="Keep no snapshot of registered models (torchship serve --no_snapshot)",
    )
    parser.add_argument(
        "--plugins-path", "--ppath", dest="plugins_path", help="Not read: Java plugins have no meaning here"
    )
    parser.add_argument(
        "--disable-token-auth",
        "--dt",
        dest="disable_token_auth",
        action="store_true",
        help="No keys on any API (torchship serve --token_auth false)",
    )
    parser.add_argument(
        "--enable-model-api",
        dest="enable_model_api",
        action="store_true",
        help="Let the management API register archives, whose handlers are code (--allow_code_models)",
    )
    return parser


def torchserve_arguments(
    args: Sequence[str], environ: Mapping[str, str], warn: Callable[[str], None]
) -> tuple[argparse.Namespace, list[str]]:
    """TorchServe's flags in ``args`` and the ``torchship serve`` command line that means the same.

    ``warn`` is told of each flag that is accepted but not acted on."""
    parsed, rest = torchserve_parser().parse_known_args(list(args))
    if parsed.workflow_store is not None:
        raise ConfigError("--workflow-store: torchship serves no workflows; serve each model instead")
    for flag, value in (
        ("--log-config", parsed.log_config),
        ("--cpp-log-config", parsed.cpp_log_config),
        ("--plugins-path", parsed.plugins_path),
    ):
        if value is not None:
            warn(f"{flag} {value} is not read: {_NOT_READ[flag]}")
    serve = ["serve"]
    ts_config = environ.get("TS_CONFIG_FILE") or parsed.ts_config
    if ts_config is None and Path("config.properties").is_file():
        ts_config = "config.properties"  # TorchServe reads the working directory's one
    if ts_config is not None:
        serve += ["--ts_config", ts_config]
    if parsed.model_store is not None:
        serve += ["--model_store", parsed.model_store]
    if parsed.models:
        # TorchServe joins --models with commas into load_models and splits them again
        serve += ["--models", *(item for arg in parsed.models for item in arg.split(",") if item)]
    if parsed.no_config_snapshots:
        serve.append("--no_snapshot")
    if parsed.disable_token_auth:
        serve += ["--token_auth", "false"]
    if parsed.enable_model_api:
        serve += ["--allow_code_models", "true"]
    return parsed, serve + rest


_NOT_READ = {
    "--log-config": "torchship logs to stderr through Python's logging",
    "--cpp-log-config": "torchship has no C++ backend",
    "--plugins-path": "Java plugins have no meaning in torchship",
}


def pid_file() -> Path:
    """Where ``--start`` records its pid for ``--stop``: one per user, in the temporary directory."""
    user = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f".torchship-torchserve-{user}.pid"


def run_torchserve(args: Sequence[str], serve: Callable[[list[str]], int]) -> int:
    """Run ``torchship torchserve args``; ``serve`` runs a ``torchship serve`` command line and returns
    its exit status."""
    parsed, command = torchserve_arguments(args, os.environ, _warn)
    if parsed.version:
        from torchship._version import __version__

        print(f"torchship {__version__} (TorchServe's APIs, without Java)")
        return 0
    if parsed.stop:
        return stop_server()
    if "--print_config" in command or any(arg in ("-h", "--help") for arg in command):
        return serve(command)  # prints and exits: nothing runs, no pid file
    with _pid_recorded():
        return serve(command)


def stop_server(timeout: float = STOP_TIMEOUT) -> int:
    """Stop the server ``--start`` recorded (SIGTERM, then wait for it to exit)."""
    path = pid_file()
    pid = _running_pid(path)
    if pid is None:
        print(f"torchship torchserve is not running (no live server recorded in {path}).")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"torchship torchserve (pid {pid}) did not stop within {timeout:g} s; "
                f"stop it with kill -9 {pid}"
            )
        time.sleep(0.1)  # polling another process's exit: there is nothing to wait on
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    print("torchship torchserve has stopped.")
    return 0


@contextlib.contextmanager
def _pid_recorded() -> Iterator[None]:
    path = pid_file()
    running = _running_pid(path)
    if running is not None:
        raise ConfigError(
            f"torchship torchserve is already running (pid {running}); stop it with "
            "`torchship torchserve --stop` first"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale one: its server is gone
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError as exc:  # another --start won the race
        raise ConfigError("torchship torchserve is starting in another shell; stop it first") from exc
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        if _read_pid(path) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _running_pid(path: Path) -> int | None:
    """The recorded pid when that process is alive and is a torchship torchserve (pids get reused)."""
    pid = _read_pid(path)
    if pid is None or pid == os.getpid() or not _alive(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid  # no /proc (macOS): trust the file
    return pid if b"torchserve" in command else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) has stopped serving
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
