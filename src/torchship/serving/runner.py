"""The three listeners, run as uvicorn servers in one event loop, and the server's start and stop.

Binding the sockets ourselves lets port 0 work (the OS picks, we read the port back and print it) and
lets one signal handler stop all three listeners at once. Each listener binds its own address
(``inference_address`` and friends; listeners given the same one share its socket), speaks HTTPS with
``tls_cert``/``tls_key``, and runs its requests through its :class:`~torchship.serving.http.edge.Edge`
and its connections through :class:`~torchship.serving.http.transport.LimitedHttpToolsProtocol`. The
keys are made (and their file written) before anything listens, and the file is removed after everything
stopped. Shutdown order, on SIGTERM/SIGINT or :meth:`ServerRunner.stop`: stop accepting connections, let
in-flight requests finish (up to ``graceful_timeout``), then drain and stop the workers. A second signal
stops without waiting. ``serve_api`` is what ``ModelAPI.start()`` runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shlex
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from torchship.errors import ConfigError
from torchship.serving.apps import SharedApp, inference_app, management_app, metrics_app
from torchship.serving.handler import ModelAPI
from torchship.serving.http.addresses import Address, listener_addresses, listener_groups
from torchship.serving.http.auth import ENVIRONMENT, Keys, guards, inference_key_required
from torchship.serving.http.edge import build_edges
from torchship.serving.http.routing import App
from torchship.serving.http.transport import ConnectionLimits, LimitedHttpToolsProtocol
from torchship.serving.server import Server
from torchship.serving.settings import ServerSettings
from torchship.serving.text_classifier import TextClassifierAPI

__all__ = ["ServerRunner", "ServerThread", "run", "serve_api"]

logger = logging.getLogger("torchship.serving")


class ServerRunner:
    """Runs a :class:`Server` in the current event loop until :meth:`stop` (thread-safe) or a signal."""

    def __init__(self, server: Server, *, handle_signals: bool = True) -> None:
        self.server = server
        self.handle_signals = handle_signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._uvicorns: list[tuple[uvicorn.Server, socket.socket]] = []
        self._unused_sockets: list[
            socket.socket
        ] = []  # bound, not yet handed to uvicorn (which closes its own)
        self.keys: Keys | None = None
        """The keys, once :meth:`run` made them (None with ``token_auth`` off)."""
        self.inference_needs_key = False

    async def run(self, on_started: Callable[[Server], None] | None = None) -> None:
        """Make the keys, register the initial models, listen, call ``on_started``, serve until stopped,
        shut down."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.server.settings
        try:
            addresses = listener_addresses(settings)
            _raise_open_file_limit(3 * settings.max_connections + 256)
            if settings.token_auth:
                self.keys = Keys.start(settings)
                self.inference_needs_key = inference_key_required(settings, addresses)
            edges = build_edges(settings, addresses, guards(settings, addresses, self.keys))
            apps = {
                "inference": inference_app(self.server, edges["inference"]),
                "management": management_app(self.server, edges["management"], self.keys),
                "metrics": metrics_app(self.server, edges["metrics"]),
            }
            # Certificates and ports are checked before any model loads: a mistake there fails at once.
            listeners = [
                (names, self._config(names[0], _app(apps, names), addresses[names[0]]), addresses[names[0]])
                for names in listener_groups(settings, addresses)
            ]
            for names, _, address in listeners:
                self._unused_sockets.append(_bind(address.host, address.port, names[0]))
            # Signals first: start-up may download models for minutes, and as a container's PID 1 the
            # process would ignore SIGTERM until it has a handler. One during start-up stops after it.
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self._loop.add_signal_handler(signum, self._on_signal)
            await self.server.load_initial()
            if self._stop.is_set():
                return
            for (names, config, address), sock in zip(listeners, list(self._unused_sockets), strict=True):
                await self._listen(names, config, address, sock)
            self.server.start_watching()
            if on_started is not None:
                on_started(self.server)
            ticks = [asyncio.ensure_future(uv.main_loop()) for uv, _ in self._uvicorns]  # Date header, exit
            await self._stop.wait()
            for uv, _ in self._uvicorns:
                uv.should_exit = True
            await asyncio.gather(*ticks)
        finally:
            await self._shutdown()

    def stop(self, force: bool = False) -> None:
        """Ask the server to shut down gracefully (``force``: without waiting for in-flight requests)."""
        if self._loop is None or self._stop is None:
            return
        stop = self._stop

        def request() -> None:
            if stop.is_set() or force:
                for uv, _ in self._uvicorns:
                    uv.force_exit = True
            stop.set()

        self._loop.call_soon_threadsafe(request)

    def _on_signal(self) -> None:
        self.stop(force=self._stop is not None and self._stop.is_set())

    def _config(self, name: str, app: App | SharedApp, address: Address) -> uvicorn.Config:
        settings = self.server.settings
        tls = settings.tls_cert is not None and address.tls
        config = uvicorn.Config(
            app,
            host=address.host,
            port=address.port,
            loop="none",
            # uvicorn's httptools protocol, one send per response, within the connection limits
            http=LimitedHttpToolsProtocol.with_limits(
                ConnectionLimits.from_settings(name, settings, self.server.metrics.observer(name))
            ),
            ws="none",
            lifespan="off",
            access_log=False,
            server_header=False,
            proxy_headers=False,  # no X-Forwarded-For rewriting on the request path: a direct listener
            log_level="warning",
            backlog=2048,
            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # a float works
            timeout_graceful_shutdown=math.ceil(settings.graceful_timeout),
            ssl_certfile=settings.tls_cert if tls else None,
            ssl_keyfile=settings.tls_key if tls else None,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the TLS certificate {settings.tls_cert} with the key {settings.tls_key} "
                f"({exc}); give a PEM certificate chain (--tls_cert) and its private key (--tls_key)"
            ) from exc
        return config

    async def _listen(
        self, names: tuple[str, ...], config: uvicorn.Config, address: Address, sock: socket.socket
    ) -> None:
        uv = uvicorn.Server(config)
        uv.lifespan = config.lifespan_class(config)  # what uvicorn's serve() sets up; lifespan is off
        await uv.startup(sockets=[sock])
        self._unused_sockets.remove(sock)
        self._uvicorns.append((uv, sock))
        for name in names:
            self.server.urls[name] = address.url(sock.getsockname()[1])

    async def _shutdown(self) -> None:
        await self.server.stop_watching()  # no version registered or unregistered from here on
        self.server.registry.begin_shutdown()  # no worker replaced while the requests in flight finish
        for sock in self._unused_sockets:
            sock.close()
        await asyncio.gather(*(uv.shutdown(sockets=[sock]) for uv, sock in self._uvicorns if uv.started))
        forced = any(uv.force_exit for uv, _ in self._uvicorns)
        await self.server.registry.stop_all(0.0 if forced else self.server.settings.graceful_timeout)
        if self.keys is not None:
            self.keys.close()
        if (
            self._loop is not None
            and self.handle_signals
            and threading.current_thread() is threading.main_thread()
        ):
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(signum)


