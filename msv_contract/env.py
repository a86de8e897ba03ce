"""The operator -> model server contract: environment, mounts and ports of a server pod.

The operator configures the server only through these `MODEL_SERVER_*` variables
(docs/architecture.md has the table); the server's `Settings` reads them with `PREFIX`.
tests/unit/test_env_contract.py parses the environment of built Deployments with the
server's own `Settings`, so the two sides cannot drift apart.
"""

from __future__ import annotations

PREFIX = "MODEL_SERVER_"


def var(setting: str) -> str:
    """The environment variable of a server setting: ``var("model_dir")`` ->
    ``MODEL_SERVER_MODEL_DIR``."""
    return PREFIX + setting.upper()


# The variables the operator sets (each is a field of model_server.settings.Settings).
MODEL_NAME = var("model_name")
VARIANT = var("variant")
MODEL_DIR = var("model_dir")
FRAMEWORK = var("framework")
TASK = var("task")
QUANTIZATION = var("quantization")
PRUNING_METHOD = var("pruning_method")
PRUNING_AMOUNT = var("pruning_amount")
MAX_BATCH_SIZE = var("max_batch_size")
MAX_DELAY_MS = var("max_delay_ms")
DEVICE = var("device")
PORT = var("port")
GRPC_PORT = var("grpc_port")
DRAIN_SECONDS = var("drain_seconds")
TORCH_THREADS = var("torch_threads")
AUTH_TOKENS = var("auth_tokens")
AUTH_METRICS = var("auth_metrics")
TLS_CERT_FILE = var("tls_cert_file")
TLS_KEY_FILE = var("tls_key_file")
MIRROR_FILE = var("mirror_file")
MIRROR_URL = var("mirror_url")
MIRROR_PERCENT = var("mirror_percent")
MIRROR_VARIANT = var("mirror_variant")

# Where the operator mounts things in the server container.
MODEL_MOUNT = "/mnt/models"
"""The model: the pull init container's download directory, or the PVC."""
CLAIM_MOUNT = "/mnt/claim"
"""A ``pvc://`` model that names an archive: its claim, read-only, in the pull init container
only (the pull unpacks the archive into ``MODEL_MOUNT``, checking its sha256)."""
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
"""A single pulled file with one of these endings is an archive: `model-server pull` unpacks
it."""
AUTH_MOUNT = "/etc/model-server/auth"
"""The token Secret (one token per key)."""
TLS_MOUNT = "/etc/model-server/tls"
"""The kubernetes.io/tls Secret (``tls.crt``, ``tls.key``)."""
PODINFO_MOUNT = "/etc/model-server/pod"
"""The downward API volume; ``annotations`` there carries the mirror annotation."""
PODINFO_ANNOTATIONS = f"{PODINFO_MOUNT}/annotations"

# Ports of the server container (the Services map 80 -> HTTP_PORT).
HTTP_PORT = 8080
"""OIP v2 REST, the OpenAI-compatible API, /metrics and the health probes."""
GRPC_PORT_NUMBER = 8081
"""OIP v2 gRPC."""

# The health endpoints the kubelet probes (open without a token).
LIVE_PATH = "/v2/health/live"
"""200 as soon as the process serves HTTP, also while the model loads (liveness)."""
READY_PATH = "/v2/health/ready"
"""200 once the model is loaded and serving, 503 before, after a failure and while draining
(startup and readiness)."""
READY_WAIT_PARAM = "wait"
"""``READY_PATH?wait=<seconds>``: while the model is loading, answer once it is ready or after
that long (at most ``READY_WAIT_MAX_SECONDS``), not at once. The startup probe asks so: the pod
is Ready within milliseconds of the load's end instead of on the probe's next tick."""
READY_WAIT_MAX_SECONDS = 5.0

# The Secrets the operator mounts, as it mounts them.
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
TLS_CA_KEY = "ca.crt"
"""The CA of the serving certificate, in the TLS Secret as cert-manager writes it: the
ServiceMonitor verifies the pods' certificate with it (the server never reads it)."""
METRICS_TOKEN_KEY = "token"
"""The token Secret's key Prometheus presents on /metrics with protectMetrics, unless
``spec.server.auth.metricsTokenKey`` names another."""

# The back channel: when a mounted Secret cannot be used, `model-server serve` exits 2 and its
# one-line termination message carries one of these words followed by ": " (the server's
# ConfigError.reason); the operator's status turns it into the Ready condition's reason,
# naming the Secret and its spec field.
AUTH_SECRET_MISSING = "AuthSecretMissing"
"""The token directory holds no file: the token Secret does not exist or has no keys."""
NO_TOKENS = "NoTokens"
"""The token files hold no token (empty values), or cannot be read."""
TLS_SECRET_MISSING = "TLSSecretMissing"
"""``tls.crt`` or ``tls.key`` is not there: the TLS Secret does not exist or lacks the key."""
TLS_SECRET_INVALID = "TLSSecretInvalid"
"""``tls.crt``/``tls.key`` are not a PEM certificate and the private key that matches it."""
SECRET_REASONS = (AUTH_SECRET_MISSING, NO_TOKENS, TLS_SECRET_MISSING, TLS_SECRET_INVALID)

# The pull's report: after a successful `model-server pull` its termination message is one JSON
# object with these keys (the kubelet keeps it in the init container's
# ``state.terminated.message``); the operator reads it into status.variants[].startup. The
# same keys are in the pull marker (``.model-pull.json``) the server reads at start.
PULL_BYTES = "bytes"
"""Bytes read from the model store for this pull (by the pod, or by the node's model cache
agent on its behalf): 0 when the node's cache or the directory already held the model."""
PULL_SECONDS = "seconds"
"""Wall-clock seconds the pull took (fetch, verify, unpack, move)."""
PULL_CACHE_HIT = "cacheHit"
"""True: nothing came from the store (the node's model cache had it, or the directory already
held this model: same URI and checksum)."""
PULL_SOURCE = "source"
"""Where the bytes came from: ``msv_contract.modelcache.SOURCES`` (cache-hit, cache-miss,
bypassed, direct)."""
PULL_CACHE_BYTES = "cacheBytes"
"""Bytes received from the node's model cache agent."""
PULL_CACHE_BYPASS = "cacheBypass"
"""Present when a configured model cache was not used: why (the pod pulled all the same)."""
