"""Hypothesis strategies for ``test_fuzz``: hostile strings, bodies, v2 tensors, headers and raw HTTP.

Kept apart from the test module so that the test reads as properties and this file as the attacker's
toolbox. Every strategy draws from a few explicit hostile values (the ones that broke the server before)
mixed with random data, so a small ``max_examples`` still reaches each of them.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

MAX_REQUEST_SIZE = 65_536
"""The fuzz server's ``max_request_size``: small, so an oversized body costs the test nothing."""

FIXTURE_MODELS = ("news", "echo")
"""The models the fuzz server serves; no fuzzed call may change them (mutations go to THROWAWAY)."""

THROWAWAY = "scratch"
"""The model name that register, scale, set-default and unregister calls are fuzzed against."""

# ----------------------------------------------------------------------------------- strings
LONE_SURROGATES = ("\ud800", "\udfff", "a\ud800b", "\udc00\ud800")

HOSTILE_STRINGS = (
    "",
    " ",
    "0",
    "-1",
    "+1",
    " 1",
    "1_0",  # int() reads 10
    "\u0661",  # ARABIC-INDIC DIGIT ONE: int() reads 1
    "\U0001d7d9",  # MATHEMATICAL DOUBLE-STRUCK DIGIT ONE: int() reads 1
    "0x10",
    "1.5",
    "1e3",
    "1e309",
    "-1e309",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "NaN",
    "9" * 30,
    "9" * 5000,  # past Python's int digit limit (4300)
    "-" + "9" * 5000,
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "\x00",
    "..",
    "../..",
    "%00",
    "%2e%2e",
    "a" * 3000,
    "é",
    "模型",
    "\u202e",
    *LONE_SURROGATES,
)


def hostile_text(max_size: int = 24) -> st.SearchStrategy[str]:
    """A hostile string: one of HOSTILE_STRINGS, any text (lone surrogates included), or a number."""
    surrogate = st.integers(0xD800, 0xDFFF).map(chr)
    # One surrogate alone between ordinary text (two adjacent ones may pair into a valid character).
    lone = st.builds(
        lambda a, s, b: a + s + b, st.text(max_size=6), st.sampled_from(LONE_SURROGATES), st.text(max_size=6)
    )
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        lone,
        st.text(st.characters() | surrogate, max_size=max_size),
        st.integers().map(str),
        st.floats().map(repr),
    )