def _app(apps: dict[str, App], names: tuple[str, ...]) -> App | SharedApp:
    """The app of a listener, or one app over the apps of listeners that share an address."""
    return apps[names[0]] if len(names) == 1 else SharedApp([apps[name] for name in names])


def _bind(host: str, port: int, name: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for {name} on {host}:{port} ({exc.strerror}); choose another port with "
            f"--{name}_port or another address with --{name}_address, or stop what is using it"
        ) from exc
    sock.set_inheritable(False)
    return sock


def _raise_open_file_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards ``wanted`` (every listener full, plus the
    workers' pipes): a refused connection is closed by us, but only if the socket could be accepted."""
    try:
        import resource
    except ImportError:  # pragma: no cover  (Windows)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logger.warning(
            "max_connections allows %d connections over three listeners, but this process may open only %d "
            "files (ulimit -n); lower --max_connections or raise the limit",
            wanted - 256,
            target,
        )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is with ``uvicorn[standard]``), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(server: Server, on_started: Callable[[Server], None] | None = None) -> None:
    """Serve in this thread until SIGINT/SIGTERM; prints the URLs once the listeners are up."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        runner = ServerRunner(server)
        loop.run_until_complete(runner.run(on_started or (lambda started: print_urls(started, runner))))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


_EXAMPLE = (
    """-H 'Content-Type: application/json' -d '{"text": "Shares rose after the company reported profits."}'"""
)


def print_urls(server: Server, runner: ServerRunner | None = None) -> None:
    """The lines a user needs: where each listener is, where the keys are, and a ``curl`` line to try for
    each model (with the key where one is needed, read when the line runs: no secret is printed)."""
    urls = server.urls
    keys = runner.keys if runner is not None else None
    inference_auth = (
        _auth_option(keys, "inference") if runner is not None and runner.inference_needs_key else ""
    )
    lines = [
        f"torchship: inference  {urls['inference']}",
        f"torchship: management {_management_line(server)}",
        f"torchship: metrics    {urls['metrics']}/metrics",
    ]
    for name in server.registry.names():
        served = server.registry.get(name)
        predict = f"{urls['inference']}/predictions/{name}"
        lines.append(f"torchship: model {name} (version {served.version}) -> POST {predict}")
        if isinstance(served.spec.api, TextClassifierAPI):
            lines.append(f"  try: curl -X POST {predict}{inference_auth} {_EXAMPLE}")
    management_on = "management" in urls
    if keys is not None and (management_on or inference_auth):
        apis = [api for api, on in (("management", management_on), ("inference", inference_auth)) if on]
        needs = f"{' and '.join(apis)} API{'s need' if len(apis) > 1 else ' needs'}"
        where = (
            f"keys in {keys.path.resolve()} (owner-only)" if keys.owns_file else "keys given by the operator"
        )
        lines.append(f"torchship: {where}; the {needs} 'Authorization: Bearer <key>'")
    if management_on:
        lines.append(f"  list models: curl {urls['management']}/models{_auth_option(keys, 'management')}")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()


def _management_line(server: Server) -> str:
    mode = server.settings.management_api
    if mode == "off":
        return "off (--management_api off): publish to the store to change what is served"
    return server.urls["management"] + (" (read-only: --management_api read_only)" if mode != "on" else "")


def _auth_option(keys: Keys | None, kind: str) -> str:
    """`` -H "Authorization: Bearer $(torchship key KIND)"``, or the environment variable of the key."""
    if keys is None:
        return ""
    if keys.key(kind).source == "environment":
        return f' -H "Authorization: Bearer ${ENVIRONMENT[kind]}"'
    option = (
        "" if keys.path == Path("key_file.json") else f" --key_file {shlex.quote(str(keys.path.resolve()))}"
    )
    return f' -H "Authorization: Bearer $({_torchship_command()} key {kind}{option})"'


def _torchship_command() -> str:
    """How this process was started, so that the printed line works without an activated venv:
    ``.venv/bin/torchship``, or ``python -m torchship`` (``python -m``, ``ModelAPI.start()`` scripts)."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name == "torchship":
        return shlex.quote(program) if os.sep in program else "torchship"
    return f"{shlex.quote(sys.executable)} -m torchship"


