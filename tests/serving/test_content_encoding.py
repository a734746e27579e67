"""Content codings (``serving/http/encoding.py``): gzip and deflate request bodies on every route that reads
one, within ``max_request_size`` counted after inflating (a compression bomb is a 413 without a memory
spike), and gzip responses for clients that accept them."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_handlers import EchoAPI
from serving_support import running, settings, wait_ready

from torchship.errors import UserInputError
from torchship.serving import Server
from torchship.serving.errors import PayloadTooLargeError
from torchship.serving.http.encoding import (
    INFLATE_CHUNK,
    Inflater,
    UnsupportedEncodingError,
    accepts_gzip,
    content_coding,
)

LIMIT = 1 << 20  # max_request_size of the server below
PAYLOAD = {"text": "the team won the cup final with a late goal " * 40}  # ~1.8 KB of JSON, echoed back


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _bomb(megabytes: int) -> bytes:
    """``megabytes`` MiB of zeros, gzip-compressed about 230:1, built without holding them whole."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(megabytes)), compressor.flush()])


def _memory(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of this process, in bytes: the server runs in a thread of
    it. The peak is what a spike shows in: freed buffers return to the system, so resident memory falls
    back after one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start ``VmHWM`` again from the resident size now (Linux's ``clear_refs``, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak resident size here ({exc})")


# ----------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:100]) + gzip.compress(data[100:])),  # two members
        ("deflate", zlib.compress),  # the zlib format, as RFC 9110 defines deflate
        ("deflate", _raw_deflate),  # raw deflate, as some clients send it
    ],
)
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_inflates_a_body_fed_in_any_pieces(coding: str, encode: Any, piece: int) -> None:
    data = json.dumps(PAYLOAD).encode() * 50
    compressed = encode(data)
    inflater = Inflater(coding, LIMIT)
    for start in range(0, len(compressed), piece):
        inflater.feed(compressed[start : start + piece])
    assert inflater.finish() == data


def test_a_bomb_stops_within_one_chunk_past_the_limit() -> None:
    inflater = Inflater("gzip", LIMIT)
    with pytest.raises(PayloadTooLargeError, match="inflates to more than max_request_size=1048576"):
        inflater.feed(_bomb(16))
    assert LIMIT < inflater._size <= LIMIT + INFLATE_CHUNK


@pytest.mark.parametrize(
    ("coding", "body", "why"),
    [
        ("gzip", gzip.compress(b"x" * 1000)[:-4], "truncated"),
        ("gzip", b"this is not gzip", "incorrect header check"),
        ("deflate", zlib.compress(b"x") + b"more", "data after the end of the stream"),
        ("deflate", b"x", "ended after its first byte"),
    ],
)
def test_corrupt_streams_are_400s_naming_the_coding(coding: str, body: bytes, why: str) -> None:
    inflater = Inflater(coding, LIMIT)
    with pytest.raises(UserInputError, match=f"not valid {coding} data .*{why}"):
        inflater.feed(body)
        inflater.finish()


@pytest.mark.parametrize(
    ("header", "coding"),
    [(b"", None), (b"identity", None), (b"GZIP", "gzip"), (b" x-gzip ", "gzip"), (b"deflate", "deflate")],
)
def test_content_encoding_names_the_coding(header: bytes, coding: str | None) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", [b"br", b"zstd", b"gzip, deflate", b"compress"])
def test_other_content_encodings_are_415s_naming_the_supported_ones(header: bytes) -> None:
    with pytest.raises(UnsupportedEncodingError, match="gzip, deflate or identity") as error:
        content_coding(header)
    assert error.value.headers() == {"accept-encoding": "gzip, deflate"}


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"deflate, gzip;q=0.5", True),
        (b"GZIP; Q=1.0", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.000, *", False),  # gzip named: its own q-value decides
        (b"*;q=0", False),
        (b"br;q=1, identity", False),
        (b"gzip;q=high", False),  # a malformed q-value is not taken as acceptance
        (b"", False),
    ],
)
def test_accept_encoding_honours_q_values(header: bytes, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


# --------------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running(settings(max_request_size=LIMIT), [EchoAPI(name="m", workers=1)]) as server:
        wait_ready(server)
        yield server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.urls["inference"], timeout=60) as client:
        yield client


def _post(client: httpx.Client, path: str, payload: Any, coding: str | None) -> httpx.Response:
    data = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if coding is not None:
        data = {"gzip": gzip.compress, "deflate": zlib.compress}[coding](data)
        headers["content-encoding"] = coding
    return client.post(path, content=data, headers=headers)