def quote_any(text: str) -> str:
    """Percent-encode any string for a URL, lone surrogates included (as their UTF-8-like bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def query_string(params: dict[str, str]) -> str:
    return "&".join(f"{quote_any(key)}={quote_any(value)}" for key, value in params.items())


# ------------------------------------------------------------------------------------ bodies
def nested(depth: int, kind: str) -> bytes:
    """``[[[...]]]`` or ``{"a":{"a":...}}`` ``depth`` levels deep (a RecursionError in a naive parser)."""
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


GZIP_BOMB = gzip.compress(b"\0" * (8 << 20), compresslevel=9)
"""8 MiB of zeros in ~8 KB: a body that is small on the wire and large once inflated."""

HOSTILE_BODIES = (
    b"",
    b" ",
    b"null",
    b"[]",
    b"{}",
    b"{",
    b'{"text": ',
    b"\xff\xfe\x00",
    b"\xed\xa0\x80",  # a surrogate encoded as UTF-8: invalid UTF-8
    b'{"text": "\\ud800"}',
    b'{"text": "a\\udfffb", "top_k": 1}',
    b'"\\ud800"',
    b'{"text": 5}',
    b'{"text": null}',
    b'{"text": ["a"]}',
    b'{"text": {"text": "a"}}',
    b'{"texts": ["a", "b"]}',
    b'{"text": "a", "top_k": 0}',
    b'{"text": "a", "top_k": -1}',
    b'{"text": "a", "top_k": true}',
    b'{"text": "a", "top_k": 1e400}',
    b'{"text": "a", "top_k": ' + b"1" * 5000 + b"}",
    b"1" * 5000,
    b"-" + b"1" * 5000,
    b"1e999999",
    b"NaN",
    b"[Infinity, -Infinity, NaN]",
    b'{"a": 1, "a": 2}',
    nested(5000, "list"),
    nested(5000, "dict"),
    nested(20000, "list"),
    nested(1000, "list"),
    b'{"text": "' + b"a" * (MAX_REQUEST_SIZE - 20) + b'"}',  # just under the limit
    b"x" * (MAX_REQUEST_SIZE + 1),  # just over
    GZIP_BOMB,
)


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON-like value, NaN and infinities included (Python's json writes and reads them)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**63, -(2**63) - 1, 10**400]),
        st.floats(),
        hostile_text(12),
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(hostile_text(8), children, max_size=4)
        ),
        max_leaves=16,
    )


def bodies() -> st.SearchStrategy[bytes]:
    """Request bodies: the hostile ones, random bytes, random JSON, and texts (good ones queue work; odd
    ones, lone surrogates or a ``top_k`` of any type, reach the handler)."""
    text = st.text(max_size=60) | hostile_text(60)
    texts = st.fixed_dictionaries({"text": text}, optional={"top_k": json_values()})
    return st.one_of(
        st.sampled_from(HOSTILE_BODIES),
        st.sampled_from(HOSTILE_BODIES),
        st.binary(max_size=300),
        json_values().map(lambda value: json.dumps(value).encode()),
        st.builds(nested, st.sampled_from([50, 900, 1100, 3000]), st.sampled_from(["list", "dict"])),
        texts.map(lambda document: json.dumps(document).encode()),
    )


# ---------------------------------------------------------------------------------- headers
CONTENT_TYPES = (
    None,
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/json; charset=latin-1",
    b"APPLICATION/JSON",
    b"text/plain",
    b"text/plain; charset=utf-16",
    b"application/octet-stream",
    b"multipart/form-data; boundary=x",
    b"multipart/form-data",
    b"application/x-www-form-urlencoded",
    b"image/png",
    b"",
    b";;;",
    b"application/json" + b"; x=y" * 500,
    b"\xff\xfe",
)

ORIGINS = (
    None,
    b"http://attacker.example",
    b"https://evil.example:8443",
    b"null",
    b"http://127.0.0.1",
    b"http://localhost:8080",
    b"file://",
    b"\xff",
)

HOSTS = (
    None,  # the client's own (127.0.0.1:port)
    b"localhost",
    b"127.0.0.1",
    b"[::1]",
    b"attacker.example",
    b"attacker.example:8080",
    b"127.0.0.1.attacker.example",
    b"localhost.attacker.example",
    b"",
    b"a" * 300,
    b"\xff",
)


@dataclass(frozen=True)
class Headers:
    """The hostile headers of one call; ``auth`` names a key (``"management"``...) or is a raw value."""

    content_type: bytes | None
    origin: bytes | None
    host: bytes | None
    auth: str | bytes | None
    encoding: bytes | None
    extra: tuple[tuple[bytes, bytes], ...]


AUTH = (
    None,
    "management",
    "inference",
    "API",
    b"Bearer",
    b"Bearer  wrong",
    b"Bearer wrong",
    b"bearer wrong",
    b"Basic YWRtaW46YWRtaW4=",
    b"Bearer " + b"a" * 5000,
    b"Bearer \xff\xfe",
)


def mostly(usual: Any, others: Sequence[Any]) -> st.SearchStrategy[Any]:
    """``usual`` about three times in four, else one of ``others``: hostile headers one at a time, so that
    most calls get past the edge's checks to the code behind them."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(others))


