"""uvicorn's httptools protocol with one change: what a response writes in one event-loop turn goes out in
one ``send``.

uvicorn writes the status line and headers, then the body, with two ``transport.write`` calls, and uvloop
sends each at once: two system calls and two TCP segments per response (``TCP_NODELAY`` is on), so the
client also wakes up twice. :class:`CoalescingTransport` keeps the writes of the current turn and sends
them together at the end of it, after the body has been written in the same turn. Measured on the
2-core machine (wrk at 64 connections on the same cores, 16-token texts, 2 workers; 4 alternating pairs
of 10 s runs, 2026-12-04): the server process's CPU per request fell from 92 to 79 us, wrk's by a third
(it reads one segment per response instead of two), and throughput rose in every pair, by 7-20%.

Everything else is uvicorn's: parsing, keep-alive, pipelining, ``Expect: 100-continue``, flow control
(the real transport still calls ``pause_writing``, one turn later at most) and shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """Wraps a transport: ``write`` buffers until the end of the loop turn; ``close`` sends what is buffered
    first; ``abort`` drops it. Every other attribute is the wrapped transport's."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is buffered now (a no-op when nothing is)."""
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._buffer)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, wrapped))
