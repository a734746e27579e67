"""The harness of ``test_fuzz``: a call, the server under fuzz, and the properties every answer has.

``Fuzz.checked`` sends a :class:`Call` and checks its answer with :func:`check`; ``Fuzz.assert_unharmed``
checks the invariants that span calls (no worker died, bounded memory, healthy). :func:`exchange` speaks
raw HTTP for the framing that no HTTP client sends.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fuzz_strategies import FIXTURE_MODELS, Headers, RawRequest, quote_any

from torchship.serving import Server

# The only 5xx the server may answer, whatever a client sends (docs/security.md):
#   503 ServiceUnavailableException: the version's job queue is full, it has no worker, or it is loading;
#   504 RequestTimeoutException: the request ran past the version's response_timeout.
# Anything else, 500 above all, means a request broke something in the server. (A handler that raises
# answers 500 too, but the fuzzed ones never do: the built-in classifier turns bad input into 400s, and no
# strategy here sends the echo model's {"fail": true}, its deliberate failure.)
DOCUMENTED_5XX = frozenset({503, 504})

FOREIGN_HOSTS = {
    b"attacker.example",
    b"attacker.example:8080",
    b"127.0.0.1.attacker.example",
    b"localhost.attacker.example",
}
HEALTH = ("/ping", "/v2/health/live", "/v2/health/ready")
PLAIN = Headers(None, None, None, None, None, ())
"""No hostile header: what a well-behaved client sends."""
MANAGER = Headers(None, None, None, "management", None, ())
"""A well-behaved management client, with its key."""


@dataclass(frozen=True)
class Call:
    """One fuzzed request: ``path`` and ``query`` are already percent-encoded."""

    listener: str
    method: str
    path: str
    query: str = ""
    headers: Headers = field(default_factory=lambda: PLAIN)
    body: bytes = b""

    def __str__(self) -> str:
        shown = self.body if len(self.body) <= 200 else self.body[:200] + b"...(%d bytes)" % len(self.body)
        return f"{self.method} {self.listener}{self.path}?{self.query} {self.headers} body={shown!r}"


class Fuzz:
    """The server under fuzz: sends calls, checks every answer, and keeps the baseline of the invariants."""

    def __init__(self, server: Server, key_file: Path, *, token_auth: bool) -> None:
        self.server = server
        self.key_file = key_file
        self.token_auth = token_auth
        self.clients = {name: httpx.Client(base_url=server.urls[name], timeout=120) for name in server.urls}
        self.baseline_pids: dict[str, list[int]] = {}
        self.baseline_rss: dict[int, int] = {}

    # ------------------------------------------------------------------------------ sending
    def keys(self) -> dict[str, str]:
        """The current keys (re-read: ``/token`` may have replaced one)."""
        if not self.token_auth:
            return {}
        data = json.loads(self.key_file.read_text())
        return {kind: entry["key"] for kind, entry in data.items()}

    def send(self, call: Call) -> httpx.Response:
        header_list: list[tuple[bytes, bytes]] = []
        given_headers = call.headers
        if given_headers.content_type is not None:
            header_list.append((b"content-type", given_headers.content_type))
        if given_headers.origin is not None:
            header_list.append((b"origin", given_headers.origin))
        if given_headers.host is not None:
            header_list.append((b"host", given_headers.host))
        if given_headers.encoding is not None:
            header_list.append((b"content-encoding", given_headers.encoding))
        auth = self._authorization(given_headers.auth)
        if auth is not None:
            header_list.append((b"authorization", auth))
        header_list.extend(given_headers.extra)
        url = call.path + (f"?{call.query}" if call.query else "")
        return self.clients[call.listener].request(call.method, url, content=call.body, headers=header_list)

    def _authorization(self, auth: str | bytes | None) -> bytes | None:
        if auth is None or isinstance(auth, bytes):
            return auth
        key = self.keys().get(auth)
        return None if key is None else f"Bearer {key}".encode()

    def manage(self, method: str, path: str, query: str = "", body: bytes = b"") -> httpx.Response:
        """An authorized management call, checked like any other."""
        return self.checked(Call("management", method, path, query, MANAGER, body))

    def checked(self, call: Call) -> httpx.Response:
        response = self.send(call)
        check(call, response, self.token_auth)
        return response

    # --------------------------------------------------------------------------- invariants
    def worker_pids(self) -> dict[str, list[int]]:
        """The fixture models' worker pids, from describe."""
        pids = {}
        for name in FIXTURE_MODELS:
            [version] = self.manage("GET", f"/models/{name}").json()
            pids[name] = sorted(worker["pid"] for worker in version["workers"] if worker["pid"] is not None)
        return pids

    def rss(self) -> dict[int, int]:
        """VmRSS in bytes of this process and of every fixture worker. This process first collects its
        garbage and hands freed heap back to the system (glibc's ``malloc_trim``, as the workers do every
        few seconds): what stays is what is still held, not what the allocator kept of what earlier tests
        of a long session freed (seen: 90 MiB of growth in the whole suite against 31 MiB alone)."""
        gc.collect()
        _trim_heap()
        pids = [os.getpid(), *(pid for pids in self.worker_pids().values() for pid in pids)]
        return {pid: vm_rss(pid) for pid in pids}

    def record_baseline(self, workers: int) -> None:
        """Remember the workers (``workers`` per fixture model) and the memory, to compare with later."""
        self.baseline_pids = self.worker_pids()
        assert all(len(pids) == workers for pids in self.baseline_pids.values()), self.baseline_pids
        self.baseline_rss = self.rss()

    def assert_unharmed(self, server_growth: int, worker_growth: int) -> None:
        """No worker died, this process and each worker grew less than the bounds (bytes), and the server
        is healthy."""
        self.remove_throwaways()
        assert self.worker_pids() == self.baseline_pids, "a fixture worker died or was replaced"
        for pid, rss in self.rss().items():
            if pid not in self.baseline_rss:
                continue  # a replacement of a worker an earlier test killed (and failed for)
            bound = server_growth if pid == os.getpid() else worker_growth
            grown = rss - self.baseline_rss[pid]
            who = "the server process" if pid == os.getpid() else f"worker {pid}"
            assert grown < bound, f"{who} grew by {grown >> 20} MiB (bound {bound >> 20} MiB)"
        ping = self.clients["inference"].get("/ping")
        assert (ping.status_code, ping.json()["status"]) == (200, "Healthy"), ping.text

    def remove_throwaways(self) -> None:
        """Unregister every model but the fixture ones (a fuzzed register may have added any name)."""
        for model in self.manage("GET", "/models", "limit=100").json()["models"]:
            if model["modelName"] not in FIXTURE_MODELS:
                self.manage("DELETE", f"/models/{quote_any(model['modelName'])}")


