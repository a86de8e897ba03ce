"""The node-local model cache's protocol: what the pull (model server image) and the cache
agent (operator image) both speak, and the agent's metric names (docs/model-cache.md).

The pull asks ``GET {agent}/v1/artifact`` with the artifact in query parameters (``uri``,
``sha256`` when the spec pins one) and the store credentials it holds in request headers
(``CREDENTIAL_HEADERS``). The agent answers 200 with the bytes and ``SOURCE_HEADER`` saying
where they came from (one of ``SOURCES``), ``SHA256_HEADER`` (the digest of the bytes) and, when
it could not cache them, ``BYPASS_HEADER`` (the reason); 409 when it will not cache that kind
of artifact (a directory or a prefix: the pull then fetches directly), 403/404 when the store
refuses or lacks it with the caller's credentials, 502 when the store cannot be read.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

ARTIFACT_PATH = "/v1/artifact"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
PORT = 8090
"""The agent's HTTP port (pod port and Service port)."""

SOURCE_HEADER = "X-Model-Cache-Source"
SHA256_HEADER = "X-Model-Cache-Sha256"
BYPASS_HEADER = "X-Model-Cache-Bypass"
STORE_BYTES_HEADER = "X-Model-Cache-Store-Bytes"
"""Bytes the agent read from the store to answer this request (0 on a hit)."""

# Where a pull's bytes came from (the agent's SOURCE_HEADER and the pull marker's ``source``).
HIT = "cache-hit"
MISS = "cache-miss"
BYPASSED = "bypassed"
"""Through the agent, not cached (disk full, larger than the cache, no validator)."""
DIRECT = "direct"
"""Not through the agent (no agent configured, unreachable, or an artifact it does not take)."""
SOURCES = (HIT, MISS, BYPASSED, DIRECT)

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
"""The pull's credential variables, forwarded to the agent one header each."""
CREDENTIAL_PREFIX = "X-Model-Cache-Env-"


def credential_header(variable: str) -> str:
    """The request header that carries credential variable ``variable``."""
    return CREDENTIAL_PREFIX + variable.replace("_", "-")


CREDENTIAL_HEADERS = {credential_header(v): v for v in CREDENTIAL_ENV}
"""Header -> the variable it carries."""

CACHED_SCHEMES = ("http", "https", "s3")
"""The artifact URIs the agents of the chart cache: one object over http(s) or S3 (``file://``
only below an agent's ``--file-root``, which the chart sets none of; never ``pvc://``)."""


def not_cached(uri: str) -> str | None:
    """Why the node's cache agent will not cache ``uri`` as written (None: it takes it; an S3
    key that turns out to name no object is only found out by the agent)."""
    parts = urlsplit(uri)
    if parts.scheme not in CACHED_SCHEMES:
        return (f"{parts.scheme}:// is not cached (the agents cache one object over "
                "http(s):// or s3://)")
    if not parts.netloc:
        return f"{uri} names no host or bucket"
    if parts.scheme == "s3":
        key = unquote(parts.path.lstrip("/"))
        if not key or key.endswith("/"):
            return f"{uri} is an S3 prefix, not one object (pulled directly, never cached)"
    return None


# The agent's metrics (prometheus exposition adds ``_total`` to counters).
PREFIX = "msv_model_cache_"
STORE_BYTES = f"{PREFIX}store_bytes"
"""Counter: bytes read from model stores (misses and bypasses)."""
SERVED_BYTES = f"{PREFIX}served_bytes"
"""Counter: bytes served from cached entries."""
HITS = f"{PREFIX}hits"
MISSES = f"{PREFIX}misses"
BYPASSES = f"{PREFIX}bypasses"
"""Counter by ``reason``: answers streamed without caching."""
EVICTIONS = f"{PREFIX}evictions"
CORRUPT = f"{PREFIX}corrupt_entries"
"""Counter: entries whose bytes no longer matched their digest (dropped and re-fetched)."""
ENTRIES = f"{PREFIX}entries"
BYTES = f"{PREFIX}bytes"
"""Gauge: bytes of the cached entries."""
CAPACITY_BYTES = f"{PREFIX}capacity_bytes"
LABEL_REASON = "reason"
