"""Prometheus collectors of the model server, all on an injected `CollectorRegistry`.

`ServerMetrics` owns every collector; the app creates one per process (tests create one
per test with a fresh registry and read values with `registry.get_sample_value`).

The per-request metrics (requests, latency, batch size, queue depth, in-flight) are plain
Python counters in `HotPathCollector`, turned into Prometheus families only when scraped:
every update happens on the event loop thread, so they need no locks, and a request costs
a dict lookup, a `bisect` and a few integer additions instead of prometheus-client's
locked children (which cost more than parsing the request; bench/serving_overhead.py).
`RequestTracker.track()` is the one way a front end accounts a request (a `with` block,
see `Tracked`). Everything else uses prometheus-client's own collectors. GPU memory is
exported only when torch is already loaded by a backend and sees CUDA; this module never
imports a framework.
"""

from __future__ import annotations

import sys
import weakref
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from time import perf_counter
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from model_server.errors import ServerError
from msv_contract import metrics as m

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
AGREEMENT_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MIRROR_OUTCOMES = ("sent", "dropped", "failed", "compared")


class GpuMemoryCollector(Collector):
    """`model_server_gpu_memory_{allocated,reserved,peak}_bytes` per CUDA device, when
    present (peak: the most reserved since start, what the operator's GPU fit reads)."""

    def __init__(self, model: str, variant: str) -> None:
        self._labels = [model, variant]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch: Any = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return
            allocated = GaugeMetricFamily(
                m.GPU_MEMORY_ALLOCATED_BYTES,
                "GPU memory held by tensors",
                labels=[m.LABEL_MODEL, m.LABEL_VARIANT, "device"],
            )
            reserved = GaugeMetricFamily(
                m.GPU_MEMORY_RESERVED_BYTES,
                "GPU memory reserved by the caching allocator",
                labels=[m.LABEL_MODEL, m.LABEL_VARIANT, "device"],
            )
            peak = GaugeMetricFamily(
                m.GPU_MEMORY_PEAK_BYTES,
                "The most GPU memory the caching allocator reserved since the server started",
                labels=[m.LABEL_MODEL, m.LABEL_VARIANT, "device"],
            )
            for index in range(torch.cuda.device_count()):
                labels = [*self._labels, str(index)]
                allocated.add_metric(labels, float(torch.cuda.memory_allocated(index)))
                reserved.add_metric(labels, float(torch.cuda.memory_reserved(index)))
                peak.add_metric(labels, float(torch.cuda.max_memory_reserved(index)))
        except Exception:  # a broken driver must not break /metrics
            return
        yield allocated
        yield reserved
        yield peak


class _Hist:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), running))
        running += self.counts[-1]
        out.append(("+Inf", running))
        return out


