"""Connection limits at the HTTP edge, with raw sockets against a real server (issue 13, case 6): half-sent
requests time out, headers are bounded, a stalled body gets 408, idle keep-alive connections close, and
connections beyond ``max_connections`` are closed at once while the other listeners keep answering."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from serving_support import metric, running, settings, wait_until

from torchship.serving import Server

CLOSED_WITHIN = 30.0  # seconds a test waits for the server to close a connection (the limits are ~0.5 s)


@contextmanager
def _connect(server: Server, listener: str = "inference") -> Iterator[socket.socket]:
    url = urlsplit(server.urls[listener])
    with socket.create_connection((url.hostname, url.port), timeout=CLOSED_WITHIN) as sock:
        yield sock


def _closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails the test if it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


class _Responses:
    """HTTP/1.1 responses read one after another from a raw socket (a buffered reader per response would
    swallow the next one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields[b"content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head.split(b" ", 2)[1]), body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before the response ended")
        self.buffer += chunk


def _response(sock: socket.socket) -> tuple[int, bytes]:
    return _Responses(sock).next()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_half_sent_headers_are_closed_after_header_timeout() -> None:
    with running(settings(header_timeout=0.5)) as server, ExitStack() as stack:
        socks = [stack.enter_context(_connect(server)) for _ in range(10)]
        for sock in socks[:5]:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # and then nothing
        assert [_closed(sock) for sock in socks] == [b""] * 10  # silent and idle ones alike
        assert httpx.get(server.urls["inference"] + "/ping").status_code == 200


def test_a_later_request_half_sent_on_a_kept_alive_connection_is_closed_after_header_timeout() -> None:
    with running(settings(header_timeout=0.5, keep_alive_timeout=600.0)) as server, _connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _response(sock)[0] == 200
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: local")  # and then nothing
        assert _closed(sock) == b""


def test_headers_sent_in_pieces_within_the_timeout_are_served() -> None:
    with running(settings(header_timeout=5.0)) as server, _connect(server) as sock:
        for piece in (b"GET /pi", b"ng HTTP/1.1\r\nHo", b"st: localhost\r\n", b"\r\n"):
            sock.sendall(piece)
        responses = _Responses(sock)
        assert responses.next() == (200, b'{\n  "status": "Healthy"\n}\n')
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2)  # pipelined
        assert [responses.next()[0] for _ in range(2)] == [200, 200]


def test_an_oversized_header_block_gets_431_and_the_connection_closes() -> None:
    with running(settings(max_header_size=4096)) as server:
        with _connect(server) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 3900 + b"\r\n\r\n")
            assert _response(sock)[0] == 200  # just under the limit
        with _connect(server) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
            answer = _closed(sock)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b'"RequestHeaderFieldsTooLargeException"' in answer and b"--max_header_size" in answer
        assert httpx.get(server.urls["inference"] + "/ping").status_code == 200
        # Answered before any App saw the request, and counted all the same.
        labels = {"listener": "inference", "route": "none", "status": "431"}
        assert metric(server, "torchship_http_responses_total", **labels) == 1
        assert metric(server, "Requests4XX", Level="Host", Hostname=server.metrics.hostname) == 1


def test_an_endless_header_is_not_buffered() -> None:
    """100 MB of headers were read and kept; now the server stops reading after ``max_header_size``."""
    with running(settings()) as server, _connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # BrokenPipe / ConnectionReset: the server closed the connection
            while sent < 100 << 20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 20 << 20  # what the two kernels' buffers held, not 100 MB


