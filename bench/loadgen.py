"""A small closed-loop HTTP/1.1 load generator for the benchmarks (loopback only).

Each of `concurrency` workers holds one keep-alive connection and sends the same
pre-encoded request again as soon as the previous response arrived, until `duration_s`
passed or `max_requests` were sent. Responses are framed by Content-Length (or chunked) and
their status counted; latencies are measured per request with perf_counter. Written on raw
asyncio streams (uvloop when installed) so the client costs far less per request than the
servers it measures.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_s: list[float] = field(repr=False)
    statuses: dict[int, int]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q / 100.0 * len(data)))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50) * 1000, 3),
            "p90_ms": round(self.pct(90) * 1000, 3),
            "p99_ms": round(self.pct(99) * 1000, 3),
            "mean_ms": round(statistics.fmean(self.latencies_s) * 1000, 3)
            if self.latencies_s
            else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
        }


class Medians:
    """Medians over rounds: `runs[server][level]` is a list of per-round summaries."""

    def __init__(self, runs: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        self.runs = runs

    def __call__(self, name: str, level: str, field: str) -> float:
        return float(statistics.median(r[field] for r in self.runs[name][level]))

    def ratio(self, a: str, b: str, level: str, field: str) -> float:
        """Median of server `a` over that of server `b`."""
        return round(self(a, level, field) / self(b, level, field), 3)

    def added(self, a: str, b: str, level: str, field: str) -> float:
        """Median of server `a` minus that of server `b`."""
        return round(self(a, level, field) - self(b, level, field), 3)


def build_request(
    method: str,
    host: str,
    port: int,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    for k, v in hdrs.items():
        lines.append(f"{k}: {v}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection after this response)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    closes = b"\r\nconnection: close" in lower
    idx = lower.find(b"content-length:")
    if idx >= 0:
        end = lower.index(b"\r\n", idx)
        length = int(lower[idx + 15 : end])
        if length:
            await reader.readexactly(length)
        return status, closes
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return status, closes
    raise RuntimeError("response without length")


async def _run(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup_s: float,
    tls: Any = None,
) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    sent = 0
    stop_at = 0.0
    measuring = False

    async def worker() -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at or (measuring and sent >= max_requests):
                    return
                if measuring:
                    sent += 1
                t0 = time.perf_counter()
                writer.write(request)
                try:
                    status, closes = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError, RuntimeError):
                    if measuring:
                        errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                if closes:  # the server ends keep-alive here (e.g. nginx's keepalive_requests)
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        finally:
            writer.close()

    if warmup_s > 0:
        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    measuring = True
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), elapsed, latencies, statuses, errors)


def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int = 1,
    duration_s: float = 3.0,
    max_requests: int = 200_000,
    warmup_s: float = 0.5,
    tls: Any = None,
) -> LoadResult:
    """Drive `request` at the server with a closed loop of `concurrency` connections
    (over TLS when `tls` is an `ssl.SSLContext`)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_run(host, port, request, concurrency, duration_s, max_requests, warmup_s, tls))  # type: ignore[no-any-return]


def wait_http(host: str, port: int, path: str, timeout_s: float = 60.0) -> None:
    """Block until GET path answers 200 (server started and model ready)."""
    import http.client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"http://{host}:{port}{path} did not answer 200 within {timeout_s} s")


def free_port() -> int:
    """A free loopback port (localcluster.ports: below the ephemeral range)."""
    from localcluster.ports import free_port as pick

    return pick()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process `pid` (Linux /proc)."""
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 15) -> None:
    """Terminate every server process, then wait for each (kill the ones that hang)."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def result_header(name: str, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """The fields every bench/results/*.json starts with: what ran, when, where."""
    import platform
    import sys

    return {
        "benchmark": name,
        "command": f"python bench/{name}.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": load_at_start,
        },
    }