class EndpointStats(_Hist):
    """One endpoint's finished requests: a count per HTTP status and the latency histogram.

    Front ends record into it through `RequestTracker.track()` (`Tracked`, which inlines
    `observe_request`); `HotPathCollector.observe` records directly.
    """

    __slots__ = ("statuses",)

    def __init__(self) -> None:
        super().__init__(LATENCY_BUCKETS)
        self.statuses: defaultdict[int, int] = defaultdict(int)

    def observe_request(self, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class HotPathCollector(Collector):
    """Per-request metrics as plain counters; families are built at scrape time."""

    def __init__(self, model: str, variant: str) -> None:
        self.model = model
        self.variant = variant
        self.endpoints: dict[str, EndpointStats] = {}
        self.batch = _Hist(BATCH_BUCKETS)
        self.queue_depth = 0
        self.inflight = 0

    def endpoint(self, name: str) -> EndpointStats:
        """The counters of endpoint `name` (created on first use)."""
        stats = self.endpoints.get(name)
        if stats is None:
            stats = self.endpoints[name] = EndpointStats()
        return stats

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        self.endpoint(endpoint).observe_request(status, seconds)

    def collect(self) -> Iterator[Metric]:
        labels = [self.model, self.variant]
        requests = CounterMetricFamily(
            m.REQUESTS,
            "Inference requests by model, variant, endpoint and HTTP status",
            labels=[m.LABEL_MODEL, m.LABEL_VARIANT, m.LABEL_ENDPOINT, m.LABEL_STATUS],
        )
        endpoints = list(self.endpoints.items())
        for endpoint, stats in endpoints:
            for status, count in list(stats.statuses.items()):
                requests.add_metric([*labels, endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            m.REQUEST_DURATION,
            "Time from request received to response ready",
            labels=[m.LABEL_MODEL, m.LABEL_VARIANT, m.LABEL_ENDPOINT],
        )
        for endpoint, stats in endpoints:
            latency.add_metric([*labels, endpoint], stats.buckets(), stats.total)
        yield latency
        batch = HistogramMetricFamily(
            m.BATCH_SIZE,
            "Rows per batch handed to the model",
            labels=[m.LABEL_MODEL, m.LABEL_VARIANT],
        )
        batch.add_metric(labels, self.batch.buckets(), self.batch.total)
        yield batch
        depth = GaugeMetricFamily(
            m.QUEUE_DEPTH,
            "Requests waiting for the model",
            labels=[m.LABEL_MODEL, m.LABEL_VARIANT],
        )
        depth.add_metric(labels, self.queue_depth)
        yield depth
        inflight = GaugeMetricFamily(
            m.INFLIGHT, "Requests being handled", labels=[m.LABEL_MODEL, m.LABEL_VARIANT]
        )
        inflight.add_metric(labels, self.inflight)
        yield inflight


class RequestTracker:
    """The one place a request is accounted, whatever its front end (REST, gRPC, OpenAI).

    Each front end resolves the tracker of its endpoint once and wraps every request in
    `with tracker.track() as tracked:` (see `Tracked`). gRPC and streaming errors are
    labelled with the HTTP status of the same model_server.errors class, so one request
    counts the same on every front end.
    """

    __slots__ = ("track",)

    def __init__(self, hot: HotPathCollector, stats: EndpointStats) -> None:
        self.track: Callable[[], Tracked] = partial(Tracked, hot, stats)
        """Count a request in flight; leaving the `with` block records it. (A partial, not a
        method: one Python call fewer per request on the REST hot path.)"""


class Tracked:
    """One request in flight, a context manager: leaving its `with` block takes it out of
    flight and records its status and latency, exactly once.

    The status recorded: `status` when the front end set it (a handler that turns an error
    into its response sets the error's), else 200 when the block ended normally. An
    exception leaving the block decides instead: a model_server.errors.ServerError its own
    status, any other Exception 500; a cancellation or a closed generator (a client that
    went away) keeps the status already set, else 500.

    A streamed response is answered after its handler returned: `defer()` before returning
    it, and the stream wraps its body in `with tracked:` again, which records the request
    (with status 200 unless the stream sets another) when the last event was sent or the
    client went away. A plain class, not contextlib: this is on the REST hot path.
    """

    __slots__ = ("_deferred", "_hot", "_started", "_stats", "status")

    def __init__(self, hot: HotPathCollector, stats: EndpointStats) -> None:
        hot.inflight += 1
        self._hot = hot
        self._stats = stats
        self.status = 0
        self._deferred = False
        self._started = perf_counter()

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        status = self.status
        if exc is None:
            if self._deferred:
                self._deferred = False  # the stream's own `with` records it
                return
            if not status:
                status = 200
        elif isinstance(exc, ServerError):
            status = exc.status_code
        elif isinstance(exc, Exception) or not status:
            status = 500
        seconds = perf_counter() - self._started
        self._hot.inflight -= 1
        stats = self._stats  # EndpointStats.observe_request, inlined (the REST hot path)
        stats.statuses[status] += 1
        stats.counts[bisect_left(stats.bounds, seconds)] += 1
        stats.total += seconds

    def defer(self) -> Tracked:
        """Hand the accounting to the response stream (answered with 200 so far): leaving
        this block records nothing; the stream's `with` on the returned object does."""
        self._deferred = True
        self.status = 200
        return self


class MirrorMetrics:
    """What the mirror did with the requests it sampled, and how much the answers agreed.

    Labels: model, variant (this server's), target (the candidate variant). Outcomes:
    `sent` (a request went to the candidate), `dropped` (the mirror queue was full),
    `failed` (error, timeout or non-2xx from the candidate) and `compared` (an answer was
    scored). `model_server_mirror_agreement` observes each score in [0, 1], so
    rate(_sum) / rate(_count) is the agreement.
    """

    def __init__(self, registry: CollectorRegistry, model: str, variant: str, target: str):
        requests, agreement, duration = _mirror_families(registry)
        self.outcomes = {o: requests.labels(model, variant, target, o) for o in MIRROR_OUTCOMES}
        self.sent = self.outcomes["sent"]
        self.dropped = self.outcomes["dropped"]
        self.failed = self.outcomes["failed"]
        self.compared = self.outcomes["compared"]
        self.agreement = agreement.labels(model, variant, target)
        self.duration = duration.labels(model, variant, target)


_MIRROR_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Any, Any, Any]] = (
    weakref.WeakKeyDictionary()
)


