"""The server's end of a worker pipe, against a blocking ``Connection`` in a thread (no process needed):
messages of any size arrive whole and in order, both ways, and the event loop never blocks."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import socket
import struct
import threading
from multiprocessing.connection import Connection
from typing import Any

from torchship.serving.workers.channel import Channel, frame_header, receive

BIG = 20_000_000  # a hundred times the socket buffer


def test_frame_headers_are_multiprocessings() -> None:
    assert frame_header(5) == b"\x00\x00\x00\x05"
    assert frame_header(2**31) == struct.pack("!i", -1) + struct.pack("!Q", 2**31)


def test_messages_of_any_size_cross_whole_and_in_order_both_ways() -> None:
    server_end, worker_end = multiprocessing.Pipe(duplex=True)
    big = bytes(range(256)) * (BIG // 256)

    def worker() -> None:  # echoes what it gets, with the worker's blocking calls
        while (message := receive(worker_end)) != "stop":
            worker_end.send(message)

    async def scenario() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        received: list[Any] = []
        done = loop.create_future()

        def on_message(message: Any) -> None:
            received.append(message)
            if len(received) == 3:
                done.set_result(None)

        channel = Channel(server_end, loop, on_message)
        channel.open()
        channel.send(("run", 1, [("application/octet-stream", big)]))
        channel.send(("small", 2))
        channel.send(("run", 3, [("text/plain", big[:1000])]))
        assert channel.buffered > 0  # the socket took only part of the first message
        turns = 0
        while not done.done():  # the loop keeps turning while 40 MB go through the pipe
            turns += 1
            await asyncio.sleep(0)
        assert channel.buffered == 0
        channel.send("stop")
        channel.close()
        return received, turns

    thread = threading.Thread(target=worker)
    thread.start()
    received, turns = asyncio.run(scenario())
    thread.join()
    assert received[0] == ("run", 1, [("application/octet-stream", big)])
    assert received[1:] == [("small", 2), ("run", 3, [("text/plain", big[:1000])])]
    assert turns > 10


def test_a_frame_with_the_long_header_is_read() -> None:
    server_end, worker_end = multiprocessing.Pipe(duplex=True)
    data = pickle.dumps(("done", 7))
    _write_raw(worker_end, struct.pack("!i", -1) + struct.pack("!Q", len(data)) + data)

    async def scenario() -> list[Any]:
        received: list[Any] = []
        channel = Channel(server_end, asyncio.get_running_loop(), received.append)
        channel.drain()
        channel.close()
        return received

    assert asyncio.run(scenario()) == [("done", 7)]


def test_what_a_worker_wrote_before_it_went_away_is_delivered() -> None:
    server_end, worker_end = multiprocessing.Pipe(duplex=True)
    worker_end.send(("done", 1, 0.5, [(200, "application/json", b"{}", "")]))
    _write_raw(worker_end, frame_header(100)[:3])  # cut off mid-header: not a message
    worker_end.close()

    async def scenario() -> list[Any]:
        received: list[Any] = []
        channel = Channel(server_end, asyncio.get_running_loop(), received.append)
        channel.drain()
        channel.send(("run", 2, []))  # a worker that is gone: dropped, no error
        channel.close()
        return received

    assert asyncio.run(scenario()) == [("done", 1, 0.5, [(200, "application/json", b"{}", "")])]


def _write_raw(conn: Connection, data: bytes) -> None:
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:
        raw.sendall(data)