def headers(*, default_auth: str | None = None) -> st.SearchStrategy[Headers]:
    """Headers with hostile values; ``default_auth`` names the key a well-behaved client would send."""
    # Values an HTTP client can send (visible ASCII, spaces inside, bytes >= 0x80); control bytes and
    # stray whitespace are the raw-framing test's.
    octet = st.integers(0x20, 0x7E) | st.integers(0x80, 0xFF)
    header_value = st.lists(octet, max_size=40).map(lambda codes: bytes(codes).strip(b" "))
    return st.builds(
        Headers,
        content_type=st.just(b"application/json") | st.sampled_from(CONTENT_TYPES),
        origin=mostly(None, ORIGINS),
        host=mostly(None, HOSTS),
        auth=mostly(default_auth, AUTH),
        encoding=mostly(None, [b"gzip", b"deflate", b"br", b"identity", b"gzip, gzip", b"x"]),
        extra=st.lists(
            st.tuples(
                st.sampled_from([b"x-fuzz", b"accept", b"expect", b"x-forwarded-for", b"cookie"]),
                header_value,
            ),
            max_size=3,
        ).map(tuple),
    )


# ------------------------------------------------------------------------------- v2 tensors
V2_DATATYPES = (
    "BYTES",
    "FP32",
    "FP64",
    "FP16",
    "BF16",
    "INT64",
    "INT8",
    "UINT8",
    "UINT64",
    "BOOL",
    "bytes",
    "STRING",
    "FP32 ",
    "",
)

GIANT_DIMS = (10**6, 10**9, 2**31, 2**63, 10**30, 10**400)


def v2_tensors() -> st.SearchStrategy[Any]:
    """One v2 input tensor: well formed with good data, or hostile in any of its four fields."""
    dim = st.one_of(
        st.integers(0, 4),
        st.sampled_from(GIANT_DIMS),
        st.sampled_from([-1, True, False, 1.0, 1e308, float("inf"), "1", None, [1]]),
    )
    shape = st.one_of(st.lists(dim, max_size=4), st.sampled_from([[], None, "2", 2, {"0": 2}, [[2]]]))
    data = st.one_of(
        json_values(),
        st.lists(hostile_text(12), max_size=6),
        st.lists(st.floats() | st.integers(), max_size=8),
        st.lists(st.lists(st.floats(allow_nan=False), min_size=2, max_size=2), max_size=4),
    )
    hostile = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["text", "x", ""]) | json_values(),
            "datatype": st.sampled_from(V2_DATATYPES) | json_values(),
            "shape": shape,
            "data": data,
            "parameters": json_values(),
        },
    )
    return st.one_of(good_text_tensors(), giant_tensors(), hostile, json_values())


def good_text_tensors() -> st.SearchStrategy[dict[str, Any]]:
    """A valid BYTES tensor of 1-48 texts: real work for the workers between the hostile calls."""
    return st.lists(st.text(max_size=40), min_size=1, max_size=48).map(
        lambda texts: {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    )


def giant_tensors() -> st.SearchStrategy[dict[str, Any]]:
    """Shapes that claim far more rows than they carry (issue 13, case 1), with zero or mismatched data."""
    return st.builds(
        lambda rows, tail, data, datatype: {
            "name": "text",
            "datatype": datatype,
            "shape": [rows, *tail],
            "data": data,
        },
        st.sampled_from(GIANT_DIMS),
        st.sampled_from([[0], [], [1], [0, 10**9], [10**9]]),
        st.sampled_from([[], ["a"], [[]]]),
        st.sampled_from(["BYTES", "FP32"]),
    )


def v2_documents() -> st.SearchStrategy[Any]:
    """A v2 inference request: ``{"inputs": [...]}`` with optional id, outputs and parameters, or junk."""
    document = st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensors(), max_size=3) | json_values()},
        optional={
            "id": json_values(),
            "outputs": st.lists(st.fixed_dictionaries({"name": hostile_text(8)}), max_size=2) | json_values(),
            "parameters": json_values(),
        },
    )
    return document | json_values()


# --------------------------------------------------------------------------------- raw HTTP
CONTENT_LENGTHS = (
    None,
    "exact",  # the body's length
    "short",  # one less: the last byte starts the next request
    "long",  # more than is sent: the server waits for the rest
    b"-1",
    b"+5",
    b" 5 ",
    b"0x10",
    b"5.0",
    b"99999999999999999999999999",
    b"abc",
    b"",
    "twice",  # two different Content-Length headers (request smuggling)
)