def _mirror_families(registry: CollectorRegistry) -> tuple[Any, Any, Any]:
    """The mirror's collectors of `registry`, registered once: a server whose mirror target
    changes at run time (docs/model-server.md, Mirroring) makes a MirrorMetrics per target."""
    families = _MIRROR_FAMILIES.get(registry)
    if families is None:
        labels = (m.LABEL_MODEL, m.LABEL_VARIANT, m.LABEL_TARGET)
        families = (
            Counter(
                m.MIRROR_REQUESTS,
                "Requests sampled for mirroring to the candidate variant, by outcome",
                [*labels, "outcome"],
                registry=registry,
            ),
            Histogram(
                m.MIRROR_AGREEMENT,
                "Agreement of the candidate's answer with this server's, per comparison (0..1)",
                labels,
                buckets=AGREEMENT_BUCKETS,
                registry=registry,
            ),
            Histogram(
                m.MIRROR_DURATION,
                "Round trip of a mirrored request to the candidate variant",
                labels,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
        _MIRROR_FAMILIES[registry] = families
    return families


class ServerMetrics:
    """All collectors for one served model (one model per process)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        model: str,
        variant: str,
        *,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry
        self.model = model
        self.variant = variant
        labels = (m.LABEL_MODEL, m.LABEL_VARIANT)
        self.hot = HotPathCollector(model, variant)
        registry.register(self.hot)

        def gauge(name: str, documentation: str) -> Any:
            return Gauge(name, documentation, labels, registry=registry).labels(model, variant)

        self.load_seconds = gauge(
            m.MODEL_LOAD_SECONDS, "Time taken to load (and optimize) the model"
        )
        self.ready = gauge(m.MODEL_READY, "1 when the model is loaded and serving")
        self.info = Gauge(
            m.MODEL_INFO,
            "The served model: framework, optimization and size (value is always 1)",
            [
                *labels,
                "framework",
                "device",
                "quantization",
                "pruning_method",
                "sparsity",
                "parameters",
                "size_bytes",
            ],
            registry=registry,
        )
        self.parameters = gauge(m.MODEL_PARAMETERS, "Number of model parameters")
        self.size_bytes = gauge(
            m.MODEL_SIZE_BYTES,
            "Size of the model weights in memory, after optimization",
        )
        self.artifact_bytes = gauge(
            m.MODEL_ARTIFACT_BYTES, "Size of the model artifact on disk"
        )
        self.sparsity = gauge(
            m.MODEL_SPARSITY_RATIO, "Fraction of zero weights after pruning"
        )
        self.startup_phase = Gauge(
            m.STARTUP_PHASE_SECONDS,
            "Seconds each phase of this server's start took (fetch, start, load, ready, total)",
            [*labels, m.LABEL_PHASE],
            registry=registry,
        )
        # handed to the batcher as its on_batch callback: one call per batch, no wrapper
        self.observe_batch: Callable[[int], None] = self.hot.batch.observe
        registry.register(GpuMemoryCollector(model, variant))
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def mirror(self, target: str) -> MirrorMetrics:
        """The collectors of mirroring to the candidate variant `target`."""
        return MirrorMetrics(self.registry, self.model, self.variant, target)

    def tracker(self, endpoint: str) -> RequestTracker:
        """The accounting of `endpoint` (front ends resolve theirs once, at startup)."""
        return RequestTracker(self.hot, self.hot.endpoint(endpoint))

    def set_startup(self, phases: dict[str, float]) -> None:
        """Export the start-up phases (model_server.startup), once the first ready answer."""
        for phase, seconds in phases.items():
            self.startup_phase.labels(self.model, self.variant, phase).set(seconds)

    def set_queue_depth(self, depth: int) -> None:
        self.hot.queue_depth = depth

    def set_model_info(
        self,
        *,
        framework: str,
        device: str,
        quantization: str,
        pruning_method: str,
        sparsity: float,
        parameters: int,
        size_bytes: int,
    ) -> None:
        """Export what was loaded (after optimization)."""
        self.info.labels(
            self.model,
            self.variant,
            framework,
            device,
            quantization,
            pruning_method,
            f"{sparsity:.4f}",
            str(parameters),
            str(size_bytes),
        ).set(1)
        self.parameters.set(parameters)
        self.size_bytes.set(size_bytes)
        self.sparsity.set(sparsity)
