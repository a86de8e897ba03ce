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