TRANSFER_ENCODINGS = (
    None,
    b"chunked",
    b"gzip, chunked",
    b"chunked, identity",
    b"identity",
    b"xchunked",
)

REQUEST_TARGETS = (
    b"/ping",
    b"/predictions/echo",
    b"/predictions/news/1",
    b"/v2/models/echo/infer",
    b"/v2/health/ready",
    b"/models",
    b"/models/news",
    b"*",
    b"http://attacker.example/ping",
    b"//ping",
    b"/ping?" + b"a=1&" * 2000,
    b"/" + b"a" * 10_000,
    b"/\xff\xfe",
    b"/%",
    b"/predictions/%ff",
    b"",
)


@dataclass(frozen=True)
class RawRequest:
    """One request as bytes on the wire, and whether it is complete (an answer is due at once)."""

    data: bytes
    complete: bool
    head: bool = False
    """A HEAD request: its answer has a Content-Length but no body."""


def _raw(
    method: bytes,
    target: bytes,
    version: bytes,
    host: bytes | None,
    content_length: bytes | str | None,
    transfer_encoding: bytes | None,
    body: bytes,
    extra: list[tuple[bytes, bytes]],
) -> RawRequest:
    lines = [method + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    complete = True
    if content_length == "exact":
        lines.append(b"Content-Length: %d" % len(body))
    elif content_length == "short":
        lines.append(b"Content-Length: %d" % max(0, len(body) - 1))
    elif content_length == "long":
        lines.append(b"Content-Length: %d" % (len(body) + 100))
        complete = False
    elif content_length == "twice":
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    elif isinstance(content_length, bytes):
        lines.append(b"Content-Length: " + content_length)
    if transfer_encoding is not None:
        lines.append(b"Transfer-Encoding: " + transfer_encoding)
        if b"chunked" in transfer_encoding:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    lines += [name + b": " + value for name, value in extra]
    return RawRequest(b"\r\n".join(lines) + b"\r\n\r\n" + body, complete, method == b"HEAD")


def raw_requests() -> st.SearchStrategy[RawRequest]:
    """Requests with broken framing: odd Content-Length and Transfer-Encoding, odd targets, huge headers."""
    loopback = b"127.0.0.1"
    extra = st.lists(
        st.one_of(
            st.tuples(st.just(b"Content-Type"), st.sampled_from([b"application/json", b"text/plain"])),
            st.tuples(st.just(b"X-Big"), st.sampled_from([b"a" * 8_000, b"a" * 100_000])),
            st.tuples(st.just(b"Expect"), st.just(b"100-continue")),
            st.tuples(st.just(b"Connection"), st.sampled_from([b"close", b"keep-alive", b"upgrade"])),
            st.tuples(st.just(b"Upgrade"), st.sampled_from([b"websocket", b"h2c"])),
            st.tuples(st.just(b"Bad Name"), st.just(b"x")),
            st.tuples(st.just(b"X-Nul"), st.sampled_from([b"a\x00b", b"a\x04b", b"a\x7fb"])),
            st.tuples(st.just(b"Authorization"), st.sampled_from([b"Bearer ", b"Bearer\t", b" Bearer x "])),
        ),
        max_size=3,
    )
    return st.builds(
        _raw,
        method=st.sampled_from(
            [
                b"GET",
                b"POST",
                b"PUT",
                b"DELETE",
                b"OPTIONS",
                b"HEAD",
                b"CONNECT",
                b"get",
                b"FOO",
                b"P\xffST",
                b"",
            ]
        ),
        target=st.sampled_from(REQUEST_TARGETS),
        version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x", b""]),
        host=st.sampled_from([loopback, None, b"attacker.example", b"", b"a" * 70_000]),
        content_length=st.sampled_from(CONTENT_LENGTHS),
        transfer_encoding=st.sampled_from(TRANSFER_ENCODINGS),
        body=st.sampled_from([b"", b'{"text": "a"}', b"[" * 3000 + b"]" * 3000, b"\xff" * 10]),
        extra=extra,
    )
