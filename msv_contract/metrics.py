"""The model server's Prometheus metric names, and the label names others select on.

The server defines its collectors with these names; the operator's PromQL (rollout gates,
status measurements), the in-flight HPAs and the metrics adapter's rules read the same
constants, so a rename is one edit here. Names are without the ``_total``/``_bucket``
suffixes the exposition adds; `total()` and `bucket()` give the series names.
"""

from __future__ import annotations

PREFIX = "model_server_"

# Labels on every per-model series, and the one the mirror adds.
LABEL_MODEL = "model"
LABEL_VARIANT = "variant"
LABEL_STATUS = "status"
LABEL_TARGET = "target"
"""On mirror series: the candidate variant the comparison is against."""
LABEL_ENDPOINT = "endpoint"
LABEL_NAMESPACE = "namespace"
"""Added by the scrape (the ServiceMonitor's or the annotations' relabelling), as is `LABEL_POD`."""
LABEL_POD = "pod"
LABEL_PHASE = "phase"
"""On `STARTUP_PHASE_SECONDS`: one of `STARTUP_PHASES`."""

# Requests (RequestTracker).
REQUESTS = f"{PREFIX}requests"
"""Counter by model, variant, protocol, status (exposed as ``..._total``)."""
REQUEST_DURATION = f"{PREFIX}request_duration_seconds"
BATCH_SIZE = f"{PREFIX}batch_size"
QUEUE_DEPTH = f"{PREFIX}queue_depth"
INFLIGHT = f"{PREFIX}inflight_requests"
"""Gauge: requests being handled; what the operator's in-flight HPAs ask for per pod."""
REQUESTS_PER_SECOND = f"{PREFIX}requests_per_second"
"""Not exposed by the server: the metrics adapter derives it from `REQUESTS` per pod."""

# The model.
MODEL_LOAD_SECONDS = f"{PREFIX}model_load_seconds"
MODEL_READY = f"{PREFIX}model_ready"
MODEL_INFO = f"{PREFIX}model_info"
MODEL_PARAMETERS = f"{PREFIX}model_parameters"
MODEL_SIZE_BYTES = f"{PREFIX}model_size_bytes"
MODEL_ARTIFACT_BYTES = f"{PREFIX}model_artifact_bytes"
MODEL_SPARSITY_RATIO = f"{PREFIX}model_sparsity_ratio"

# Start-up (docs/model-server.md, Start-up phases).
STARTUP_PHASE_SECONDS = f"{PREFIX}startup_phase_seconds"
"""Gauge by model, variant, phase: how long each phase of this process's start took, set once
the first readiness check answered ready."""
STARTUP_PHASES = ("fetch", "start", "load", "ready", "total")
"""``fetch``: the model pull (init container) as its marker reports it; ``start``: process
start -> the app begins loading (interpreter, imports, settings); ``load``: the backend's load;
``ready``: load done -> the first ``/v2/health/ready`` answered 200 (the probe that saw it);
``total``: process start -> that answer (``fetch`` ran before the process and is not in it)."""

# GPU memory (CUDA only).
GPU_MEMORY_ALLOCATED_BYTES = f"{PREFIX}gpu_memory_allocated_bytes"
GPU_MEMORY_RESERVED_BYTES = f"{PREFIX}gpu_memory_reserved_bytes"
GPU_MEMORY_PEAK_BYTES = f"{PREFIX}gpu_memory_peak_bytes"
"""The most the caching allocator has reserved on the device since the server started
(``torch.cuda.max_memory_reserved``): the load's peak or serving's, whichever was higher. The
operator reads it into ``status.variants[].gpuMemory.measuredBytes`` beside its estimate."""

# Mirroring (rollout analysis).
MIRROR_REQUESTS = f"{PREFIX}mirror_requests"
MIRROR_AGREEMENT = f"{PREFIX}mirror_agreement"
MIRROR_DURATION = f"{PREFIX}mirror_duration_seconds"


def total(counter: str) -> str:
    """The exposed series name of a counter."""
    return f"{counter}_total"


def bucket(histogram: str) -> str:
    """The exposed bucket series name of a histogram."""
    return f"{histogram}_bucket"
