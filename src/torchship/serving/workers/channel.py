"""The server's end of a worker's pipe: whole messages out and in, without ever blocking the event loop.

The worker's end blocks: it sends with :class:`multiprocessing.connection.Connection` and reads with
:func:`receive`. Both ends speak ``Connection``'s framing: a 4-byte big-endian signed length, or ``-1``
and an 8-byte length for a message over 2 GiB, then the pickle. The server's end speaks it itself on the
non-blocking socket:

* **Out**: a message is pickled once and written with one ``writev`` (length and pickle, no
  concatenation). What the socket does not take at once waits in an output buffer, written as the socket
  drains (``loop.add_writer``), so a batch of any size goes whole and in order. The buffer holds only
  what is in flight: the worker runs one batch at a time, so at most that batch and a stop message.
* **In**: bytes are parsed into frames as they arrive (``loop.add_reader``). A frame larger than one read
  goes straight into a buffer of its announced size, so a large result is copied once, not regrown.

:meth:`Channel.drain` reads what a worker wrote before it exited, so its last answer is not lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Channel", "frame_header", "receive"]

logger = logging.getLogger("torchship.serving")

_READ_SIZE = 1 << 16  # one read per wake-up covers any small message whole
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame_header(size: int) -> bytes:
    """multiprocessing's length prefix for a message of ``size`` bytes."""
    if size > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(size)
    return _SHORT.pack(size)


def receive(conn: Connection) -> Any:
    """Read one message from ``conn`` (blocking: the worker's side). Raises EOFError when the pipe closes.

    What ``Connection.recv`` does, with the frame read straight into a buffer of its size: a large batch
    is copied once on its way in instead of being gathered chunk by chunk."""
    fd = conn.fileno()
    (size,) = _SHORT.unpack(_read_exactly(fd, _SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(_read_exactly(fd, _LONG.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytearray:
    data = bytearray(size)
    filled = 0
    with memoryview(data) as view:
        while filled < size:
            count = os.readv(fd, [view[filled:]])
            if not count:
                raise EOFError
            filled += count
    return data


class Channel:
    """Frames pickled messages over ``conn`` (the server's end of a duplex pipe) on ``loop``.

    ``on_message(message)`` gets every message the worker sends. A closed or broken pipe is not reported
    here: the worker's exit is (its process sentinel), and its owner then calls :meth:`drain` and
    :meth:`close`.
    """

    def __init__(
        self, conn: Connection, loop: asyncio.AbstractEventLoop, on_message: Callable[[Any], None]
    ) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._on_message = on_message
        self._out: list[memoryview] = []
        self._writing = False
        self._reading = False
        self._inbox = _FrameReader()
        os.set_blocking(self._fd, False)

    def open(self) -> None:
        """Start delivering the worker's messages."""
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def send(self, message: Any) -> None:
        """Queue ``message`` whole, behind any message still being written; never blocks, never raises
        for a worker that is gone (its exit is reported by its sentinel)."""
        if self._conn.closed:
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._out += (memoryview(frame_header(len(data))), memoryview(data))
        if len(self._out) == 2:  # nothing was waiting: write now
            self._flush()

    @property
    def buffered(self) -> int:
        """Bytes waiting to be written."""
        return sum(len(chunk) for chunk in self._out)

    def drain(self) -> None:
        """Deliver the whole messages already in the pipe (the worker has exited)."""
        if self._conn.closed:
            return
        messages: list[Any] = []
        try:
            while True:
                messages += self._inbox.read(self._fd)
        except (EOFError, OSError):  # BlockingIOError included: nothing more was written
            pass
        except Exception:
            logger.exception("unreadable message from a worker that exited")
        for message in messages:
            self._on_message(message)

    def close(self) -> None:
        """Stop watching the pipe, drop what was not written, and close it."""
        self._stop_reading()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        self._conn.close()

    def _on_readable(self) -> None:
        try:
            messages = self._inbox.read(self._fd)
        except BlockingIOError:
            return
        except (EOFError, OSError):  # the worker's end closed; its exit arrives via the sentinel
            self._stop_reading()
            return
        except Exception:  # a frame that does not unpickle: nothing after it can be trusted
            logger.exception("unreadable message from a worker; its batch will time out")
            self._stop_reading()
            return
        for message in messages:
            self._on_message(message)

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = os.writev(self._fd, out)
            except BlockingIOError:
                break
            except OSError:  # the worker is gone: nothing will read this
                out.clear()
                break
            while sent:
                if sent >= len(out[0]):
                    sent -= len(out.pop(0))
                else:
                    out[0] = out[0][sent:]
                    sent = 0
        if out and not self._writing:
            self._loop.add_writer(self._fd, self._flush)
            self._writing = True
        elif not out and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False


class _FrameReader:
    """Incremental parser of multiprocessing's framing (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frame: bytearray | None = None  # a frame larger than one read, being filled
        self._filled = 0

    def read(self, fd: int) -> list[Any]:
        """Read once from ``fd`` (until the frame is complete or the socket is empty for a large frame)
        and return the messages completed. Raises EOFError at the end, BlockingIOError when empty."""
        if self._frame is not None:
            return self._fill(fd)
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            raise EOFError
        self._buffer += chunk
        return self._parse()

    def _fill(self, fd: int) -> list[Any]:
        frame = self._frame
        assert frame is not None
        with memoryview(frame) as view:
            while self._filled < len(frame):
                count = os.readv(fd, [view[self._filled :]])
                if not count:
                    raise EOFError
                self._filled += count
        self._frame = None
        return [pickle.loads(frame)]

    def _parse(self) -> list[Any]:
        buffer, messages = self._buffer, []
        while len(buffer) >= _SHORT.size:
            (size,) = _SHORT.unpack_from(buffer)
            start = _SHORT.size
            if size == -1:
                if len(buffer) < _SHORT.size + _LONG.size:
                    break
                (size,) = _LONG.unpack_from(buffer, start)
                start += _LONG.size
            end = start + size
            if len(buffer) < end:
                if size > _READ_SIZE:  # read the rest straight into a buffer of its final size
                    self._frame = bytearray(size)
                    self._frame[: len(buffer) - start] = buffer[start:]
                    self._filled = len(buffer) - start
                    del buffer[:]
                break
            messages.append(pickle.loads(buffer[start:end]))
            del buffer[:end]
        return messages