def test_a_stalled_body_gets_408_after_body_timeout() -> None:
    with running(settings(body_timeout=0.5)) as server:
        with _connect(server, "management") as sock:
            sock.sendall(
                b"POST /models HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n" + b'{"url": '  # and then nothing
            )
            answer = _closed(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"body_timeout=0.5" in answer
        assert server.registry.names() == []
        assert httpx.get(server.urls["management"] + "/models").json() == {"models": []}


def test_a_body_sent_in_pieces_within_the_timeout_is_read() -> None:
    with running(settings(body_timeout=10.0)) as server, _connect(server, "management") as sock:
        body = b'{"url": "no-such-model"}'
        sock.sendall(
            b"POST /models HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 5):
            sock.sendall(body[i : i + 5])
        status, answer = _response(sock)
        assert status in (400, 404) and b"no-such-model" in answer  # read whole, then refused on its merits


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_timeout() -> None:
    with running(settings(keep_alive_timeout=0.3, header_timeout=60.0)) as server, _connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _response(sock)[0] == 200
        assert _closed(sock) == b""


def test_connections_beyond_max_connections_are_closed_while_the_other_listeners_answer(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """20,000 idle connections used up the file descriptors and /ping and management stopped answering."""
    with running(settings(max_connections=8, header_timeout=60.0)) as server, ExitStack() as stack:
        held = [stack.enter_context(_connect(server)) for _ in range(8)]
        extra = [stack.enter_context(_connect(server)) for _ in range(20)]
        assert [_closed(sock) for sock in extra] == [b""] * 20  # closed at once, not after header_timeout
        assert all(_still_open(sock) for sock in held)
        assert httpx.get(server.urls["management"] + "/models").status_code == 200
        assert httpx.get(server.urls["metrics"] + "/metrics").status_code == 200
        held[0].sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert _response(held[0])[0] == 200  # the held ones are real connections
        for sock in held:
            sock.close()

        def ping() -> bool:
            try:
                return httpx.get(server.urls["inference"] + "/ping").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ping, what="/ping once the idle connections are gone")
    assert "Traceback" not in capfd.readouterr().err


def _post_chunked(path: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )


def test_trailer_fields_are_bounded_by_max_header_size() -> None:
    """Trailer fields were parsed after the headers, so no limit counted them: 40 MB of ``a:b`` fields took
    1 GB, and one endless trailer value was joined quadratically. Now they count against max_header_size."""
    with running(settings(max_header_size=4096, body_timeout=60.0)) as server:
        body = b'{"url": "no-such-model"}'
        with _connect(server, "management") as sock:  # many 1-byte chunks and small trailers: served
            sock.sendall(_post_chunked(b"/models"))
            for byte in body:
                sock.sendall(b"1\r\n" + bytes([byte]) + b"\r\n")
            sock.sendall(b"0\r\nX-Check: " + b"a" * 3000 + b"\r\n\r\n")
            status, answer = _response(sock)
            assert status in (400, 404) and b"no-such-model" in answer
        with _connect(server, "management") as sock:  # many small trailer fields, then nothing
            sock.sendall(_post_chunked(b"/models") + b"5\r\n" + body[:5] + b"\r\n0\r\n" + b"a:b\r\n" * 3000)
            answer = _closed(sock)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b"trailer fields" in answer and b"max_header_size=4096" in answer
        with _connect(server, "management") as sock:  # one endless trailer value
            sock.sendall(_post_chunked(b"/models") + b"0\r\nX-Trailer: ")
            sent = 0
            with pytest.raises(OSError):  # BrokenPipe / ConnectionReset: the server closed the connection
                while sent < 64 << 20:
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            assert sent < 20 << 20  # what the two kernels' buffers held
        assert httpx.get(server.urls["management"] + "/models").status_code == 200


def test_empty_lines_after_a_request_do_not_hold_the_connection_open() -> None:
    """llhttp skips empty lines between requests without starting one, and every read cancelled uvicorn's
    keep-alive timer: a client sending "\\r\\n" every second held the connection for ever."""
    with running(settings(header_timeout=0.5, keep_alive_timeout=0.5)) as server, _connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _response(sock)[0] == 200
        sock.settimeout(0.1)  # the attacker's pace: one empty line per 0.1 s
        deadline = time.monotonic() + 15.0
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"\r\n")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed


def test_an_early_answer_closes_the_connection_without_reading_the_body() -> None:
    """A request answered before its body arrived (here 413 on its Content-Length) kept its connection,
    reading and dropping the body, until body_timeout."""
    with running(settings(max_request_size=100, body_timeout=60.0)) as server:
        with _connect(server, "management") as sock:
            sock.sendall(
                b"POST /models HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"  # and the rest never comes
            )
            answer = _closed(sock)  # within CLOSED_WITHIN, far below body_timeout
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413 ") and b"\r\nconnection: close" in head
        with _connect(server, "management") as sock:  # a whole request keeps its connection
            body = b'{"url": "no-such-model"}'
            request = (
                b"POST /models HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            responses = _Responses(sock)
            for _ in range(2):
                sock.sendall(request)
                assert responses.next()[0] in (400, 404)
