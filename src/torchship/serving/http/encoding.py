"""HTTP content codings: request bodies sent gzip- or deflate-compressed, and gzip responses for clients that
accept them (``Accept-Encoding``).

A compressed body is inflated as it arrives, at most :data:`INFLATE_CHUNK` bytes of output per step, and the
inflated size is checked against the limit after every step: a small body that inflates to gigabytes (a
compression bomb) is refused (413) after at most ``limit + INFLATE_CHUNK`` bytes of output, never held whole.
The compressed bytes count against the same limit as they arrive (in ``Request.body``).

Errors::

    UnsupportedEncodingError   415  a Content-Encoding other than gzip, deflate or identity
    UserInputError             400  a body that is not valid data of its coding (corrupt, truncated)
    PayloadTooLargeError       413  a body that inflates past the limit
"""

from __future__ import annotations

import gzip
import zlib

from torchship.errors import TorchshipError, UserInputError
from torchship.serving.errors import PayloadTooLargeError

__all__ = [
    "INFLATE_CHUNK",
    "MIN_COMPRESSED_SIZE",
    "SUPPORTED_CODINGS",
    "Inflater",
    "UnsupportedEncodingError",
    "accepts_gzip",
    "compressible",
    "content_coding",
    "gzip_compress",
]

SUPPORTED_CODINGS = ("gzip", "deflate", "identity")

# Output per inflate step: what a bomb can cost past the limit, and small enough that a body inflates in
# cheap steps between which the limit is checked.
INFLATE_CHUNK = 64 * 1024

# Smaller bodies are sent as they are: below about one TCP segment, compressing saves no packet, and the
# gzip framing (18 bytes) and the CPU on both sides are pure cost.
MIN_COMPRESSED_SIZE = 1024

# Level 1 of 9: most of the saving on JSON for a fraction of the CPU of the default level 6, which matters
# because responses are compressed on the event loop.
_GZIP_LEVEL = 1

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 8.4.1.3: recipients treat x-gzip as gzip

# Content types whose data is compressed already: gzip would spend CPU to make them larger.
_COMPRESSED_TYPES = (
    b"image/",
    b"audio/",
    b"video/",
    b"application/gzip",
    b"application/x-gzip",
    b"application/zip",
    b"application/zstd",
    b"application/x-bzip2",
    b"application/x-xz",
    b"application/x-7z-compressed",
)


class UnsupportedEncodingError(TorchshipError):
    """The request body's ``Content-Encoding`` is one the server cannot decode (415, with the ones it can in
    ``Accept-Encoding``, as RFC 7694 asks)."""

    status = 415
    type = "UnsupportedMediaTypeException"

    def headers(self) -> dict[str, str]:
        return {"accept-encoding": "gzip, deflate"}


def content_coding(header: bytes) -> str | None:
    """The coding of a request body from its ``Content-Encoding`` header: ``"gzip"``, ``"deflate"``, or None
    (no header, or ``identity``); anything else, stacked codings included, is a 415."""
    if not header:
        return None
    codings = [coding.strip().lower() for coding in header.decode("latin-1").split(",")]
    codings = [_ALIASES.get(coding, coding) for coding in codings if coding and coding != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "deflate"):
        return codings[0]
    raise UnsupportedEncodingError(
        f"Content-Encoding {header.decode('latin-1')!r} is not supported; send the body with "
        "Content-Encoding gzip, deflate or identity (one of them), or uncompressed without the header."
    )


class Inflater:
    """Inflates one request body fed in pieces, within ``limit`` bytes of output.

    >>> inflater = Inflater("gzip", limit=1 << 20)
    >>> inflater.feed(gzip.compress(b"text"))
    >>> inflater.finish()
    b'text'

    ``deflate`` is the zlib format (RFC 9110); a raw deflate stream, which some clients send under that
    name, is recognised by its missing zlib header. A gzip body may hold several members, as ``gzip`` allows.
    """

    __slots__ = ("_coding", "_fed", "_inflater", "_limit", "_parts", "_pending", "_size")

    def __init__(self, coding: str, limit: int) -> None:
        self._coding = coding
        self._limit = limit
        self._inflater = zlib.decompressobj(_GZIP_WBITS) if coding == "gzip" else None
        self._parts: list[bytes] = []
        self._size = 0
        self._fed = False
        self._pending = b""  # deflate: the first byte, until the second tells zlib from raw deflate

    def feed(self, data: bytes) -> None:
        """Inflate the next piece of the body; 413 as soon as the output passes the limit, 400 if corrupt."""
        if not data:
            return
        self._fed = True
        if self._inflater is None:
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            self._pending = b""
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)
        self._inflate(data)

    def finish(self) -> bytes:
        """The whole inflated body; 400 if the stream ended early."""
        if self._pending:
            raise self._corrupt("the stream ended after its first byte")
        if self._inflater is None or not self._fed:
            return b""  # an empty body labelled compressed: nothing to inflate
        if not self._inflater.eof:
            raise self._corrupt("the stream ended early: the body is truncated")
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)

    def _inflate(self, data: bytes) -> None:
        inflater = self._inflater
        assert inflater is not None
        try:
            while True:
                if inflater.eof:
                    if not data:
                        return
                    if self._coding != "gzip":
                        raise self._corrupt("there is data after the end of the stream")
                    inflater = self._inflater = zlib.decompressobj(_GZIP_WBITS)  # the next gzip member
                out = inflater.decompress(data, INFLATE_CHUNK)
                self._size += len(out)
                if self._size > self._limit:
                    raise PayloadTooLargeError(
                        f"The request body inflates to more than max_request_size={self._limit} bytes "
                        f"(Content-Encoding: {self._coding}); send less, or start the server with a larger "
                        "--max_request_size"
                    )
                if out:
                    self._parts.append(out)
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                # A full chunk may leave output inside zlib with no input left: go round once more.
                if not data and (inflater.eof or len(out) < INFLATE_CHUNK):
                    return
        except zlib.error as exc:
            raise self._corrupt(str(exc)) from exc

    def _corrupt(self, why: str) -> UserInputError:
        return UserInputError(
            f"The request body is not valid {self._coding} data ({why}); send it {self._coding}-compressed "
            "whole, or uncompressed without Content-Encoding."
        )


def _zlib_header(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (RFC 1950: method 8, and a check that makes the two bytes
    a multiple of 31)."""
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def accepts_gzip(header: bytes) -> bool:
    """Whether an ``Accept-Encoding`` header allows a gzip response, q-values honoured.

    >>> accepts_gzip(b"gzip, deflate"), accepts_gzip(b"gzip;q=0, *"), accepts_gzip(b"br, *;q=0.1")
    (True, False, True)
    """
    star = 0.0
    for element in header.decode("latin-1").split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            return _quality(params) > 0
        if coding == "*":
            star = _quality(params)
    return star > 0


def _quality(params: str) -> float:
    """The q-value among ``;``-separated parameters: 1 when absent, 0 when malformed (not acceptable)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0
            return quality if 0.0 <= quality <= 1.0 else 0.0
    return 1.0


def compressible(content_type: bytes, size: int) -> bool:
    """Whether a response body is worth compressing: large enough, and not compressed data already."""
    return size >= MIN_COMPRESSED_SIZE and not content_type.lower().startswith(_COMPRESSED_TYPES)


def gzip_compress(body: bytes) -> bytes:
    """``body`` as a gzip member (no timestamp, so equal bodies compress to equal bytes)."""
    return gzip.compress(body, _GZIP_LEVEL, mtime=0)
