"""The soak's traffic: what each kind of request looks like, the load clients, and the tally of answers.

A client keeps one keep-alive connection per listener and sends one request at a time, picking its
kind by weight from :data:`KINDS` (about 80% good requests); raw HTTP/1.1 over asyncio streams, so the
client costs little CPU next to the server it loads and can send what no HTTP client would.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torchship.serving.settings import DEFAULT_MAX_REQUEST_SIZE

EXTRA = "soak-extra"
"""The model name registered and unregistered during the soak; requests to it expect 200 or 404."""
DOCUMENTED_5XX = {503, 504}
"""Busy or timed out: the only 5xx the server may answer to anything (docs/security.md)."""
IDLE_REUSE = 1.0
"""Seconds a connection may sit idle and still be reused: the server closes idle keep-alive connections
(``keep_alive_timeout``), and a request written into one that is closing gets no answer."""


@dataclass(frozen=True)
class Request:
    """One request on the wire, where it goes, what kind it is, and whether a working server answers it
    200 (``good``)."""

    kind: str
    good: bool
    address: tuple[str, int]
    data: bytes
    close_after: bool = False
    """Close the connection after the answer (an oversized body we never send)."""


@dataclass
class Target:
    """Where the load goes, and the keys (None: the server runs without token authorization)."""

    inference: tuple[str, int]
    management: tuple[str, int]
    model: str
    keys: dict[str, str] = field(default_factory=dict)
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    giant_shapes: bool = True


def _http(
    target: tuple[str, int],
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    key: str | None = None,
) -> bytes:
    host, port = target
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _v2(texts: list[str]) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return json.dumps({"inputs": [tensor]}).encode()


Builder = Callable[[Target, random.Random, list[str]], Request]


def _predict(kind: str, words: int | None) -> Builder:
    def build(target: Target, rng: random.Random, texts: list[str]) -> Request:
        text = rng.choice(texts)
        text = " ".join(text.split()[:words]) if words else text
        body = json.dumps({"text": text}).encode()
        path = f"/predictions/{target.model}"
        return Request(kind, True, target.inference, _http(target.inference, "POST", path, body))

    return build


def _plain(target: Target, rng: random.Random, texts: list[str]) -> Request:
    text = " ".join(rng.choice(texts).split()[:64]).encode()
    data = _http(target.inference, "POST", f"/predictions/{target.model}", text, "text/plain")
    return Request("good: text/plain", True, target.inference, data)


def _v2_batch(target: Target, rng: random.Random, texts: list[str]) -> Request:
    batch = [" ".join(rng.choice(texts).split()[:32]) for _ in range(rng.randint(1, 8))]
    data = _http(target.inference, "POST", f"/v2/models/{target.model}/infer", _v2(batch))
    return Request("good: v2 batch", True, target.inference, data)


def _describe(target: Target, rng: random.Random, texts: list[str]) -> Request:
    key = target.keys.get("management")
    data = _http(target.management, "GET", f"/models/{target.model}", key=key)
    return Request("good: describe", True, target.management, data)


def _extra(target: Target, rng: random.Random, texts: list[str]) -> Request:
    body = json.dumps({"text": " ".join(rng.choice(texts).split()[:16])}).encode()
    data = _http(target.inference, "POST", f"/predictions/{EXTRA}", body)
    return Request("extra model", True, target.inference, data)


def _bad(kind: str, method: str, path: str, body: bytes, content_type: str = "application/json") -> Builder:
    def build(target: Target, rng: random.Random, texts: list[str]) -> Request:
        listener = target.management if path.startswith("/models") else target.inference
        resolved = path.format(model=target.model)
        return Request(kind, False, listener, _http(listener, method, resolved, body, content_type))

    return build


def _oversized(target: Target, rng: random.Random, texts: list[str]) -> Request:
    host, port = target.inference
    head = (
        f"POST /predictions/{target.model} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {target.max_request_size + 1}\r\n\r\n"
    )
    data = head.encode() + b'{"text": "'
    return Request("bad: oversized body", False, target.inference, data, close_after=True)


def _giant_shape(target: Target, rng: random.Random, texts: list[str]) -> Request:
    rows = 10**9 if target.giant_shapes else 10**4
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [rows, 0], "data": []}]})
    data = _http(target.inference, "POST", f"/v2/models/{target.model}/infer", body.encode())
    return Request("bad: v2 giant shape", False, target.inference, data)


def _wrong_key(target: Target, rng: random.Random, texts: list[str]) -> Request:
    data = _http(target.management, "GET", "/models", key="not-the-key")
    return Request("bad: wrong key", False, target.management, data)


FP32_STRINGS = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}
).encode()

# (weight, builder): about 80% good traffic, the rest hostile.
KINDS: list[tuple[float, Builder]] = [
    (30, _predict("good: short text", 12)),
    (20, _predict("good: medium text", 64)),
    (4, _predict("good: whole article", None)),
    (6, _plain),
    (10, _v2_batch),
    (3, _describe),
    (6, _extra),
    (2, _bad("bad: malformed JSON", "POST", "/predictions/{model}", b'{"text": "unterminated')),
    (2, _bad("bad: deep nesting", "POST", "/predictions/{model}", b"[" * 5000 + b"]" * 5000)),
    (
        1,
        _bad(
            "bad: deep nesting v2", "POST", "/v2/models/{model}/infer", b'{"a":' * 5000 + b"1" + b"}" * 5000
        ),
    ),
    (1, _bad("bad: lone surrogate", "POST", "/predictions/{model}", b'{"text": "\\ud800"}')),
    (
        1,
        _bad(
            "bad: huge integer",
            "POST",
            "/predictions/{model}",
            b'{"text": "a", "top_k": 1' + b"0" * 5000 + b"}",
        ),
    ),
    (1, _oversized),
    (2, _bad("bad: v2 FP32 strings", "POST", "/v2/models/{model}/infer", FP32_STRINGS)),
    (1, _giant_shape),
    (2, _bad("bad: unknown model", "POST", "/predictions/no-such-model", b'{"text": "a"}')),
    (2, _bad("bad: no key", "GET", "/models", b"")),
    (1, _wrong_key),
]


# ------------------------------------------------------------------------------------ results
@dataclass
class Tally:
    """What happened, aggregated (a 10-minute soak sends hundreds of thousands of requests)."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[tuple[str, int]] = field(default_factory=Counter)
    kills: list[float] = field(default_factory=list)
    good_failed_in_kill: int = 0
    failures: list[str] = field(default_factory=list)
    """Good requests that failed outside a kill window, and undocumented 5xx: the first few, described."""
    failure_count: int = 0
    refused_ok: int = 0
    """Hostile requests answered 2xx (only calls without the key can be: the server runs without auth)."""

    def record(self, request: Request, status: int, start: float, end: float, body: bytes) -> None:
        self.sent[request.kind] += 1
        self.statuses[status] += 1
        self.by_kind[(request.kind, status)] += 1
        if request.good and request.kind == "extra model":
            failed = status not in (200, 404)  # 404: not registered at the moment; never a 503 (the race)
        elif request.good:
            failed = status != 200
        else:
            failed = status >= 500 and status not in DOCUMENTED_5XX
            self.refused_ok += 200 <= status < 300
        if not failed:
            return
        if any(start <= kill <= end for kill in self.kills):  # in flight when a worker was killed
            self.good_failed_in_kill += request.good
            return
        self.failure_count += 1
        if len(self.failures) < 20:
            self.failures.append(f"{request.kind}: {status} {body[:200]!r}")


