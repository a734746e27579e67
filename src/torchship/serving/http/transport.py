"""uvicorn's httptools protocol with one change: what a response writes in one event-loop turn goes out in
one ``send``.

uvicorn writes the status line and headers, then the body, with two ``transport.write`` calls, and uvloop
sends each at once: two system calls and two TCP segments per response (``TCP_NODELAY`` is on), so the
client also wakes up twice. :class:`CoalescingTransport` keeps the writes of the current turn and sends
them together at the end of it, after the body has been written in the same turn: less CPU per request
on both sides and more requests/s (see the performance page of the docs, "One send per response").

Everything else is uvicorn's: parsing, keep-alive, pipelining, ``Expect: 100-continue``, flow control
(the real transport still calls ``pause_writing``, one turn later at most) and shutdown.

:class:`LimitedHttpToolsProtocol` adds the limits a client must not be able to lift (``ServerSettings``):
open connections per listener, bytes of request line and headers, time to send the headers, time to send
the body. uvicorn has none of them: a half-sent request waits forever and headers are buffered without
bound. A request that arrives whole costs a few attribute checks; only an incomplete one starts a timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from torchship.serving.http.routing import ResponseObserver
from torchship.serving.settings import ServerSettings

__all__ = [
    "CoalescingHttpToolsProtocol",
    "CoalescingTransport",
    "ConnectionLimits",
    "LimitedHttpToolsProtocol",
]

logger = logging.getLogger("torchship.serving")


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


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener allows a connection (see the fields of the same names in ``ServerSettings``)."""

    listener: str
    max_connections: int
    max_header_size: int
    header_timeout: float
    body_timeout: float
    observe: ResponseObserver | None = None
    """Told of each 408/431 this layer answers itself (``route`` None), as the App is of its responses,
    so that every status is counted."""

    @classmethod
    def from_settings(
        cls, listener: str, settings: ServerSettings, observe: ResponseObserver | None = None
    ) -> ConnectionLimits:
        return cls(
            listener,
            settings.max_connections,
            settings.max_header_size,
            settings.header_timeout,
            settings.body_timeout,
            observe,
        )


_REFUSAL_LOG_INTERVAL = 10.0  # seconds between two warnings about refused connections, per listener
_last_refusal_log: dict[str, float] = {}


class LimitedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """:class:`CoalescingHttpToolsProtocol` within :class:`ConnectionLimits` (get a class with
    :meth:`with_limits`; uvicorn builds one protocol per connection):

    * a connection beyond ``max_connections`` is closed at once, before it is read;
    * the request line and headers may take ``max_header_size`` bytes (then 431 and close) and
      ``header_timeout`` seconds from the connection's start, or from the first byte of a later request
      (then close); between requests, uvicorn closes a connection idle for ``timeout_keep_alive``;
    * the rest of the body may take ``body_timeout`` seconds from the end of the headers (then 408 and
      close).

    The clocks start only when a request is not complete at the end of a read: a request that arrives in
    one piece, the usual case, costs no timer.
    """

    limits: ClassVar[ConnectionLimits]

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
        """A protocol class for one listener."""
        return type(f"{limits.listener.title()}HttpProtocol", (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._reading_headers = (
            True  # from the end of a message (or the start) to the end of the next headers
        )
        self._begun = False  # a request line has started arriving and its headers have not ended
        self._header_bytes = 0
        self._framing_bytes = 0  # after the headers: bytes read since the last body byte (trailers)
        self._body_bytes = 0
        self._keep_alive = True  # what the current request asked for, while its body is read
        self._messages = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True  # never joins uvicorn's bookkeeping: nothing to undo
            self.transport = transport
            transport.close()
            _log_refusal(self.limits)
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._on_header_timeout)  # a connection that never speaks

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        messages = self._messages
        # While headers are expected, feed at most what the limit still allows: the parser buffers a header
        # until it ends, so the bytes are counted here, before they reach it.
        while self._reading_headers and data:
            room = self.limits.max_header_size - self._header_bytes
            if len(data) <= room:
                self._header_bytes += len(data)
                break
            before = self._messages
            head, data = data[:room], data[room:]
            self._header_bytes += len(head)
            if head:
                super().data_received(head)
            if self.transport.is_closing():
                return
            if self._reading_headers and self._messages == before:
                self._refuse_headers()
                return
        if data:
            if self._reading_headers:
                super().data_received(data)  # fits within max_header_size: the usual, whole request
            elif not self._feed_body(data):
                return
        if self._deadline is None and not self.transport.is_closing():
            if self._begun or not self._reading_headers:
                self._start_clock()
            elif self._messages == messages and (self.cycle is None or self.cycle.response_complete):
                # Bytes that start no request: llhttp skips empty lines between messages without
                # on_message_begin, and uvicorn's keep-alive timer is cancelled by every read, so a client
                # sending "\r\n" now and then would hold the connection for ever.
                self._arm(self.limits.header_timeout, self._on_header_timeout)

    def _feed_body(self, data: bytes) -> bool:
        """Feed what arrives after the headers; False when ``data_received`` has nothing left to do.

        A chunked body's trailer fields (and chunk lines) are parsed after ``on_headers_complete`` and the
        parser buffers each whole, joining the pieces quadratically, so the bytes read since the last body
        byte may not exceed ``max_header_size`` (then 431 and close). The data is fed in pieces of at most one
        byte more than what is left, and a piece with a body byte resets the count, so the parser never holds
        more than about twice ``max_header_size`` of trailers (what shared a read with the last body bytes or
        the headers is not counted)."""
        view = memoryview(data)
        while view:
            messages, body = self._messages, self._body_bytes
            size = self.limits.max_header_size - self._framing_bytes + 1
            piece, view = view[:size], view[size:]
            super().data_received(piece)  # type: ignore[arg-type]  # httptools takes any buffer
            if self.transport.is_closing():
                return False
            if self._messages != messages or self._reading_headers:
                if not view:
                    return True
                self.data_received(bytes(view))  # the request ended in the piece; the next one's turn
                return False
            if self._body_bytes != body:
                self._framing_bytes = 0
            else:
                self._framing_bytes += len(piece)
                if self._framing_bytes > self.limits.max_header_size:
                    self._refuse_trailers()
                    return False
        return True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_begin(self) -> None:
        self._begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._begun = False
        self._disarm()
        super().on_headers_complete()
        # Until the body has all arrived, a response ends the connection ("connection: close"): an early
        # answer (401, 413) would otherwise leave it open, reading and dropping the body until body_timeout.
        # A request arriving whole gets its own keep-alive back in on_message_complete, before the app runs.
        cycle = self.cycle
        if cycle is not None:
            self._keep_alive = cycle.keep_alive
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = self._keep_alive
        self._reading_headers = True
        self._header_bytes = 0
        self._framing_bytes = 0
        self._messages += 1
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deadline is None and not self.transport.is_closing():
            self._start_clock()  # a queued request runs now, its body still unread

    def _start_clock(self) -> None:
        """After a read: a request whose headers, or body, have not all arrived gets its deadline."""
        if self._begun:
            self._arm(self.limits.header_timeout, self._on_header_timeout)
        elif not self._reading_headers and not self._queued():
            self._arm(self.limits.body_timeout, self._on_body_timeout)

    def _queued(self) -> bool:
        """The current request waits behind a running one (pipelining), with reading paused."""
        return bool(self.pipeline) and self.pipeline[0][0] is self.cycle

    # ----------------------------------------------------------------------------------- limits hit
    def _refuse_headers(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request's response is still being written: no room for ours
            return
        self._send_error(
            431,
            "RequestHeaderFieldsTooLargeException",
            f"The request line and headers are larger than max_header_size={self.limits.max_header_size} "
            "bytes; send fewer or shorter headers, or start the server with a larger --max_header_size",
        )

    def _refuse_trailers(self) -> None:
        self._end_request(
            431,
            "RequestHeaderFieldsTooLargeException",
            f"The chunked body's trailer fields are larger than max_header_size="
            f"{self.limits.max_header_size} bytes; send them as headers, or start the server with a larger "
            "--max_header_size",
        )

    def _on_header_timeout(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _on_body_timeout(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._end_request(
                408,
                "RequestTimeoutException",
                f"The request body did not arrive within body_timeout={self.limits.body_timeout:g} s; send "
                "it faster, or start the server with a longer --body_timeout",
            )

    def _end_request(self, status: int, kind: str, message: str) -> None:
        """Answer ``status`` to the request whose body is being read, and close."""
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # answered already: just stop reading
            return
        cycle.disconnected = True  # the app's next receive() sees a disconnect; what it sends is dropped
        cycle.message_event.set()
        self._send_error(status, kind, message)

    def _send_error(self, status: int, kind: str, message: str) -> None:
        if self.limits.observe is not None:
            self.limits.observe(None, status)
        body = json.dumps({"code": status, "type": kind, "message": message}, indent=2).encode() + b"\n"
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(STATUS_LINE[status] + head % len(body) + body)
        self.transport.close()

    def _arm(self, seconds: float, callback: Any) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _log_refusal(limits: ConnectionLimits) -> None:
    now = time.monotonic()
    if now - _last_refusal_log.get(limits.listener, -_REFUSAL_LOG_INTERVAL) >= _REFUSAL_LOG_INTERVAL:
        _last_refusal_log[limits.listener] = now
        logger.warning(
            "%s listener: max_connections=%d connections are open; closing new ones until some end "
            "(--max_connections raises the limit)",
            limits.listener,
            limits.max_connections,
        )
