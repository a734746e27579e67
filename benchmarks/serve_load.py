"""Load generators for ``benchmarks/serve.py``: ``wrk`` with a Lua script when installed, else a lean
asyncio HTTP/1.1 keep-alive client (raw sockets on uvloop, so the client is not the bottleneck).

Each run cycles through the request bodies at a fixed number of open connections (the concurrency)
and reports throughput, latency percentiles and errors (non-2xx answers and socket errors).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["LoadResult", "run_load"]

_LUA = r"""
local bodies, index = {}, 0
function init(args)
  for line in io.lines(args[1]) do
    table.insert(bodies, wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line))
  end
  index = math.random(#bodies)
end
function request() index = index % #bodies + 1; return bodies[index] end
-- No response() callback: it would make wrk hand every response to Lua, CPU taken from the server on a
-- shared machine. wrk counts non-2xx/3xx answers itself (summary.errors.status).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    throughput: float
    p50: float
    p99: float
    errors: int
    tool: str


def run_load(url: str, bodies: list[str], concurrency: int, duration: float, work: Path) -> LoadResult:
    """Load ``url`` with POSTs of ``bodies`` from ``concurrency`` connections for ``duration`` seconds."""
    if shutil.which("wrk"):
        return _wrk(url, bodies, concurrency, duration, work)
    return asyncio.run(_asyncio_load(url, bodies, concurrency, duration))


def _wrk(url: str, bodies: list[str], concurrency: int, duration: float, work: Path) -> LoadResult:
    script, data = work / "post.lua", work / "bodies.txt"
    script.write_text(_LUA)
    data.write_text("\n".join(bodies) + "\n")
    threads = min(2, concurrency)
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(duration))}s",  # wrk takes whole seconds
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
        "--",
        str(data),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    return LoadResult(
        concurrency,
        result["requests"] / (result["duration_us"] / 1e6),
        result["p50_us"] / 1e6,
        result["p99_us"] / 1e6,
        result["errors"] + result["socket_errors"],
        "wrk",
    )


async def _asyncio_load(url: str, bodies: list[str], concurrency: int, duration: float) -> LoadResult:
    parts = urlsplit(url)
    requests = [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n"
        ).encode()
        + body.encode()
        for body in bodies
    ]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def client(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        index = offset
        while time.perf_counter() < deadline:
            index = (index + 1) % len(requests)
            start = time.perf_counter()
            writer.write(requests[index])
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors += status_line.split()[1] != b"200"
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i * 7) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return LoadResult(
        concurrency, len(latencies) / elapsed, statistics.median(latencies), p99, errors, "asyncio"
    )
