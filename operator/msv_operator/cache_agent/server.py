"""The agent's HTTP front end: ``GET /v1/artifact`` (``msv_contract.modelcache``), ``/healthz``
and ``/metrics``.

One request: the source of ``uri`` with the caller's credentials (headers) -> its HEAD
(authorises the caller and names the version) -> the key (the pinned SHA-256, else the URI
and version) -> ``Cache.obtain`` -> the entry's bytes with the headers saying whether they
were a hit or a miss. When the cache cannot take them (``Bypass``: disk full, too large, no
version) the store's bytes are streamed through, counted and reported in ``BYPASS_HEADER``.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from msv_contract import modelcache as mc
from msv_operator.cache_agent import sources, store

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20
_HEX = set("0123456789abcdef")


@dataclass
class Agent:
    """The cache, where files may be read from, and what the metrics count beyond the cache."""

    cache: store.Cache
    file_roots: tuple[Path, ...] = ()
    served_bytes: int = 0
    bypass_store_bytes: int = 0
    bypasses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, served: int = 0, store_bytes: int = 0, bypass: str | None = None) -> None:
        with self.lock:
            self.served_bytes += served
            self.bypass_store_bytes += store_bytes
            if bypass is not None:
                self.bypasses[bypass] += 1


class _Collector:
    """Reads the cache's state at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Any]:
        stats, cache = self.agent.cache.stats, self.agent.cache

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter(mc.STORE_BYTES, "Bytes read from model stores.",
                      stats.store_bytes + self.agent.bypass_store_bytes)
        yield counter(mc.SERVED_BYTES, "Bytes served from cached entries.",
                      self.agent.served_bytes)
        yield counter(mc.HITS, "Requests answered from a cached entry.", stats.hits)
        yield counter(mc.MISSES, "Requests that filled an entry from the store.", stats.misses)
        yield counter(mc.EVICTIONS, "Entries evicted to stay under the cap.", stats.evictions)
        yield counter(mc.CORRUPT, "Entries dropped because their bytes no longer matched.",
                      stats.corrupt)
        bypasses = CounterMetricFamily(mc.BYPASSES, "Answers streamed without caching.",
                                       labels=[mc.LABEL_REASON])
        with self.agent.lock:
            for reason, n in sorted(self.agent.bypasses.items()):
                bypasses.add_metric([reason], n)
        yield bypasses
        yield GaugeMetricFamily(mc.ENTRIES, "Cached entries.", value=cache.count)
        yield GaugeMetricFamily(mc.BYTES, "Bytes of the cached entries.", value=cache.bytes)
        yield GaugeMetricFamily(mc.CAPACITY_BYTES, "The cache's byte cap.",
                                value=cache.max_bytes)