# -------------------------------------------------------------------------------------- checks
def check(call: Call, response: httpx.Response, token_auth: bool) -> None:
    """The properties every answer has, whatever the call."""
    status = response.status_code
    where = f"{call}\n-> {status} {response.content[:500]!r}"
    assert status < 500 or status in DOCUMENTED_5XX, f"undocumented {status}: {where}"
    if status >= 400 and call.method != "HEAD":
        assert_error_body(call, response, where)
    elif response.headers.get("content-type", "").startswith("application/json") and call.method != "HEAD":
        strict_json(response.content, where)
    if 200 <= status < 300:
        refusal = must_refuse(call, token_auth)
        assert refusal is None, f"{refusal}, yet answered {status}: {where}"


def assert_error_body(call: Call, response: httpx.Response, where: str) -> None:
    body = strict_json(response.content, where)
    path = response.request.url.path  # decoded, as the server routes it
    if call.listener == "inference" and (path == "/v2" or path.startswith("/v2/")):
        assert isinstance(body, dict) and isinstance(body.get("error"), str), f"not a v2 error body: {where}"
    else:
        assert isinstance(body, dict), f"not a TorchServe error body: {where}"
        assert body.get("code") == response.status_code, f"error code differs from the status: {where}"
        assert isinstance(body.get("type"), str) and isinstance(body.get("message"), str), where


