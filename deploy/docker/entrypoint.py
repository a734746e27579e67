#!/usr/bin/env python3
"""The container's entry point: ``torchship`` with the container's defaults, and a health check.

    torchship-entrypoint serve --store /models     torchship serve, listening where TORCHSHIP_* say
    torchship-entrypoint --store /models           the same (options alone mean ``serve``)
    torchship-entrypoint models --store /models    any other torchship command, as is
    torchship-entrypoint health [--url URL]        exit 0 when the server answers 200, else 1
    torchship-entrypoint bash                      a program on PATH that is no torchship command runs

For ``serve``, the environment variables ``TORCHSHIP_HOST``, ``TORCHSHIP_INFERENCE_PORT``,
``TORCHSHIP_MANAGEMENT_PORT``, ``TORCHSHIP_METRICS_PORT`` and ``TORCHSHIP_KEY_FILE`` become the options
``--host`` and friends, placed before the command line's own options so that those (and a ``--config``
file) win. The image sets ``TORCHSHIP_HOST=0.0.0.0``: a container must listen beyond its loopback.

The server replaces this process (``exec``): SIGTERM from ``docker stop`` or the kubelet reaches torchship
itself, which drains in-flight requests (``--graceful_timeout``) and exits 0.

``health`` asks ``/v2/health/ready`` on the inference port, which answers 200 only once every model's
default version can serve (``/ping`` is 200 as soon as one model can); it needs no key
(``--health_auth`` is off by default). Only the standard library is used, so that the check is cheap
and the image needs no ``curl``. Works the same outside a container.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

# The environment variables `torchship serve` reads in the container (the same names a ModelAPI's start()
# reads), and the option each one becomes.
OPTIONS_FROM_ENVIRONMENT = {
    "TORCHSHIP_HOST": "--host",
    "TORCHSHIP_INFERENCE_PORT": "--inference_port",
    "TORCHSHIP_MANAGEMENT_PORT": "--management_port",
    "TORCHSHIP_METRICS_PORT": "--metrics_port",
    "TORCHSHIP_KEY_FILE": "--key_file",
}
HEALTH_PATH = "/v2/health/ready"
# torchship's commands: these never resolve to a program on PATH of the same name (`serve` is a common one).
TORCHSHIP_COMMANDS = frozenset({"serve", "train", "predict", "evaluate", "models", "key", "torchserve"})


def torchship_command(args: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The command line that serves ``args`` (this script's arguments) with ``environ``'s defaults."""
    args = list(args)
    if not args or args[0].startswith("-"):
        args = ["serve", *args]
    command = [sys.executable, "-m", "torchship", args[0]]
    if args[0] == "serve":
        for variable, option in OPTIONS_FROM_ENVIRONMENT.items():
            if environ.get(variable):
                command.append(f"{option}={environ[variable]}")  # one word: a value never reads as an option
    return command + args[1:]


def health_url(environ: Mapping[str, str]) -> str:
    """Where ``health`` asks by default: ``TORCHSHIP_HEALTH_URL``, else the inference port on loopback."""
    if environ.get("TORCHSHIP_HEALTH_URL"):
        return environ["TORCHSHIP_HEALTH_URL"]
    port = environ.get("TORCHSHIP_INFERENCE_PORT") or "8080"
    return f"http://127.0.0.1:{port}{HEALTH_PATH}"


def check_health(url: str, timeout: float) -> int:
    """0 when ``url`` answers 200, else 1; one line on stdout says what it answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(f"{url}: {response.status} {_one_line(response.read(1024))}")
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 400/500: the server runs, but is not ready
        print(f"{url}: {exc.code} {_one_line(exc.read(1024))}")
        return 1
    except (OSError, ValueError) as exc:  # refused, timed out, or a malformed URL
        print(f"{url}: no answer ({exc})")
        return 1


def _one_line(body: bytes) -> str:
    # Docker keeps the last lines a health check printed (docker inspect): one line per check reads best.
    return " ".join(body.decode(errors="replace").split())


def health_main(args: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(
        prog="torchship-entrypoint health",
        description="Exit 0 when the server answers 200 on its readiness route, else 1.",
    )
    parser.add_argument("--url", default=health_url(environ), help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    options = parser.parse_args(args)
    return check_health(options.url, options.timeout)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if argv and argv[0] == "health":
        return health_main(argv[1:], environ)
    if argv and argv[0] not in TORCHSHIP_COMMANDS and not argv[0].startswith("-") and shutil.which(argv[0]):
        command = list(argv)  # a program (sh, python): run it instead of torchship
    else:
        command = torchship_command(argv, environ)
    sys.stdout.flush()
    os.execvp(command[0], command)  # replaces this process: signals go straight to the server


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