@pytest.mark.slow
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_bodies_get_the_answers_of_plain_ones(client: httpx.Client, coding: str) -> None:
    plain = _post(client, "/predictions/m", PAYLOAD, None)
    packed = _post(client, "/predictions/m", PAYLOAD, coding)
    assert plain.status_code == packed.status_code == 200, packed.text
    assert packed.json()["echo"] == plain.json()["echo"] == PAYLOAD
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}],
               "outputs": [{"name": "echo"}]}  # fmt: skip
    plain = _post(client, "/v2/models/m/infer", request, None)
    packed = _post(client, "/v2/models/m/infer", request, coding)
    assert plain.status_code == packed.status_code == 200, packed.text
    assert packed.json()["outputs"] == plain.json()["outputs"]
    assert packed.json()["outputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_compression_bomb_is_a_413_without_a_memory_spike(client: httpx.Client) -> None:
    bomb = _bomb(200)  # 200 MiB of zeros in under 1 MiB: within the limit until inflated
    assert len(bomb) < LIMIT
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    _reset_peak()
    before = _memory("VmRSS")
    for path in ("/predictions/m", "/v2/models/m/infer"):
        response = client.post(path, content=bomb, headers=headers)
        assert response.status_code == 413, response.text
        assert "inflates to more than max_request_size=1048576" in response.text
    grown = _memory("VmHWM") - before  # an unchunked inflate peaks 50 MiB or more higher
    # Holding limit + one chunk is about 1 MiB; the bound leaves room for the allocator and httpx.
    assert grown < 16 * 2**20, f"the server's memory peaked {grown / 2**20:.0f} MiB higher"


@pytest.mark.slow
def test_a_corrupt_stream_is_a_400_naming_the_coding(client: httpx.Client) -> None:
    response = client.post("/predictions/m", content=b"not gzip at all", headers={"content-encoding": "gzip"})
    assert response.status_code == 400
    assert "not valid gzip data" in response.json()["message"]
    response = client.post(
        "/v2/models/m/infer", content=zlib.compress(b"{}")[:-3], headers={"content-encoding": "deflate"}
    )
    assert response.status_code == 400
    assert "not valid deflate data" in response.json()["error"]


@pytest.mark.slow
def test_an_unknown_coding_is_a_415_naming_the_supported_ones(client: httpx.Client) -> None:
    response = client.post("/predictions/m", content=b"{}", headers={"content-encoding": "br"})
    assert response.status_code == 415
    assert response.headers["accept-encoding"] == "gzip, deflate"
    assert "gzip, deflate or identity" in response.json()["message"]


@pytest.mark.slow
def test_large_responses_are_gzipped_for_clients_that_accept_it(client: httpx.Client) -> None:
    plain = client.post("/predictions/m", json=PAYLOAD, headers={"accept-encoding": "identity"})
    packed = client.post("/predictions/m", json=PAYLOAD, headers={"accept-encoding": "gzip"})
    refused = client.post("/predictions/m", json=PAYLOAD, headers={"accept-encoding": "gzip;q=0"})
    assert plain.status_code == packed.status_code == refused.status_code == 200
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert packed.num_bytes_downloaded < len(plain.content) // 2  # compressed on the wire
    assert packed.json()["echo"] == plain.json()["echo"] == PAYLOAD  # httpx inflated it
    for response in (plain, refused):
        assert "content-encoding" not in response.headers
        assert response.headers["vary"] == "Accept-Encoding"
    tiny = client.post("/predictions/m", json={"text": "hi"}, headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in tiny.headers  # under MIN_COMPRESSED_SIZE: not worth it


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sends_gzip_bodies_and_reads_compressed_answers(server: Server, tmp_path: Path) -> None:
    url = server.urls["inference"] + "/predictions/m"
    body = tmp_path / "body.json.gz"
    body.write_bytes(gzip.compress(json.dumps(PAYLOAD).encode()))
    headers = tmp_path / "headers.txt"
    sent = subprocess.run(
        ["curl", "-sS", "--data-binary", f"@{body}", "-H", "Content-Encoding: gzip",
         "-H", "Content-Type: application/json", "--compressed", "-D", str(headers), url],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(sent.stdout)["echo"] == PAYLOAD
    assert "content-encoding: gzip" in headers.read_text().lower()