# ------------------------------------------------------------------------------------- client
async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """``(status, body, keep_alive)`` of one answer; 100 Continue is skipped."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
        return status, body, fields.get(b"connection", b"").lower() != b"close"


async def _client(
    number: int, target: Target, texts: list[str], deadline: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed * 1000 + number)
    weights = [weight for weight, _ in KINDS]
    builders = [builder for _, builder in KINDS]
    connections: dict[tuple[str, int], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    last_used: dict[tuple[str, int], float] = {}
    while time.monotonic() < deadline:
        request = rng.choices(builders, weights)[0](target, rng, texts)
        address = request.address
        start = time.monotonic()
        if address in connections and start - last_used[address] > IDLE_REUSE:
            connections.pop(address)[1].close()
        last_used[address] = start
        try:
            if address not in connections:
                connections[address] = await asyncio.open_connection(*address)
            reader, writer = connections[address]
            writer.write(request.data)
            status, body, keep_alive = await asyncio.wait_for(_read_answer(reader), 180)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            status, body, keep_alive = 0, repr(exc).encode(), False  # 0: no answer (connection lost)
        tally.record(request, status, start, time.monotonic(), body)
        if (not keep_alive or request.close_after) and address in connections:
            connections.pop(address)[1].close()
    for _, writer in connections.values():
        writer.close()


async def run_load(
    target: Target, texts: list[str], seconds: float, tally: Tally, concurrency: int, seed: int
) -> None:
    """``concurrency`` clients sending the mix to ``target`` for ``seconds``, answers into ``tally``."""
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_client(n, target, texts, deadline, tally, seed) for n in range(concurrency)))