def bypass_reason_label(reason: str) -> str:
    """A short, bounded label value for a bypass reason."""
    if "disk" in reason or "write" in reason:
        return "disk"
    if "larger than" in reason:
        return "too-large"
    if "in use" in reason:
        return "full"
    if "version" in reason:
        return "unversioned"
    return "other"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AgentServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == mc.HEALTH_PATH:
            self._plain(200, "ok\n")
        elif parts.path == mc.METRICS_PATH:
            body = generate_latest(self.server.registry)
            self._send_head(200, len(body), {"Content-Type": "text/plain; version=0.0.4"})
            self.wfile.write(body)
        elif parts.path == mc.ARTIFACT_PATH:
            self._artifact(urllib.parse.parse_qs(parts.query))
        else:
            self._plain(404, "not found\n")

    def _send_head(self, status: int, length: int | None, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _plain(self, status: int, text: str) -> None:
        body = text.encode()
        self._send_head(status, len(body), {"Content-Type": "text/plain; charset=utf-8"})
        self.wfile.write(body)

    def _artifact(self, query: dict[str, list[str]]) -> None:
        agent = self.server.agent
        uri = (query.get("uri") or [""])[0]
        sha256 = ((query.get("sha256") or [""])[0].strip().lower()) or None
        if not uri:
            self._plain(400, "the query parameter uri is required\n")
            return
        if sha256 is not None and (len(sha256) != 64 or not set(sha256) <= _HEX):
            self._plain(400, "the query parameter sha256 must be 64 hexadecimal characters\n")
            return
        env = {var: self.headers[name] for name, var in mc.CREDENTIAL_HEADERS.items()
               if self.headers.get(name)}
        try:
            source = sources.source_for(uri, env, agent.file_roots)
            head = source.head()
        except sources.NotCacheable as exc:
            self._plain(409, f"{exc}\n")
            return
        except sources.SourceError as exc:
            log.info("Store refused %s: %s", uri, exc)
            self._plain(exc.status, f"{exc}\n")
            return
        key = store.key_for(sha256, head.identity, head.version)
        try:
            if key is None:
                raise store.Bypass("the store names no version of the artifact (no ETag or "
                                   "Last-Modified) and the request pins no sha256")

            def fill(writer: Any) -> int:
                chunks, _ = source.open()
                read = 0
                for block in chunks:
                    read += len(block)
                    writer.write(block)
                return read

            lease = agent.cache.obtain(key, uri, fill, size_hint=head.size, sha256=sha256)
        except store.Bypass as exc:
            self._stream_through(source, uri, sha256, str(exc))
            return
        except store.ChecksumMismatch as exc:
            self._plain(502, f"{exc}\n")
            return
        except sources.SourceError as exc:
            self._plain(exc.status, f"{exc}\n")
            return
        with lease:
            self._stream_lease(lease, uri)

    def _stream_lease(self, lease: store.Lease, uri: str) -> None:
        agent = self.server.agent
        source = mc.HIT if lease.hit else mc.BYPASSED if lease.bypass else mc.MISS
        headers = {"Content-Type": "application/octet-stream", mc.SOURCE_HEADER: source,
                   mc.SHA256_HEADER: lease.sha256,
                   mc.STORE_BYTES_HEADER: str(lease.store_bytes)}
        if lease.bypass:
            headers[mc.BYPASS_HEADER] = lease.bypass
            agent.count(bypass=bypass_reason_label(lease.bypass))
            log.warning("Not caching %s: %s", uri, lease.bypass)
        self._send_head(200, lease.size, headers)
        sent = 0
        try:
            with lease.path.open("rb") as fh:
                while block := fh.read(STREAM_CHUNK):
                    self.wfile.write(block)
                    sent += len(block)
        except OSError as exc:
            log.warning("Streaming %s stopped after %d bytes: %s", uri, sent, exc)
            self.close_connection = True
        if lease.hit:
            agent.count(served=sent)
        log.info("Served %s (%s, %d bytes)", uri, source, sent)

    def _stream_through(self, source: sources.Source, uri: str, sha256: str | None,
                        reason: str) -> None:
        agent = self.server.agent
        log.warning("Not caching %s: %s", uri, reason)
        agent.count(bypass=bypass_reason_label(reason))
        try:
            chunks, size = source.open()
        except sources.SourceError as exc:
            self._plain(exc.status, f"{exc}\n")
            return
        headers = {"Content-Type": "application/octet-stream", mc.SOURCE_HEADER: mc.BYPASSED,
                   mc.BYPASS_HEADER: reason}
        if sha256:
            headers[mc.SHA256_HEADER] = sha256
        self._send_head(200, size, headers)
        sent = 0
        try:
            for block in chunks:
                self.wfile.write(block)
                sent += len(block)
        except (sources.SourceError, OSError) as exc:
            # The client sees fewer bytes than announced (or than the digest) and falls back.
            log.warning("Streaming %s through stopped after %d bytes: %s", uri, sent, exc)
            self.close_connection = True
        finally:
            agent.count(store_bytes=sent)


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        super().__init__(address, Handler)
        self.agent = agent
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(agent))  # type: ignore[arg-type]


def serve(agent: Agent, host: str = "0.0.0.0", port: int = mc.PORT) -> AgentServer:
    """A server bound to ``host:port`` (not yet serving: call ``serve_forever``)."""
    return AgentServer((host, port), agent)