class ServerThread:
    """Run a server in a background thread (tests, benchmarks, notebooks)::

    with ServerThread(Server(ServerSettings(inference_port=0, ...))) as server:
        urllib.request.urlopen(server.urls["inference"] + "/ping")
    """

    def __init__(self, server: Server, timeout: float = 60.0) -> None:
        self.server = server
        self.timeout = timeout
        self.runner = ServerRunner(server, handle_signals=False)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="torchship-server", daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        if not self._started.wait(self.timeout):
            raise TimeoutError(f"the server did not start within {self.timeout}s")
        if self._error is not None:
            raise self._error
        return self.server

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.runner.stop()
        self._thread.join(self.timeout)

    def _main(self) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self.runner.run(lambda _: self._started.set()))
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()
            loop.close()


def serve_api(api: ModelAPI, **options: Any) -> None:
    """Run the full server for one ``ModelAPI`` until SIGINT/SIGTERM (what ``ModelAPI.start`` calls).

    ``options`` are ``ServerSettings`` fields, with the same defaults as ``torchship serve`` (token
    authorization on: keys in ./key_file.json, or ``TORCHSHIP_KEY_FILE``)."""
    for key, variable in (
        ("host", "TORCHSHIP_HOST"),
        ("inference_port", "TORCHSHIP_INFERENCE_PORT"),
        ("management_port", "TORCHSHIP_MANAGEMENT_PORT"),
        ("metrics_port", "TORCHSHIP_METRICS_PORT"),
        ("key_file", "TORCHSHIP_KEY_FILE"),
    ):
        value = os.environ.get(variable)
        if value is None:
            continue
        if key.endswith("_port"):
            if not value.strip().isdigit():
                raise ConfigError(f"{variable} must be a port number (0 for any free port), got {value!r}")
            options[key] = int(value)
        else:
            options[key] = value
    options.setdefault("use_snapshot", False)  # one model from code: nothing to restore
    run(Server(ServerSettings(**options), apis=[api]))