def strict_json(raw: bytes, where: str) -> Any:
    """Parse JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError as exc:
        raise AssertionError(f"the body is not JSON ({exc}): {where}") from None


def must_refuse(call: Call, token_auth: bool) -> str | None:
    """Why this call must not succeed, or None. The edge's rules: keys, Origin, Host (docs/security.md)."""
    given_headers, path = call.headers, call.path
    if given_headers.host in FOREIGN_HOSTS:
        return "a foreign Host on a loopback bind (DNS rebinding)"
    if call.listener == "management":
        if given_headers.origin is not None:
            return "an Origin on the management API (no Origin is allowlisted)"
        wanted = "API" if path.startswith("/token") else "management"
        if token_auth and given_headers.auth != wanted:
            return f"no {wanted} key"
    if given_headers.origin is not None and call.listener == "metrics":
        return "an Origin on /metrics (no Origin is allowlisted)"
    if call.listener == "inference" and given_headers.origin is not None and path not in HEALTH:
        return "an Origin that is not allowlisted on the inference API"
    return None


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def vm_rss(pid: int) -> int:
    """A process's resident memory in bytes (``VmRSS`` in ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def inputs(document: Any) -> list[Any]:
    found = document.get("inputs") if isinstance(document, dict) else None
    return found if isinstance(found, list) else []


def claimed_rows(tensor: Any) -> int:
    shape = tensor.get("shape") if isinstance(tensor, dict) else None
    if isinstance(shape, list) and shape and isinstance(shape[0], int):
        return int(shape[0])
    return 0


_INTEGER_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}


def v2_problem(document: Any) -> str | None:
    """Why a v2 request must not succeed, or None: the protocol's rules on shape and datatype."""
    tensors = inputs(document)
    if not tensors:
        return "no inputs"
    for tensor in tensors:
        if not isinstance(tensor, dict):
            return "an input that is not an object"
        shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
        if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
            return f"shape {shape!r} is not a list of non-negative integers"
        flat = _flatten(data)
        if flat is None:
            return "data is not a list"
        count = 1
        for dim in shape:
            count *= dim
        if count != len(flat):
            return f"shape {shape} does not match {len(flat)} values"
        if datatype in _INTEGER_TYPES and not all(type(value) is int for value in flat):
            return f"{datatype} data that are not all integers"
        if datatype in _FLOAT_TYPES and not all(type(value) in (int, float) for value in flat):
            return f"{datatype} data that are not all numbers"
        if datatype == "BOOL" and not all(type(value) is bool for value in flat):
            return "BOOL data that are not all booleans"
    return None


def _flatten(data: Any) -> list[Any] | None:
    if not isinstance(data, list):
        return None
    flat: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def exchange(url: str, request: RawRequest) -> tuple[int, bytes, bytes] | None:
    """Send raw bytes; the first final answer as ``(status, content type, body)``, or None if the server
    closed or kept waiting (for the rest of a body that never comes)."""
    address = httpx.URL(url)
    wait = 3.0 if request.complete else 0.3
    received = b""
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may close after refusing the headers: read on
            sock.sendall(request.data)
        sock.settimeout(wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            received += chunk
            answer = _parse_answer(received, head=request.head)
            if answer is not None:
                return answer
    return _parse_answer(received, final=True, head=request.head)


def _parse_answer(data: bytes, final: bool = False, head: bool = False) -> tuple[int, bytes, bytes] | None:
    while True:
        start, found, rest = data.partition(b"\r\n\r\n")
        if not found:
            return None
        lines = start.split(b"\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:  # 100 Continue: the answer follows
            data = rest
            continue
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        fields = {key.strip().lower(): value.strip() for key, value in fields.items()}
        length = 0 if head else int(fields.get(b"content-length", b"0"))
        if len(rest) < length and not final:
            return None
        return status, fields.get(b"content-type", b""), rest[:length]
