"""The three listeners, run as uvicorn servers in one event loop, and the server's start and stop.

Binding the sockets ourselves lets port 0 work (the OS picks, we read the port back and print it) and
lets one signal handler stop all three listeners at once. Shutdown order, on SIGTERM/SIGINT or
:meth:`ServerRunner.stop`: stop accepting connections, let in-flight requests finish (up to
``graceful_timeout``), then drain and stop the workers. A second signal stops without waiting.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import TracebackType

import uvicorn

from torchship.errors import ConfigError
from torchship.serving.app import inference_app, management_app, metrics_app
from torchship.serving.http import App
from torchship.serving.protocol import CoalescingHttpToolsProtocol
from torchship.serving.server import Server

__all__ = ["ServerRunner", "ServerThread", "run"]


class ServerRunner:
    """Runs a :class:`Server` in the current event loop until :meth:`stop` (thread-safe) or a signal."""

    def __init__(self, server: Server, *, handle_signals: bool = True) -> None:
        self.server = server
        self.handle_signals = handle_signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._uvicorns: list[tuple[uvicorn.Server, socket.socket]] = []

    async def run(self, on_started: Callable[[Server], None] | None = None) -> None:
        """Register the initial models, listen, call ``on_started``, serve until stopped, shut down."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.server.settings
        apps = (
            ("inference", inference_app, settings.inference_port),
            ("management", management_app, settings.management_port),
            ("metrics", metrics_app, settings.metrics_port),
        )
        try:
            await self.server.load_initial()
            for name, build, port in apps:
                await self._listen(name, build(self.server), settings.host, port)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self._loop.add_signal_handler(signum, self._on_signal)
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

    async def _listen(self, name: str, app: App, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="none",
            http=CoalescingHttpToolsProtocol,  # uvicorn's httptools protocol, one send per response
            ws="none",
            lifespan="off",
            access_log=False,
            server_header=False,
            proxy_headers=False,  # no X-Forwarded-For rewriting on the request path: a direct listener
            log_level="warning",
            backlog=2048,
            timeout_graceful_shutdown=math.ceil(self.server.settings.graceful_timeout),
        )
        config.load()
        sock = _bind(host, port, name)
        uv = uvicorn.Server(config)
        uv.lifespan = config.lifespan_class(config)  # what uvicorn's serve() sets up; lifespan is off
        await uv.startup(sockets=[sock])
        self._uvicorns.append((uv, sock))
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.server.urls[name] = f"http://{shown}:{bound}"

    async def _shutdown(self) -> None:
        await asyncio.gather(*(uv.shutdown(sockets=[sock]) for uv, sock in self._uvicorns if uv.started))
        forced = any(uv.force_exit for uv, _ in self._uvicorns)
        await self.server.registry.stop_all(0.0 if forced else self.server.settings.graceful_timeout)
        if (
            self._loop is not None
            and self.handle_signals
            and threading.current_thread() is threading.main_thread()
        ):
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(signum)


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
            f"--{name}_port, or stop what is using it"
        ) from exc
    sock.set_inheritable(False)
    return sock


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
        loop.run_until_complete(ServerRunner(server).run(on_started or print_urls))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def print_urls(server: Server) -> None:
    """The lines a user needs: where each listener is, and a ``curl`` line to try for each model."""
    from torchship.serving.handlers import TextClassifierAPI

    urls = server.urls
    lines = [
        f"torchship: inference  {urls['inference']}",
        f"torchship: management {urls['management']}",
        f"torchship: metrics    {urls['metrics']}/metrics",
    ]
    for name in server.registry.names():
        served = server.registry.get(name)
        predict = f"{urls['inference']}/predictions/{name}"
        lines.append(f"torchship: model {name} (version {served.version}) -> POST {predict}")
        if isinstance(served.spec.api, TextClassifierAPI):
            example = '{"text": "Shares rose after the company reported record profits."}'
            lines.append(f"  try: curl -X POST {predict} -H 'Content-Type: application/json' -d '{example}'")
    lines.append(f"  list models: curl {urls['management']}/models")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()


class ServerThread:
    """Run a server in a background thread (tests, benchmarks, notebooks)::

    with ServerThread(Server(ServerSettings(inference_port=0, ...))) as server:
        httpx.get(server.urls["inference"] + "/ping")
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
