"""Prometheus collectors of the model server, all on an injected `CollectorRegistry`.

`ServerMetrics` owns every collector; the app creates one per process (tests create one
per test with a fresh registry and read values with `registry.get_sample_value`). Label
children for the hot path are bound once, so a request costs one counter increment, one
histogram observation and two gauge updates. GPU memory is exported only when torch is
already loaded by a backend and sees CUDA; this module never imports a framework itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class GpuMemoryCollector(Collector):
    """`model_server_gpu_memory_{allocated,reserved}_bytes` per CUDA device, when present."""

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
                "model_server_gpu_memory_allocated_bytes",
                "GPU memory held by tensors",
                labels=["model", "variant", "device"],
            )
            reserved = GaugeMetricFamily(
                "model_server_gpu_memory_reserved_bytes",
                "GPU memory reserved by the caching allocator",
                labels=["model", "variant", "device"],
            )
            for index in range(torch.cuda.device_count()):
                labels = [*self._labels, str(index)]
                allocated.add_metric(labels, float(torch.cuda.memory_allocated(index)))
                reserved.add_metric(labels, float(torch.cuda.memory_reserved(index)))
        except Exception:  # a broken driver must not break /metrics
            return
        yield allocated
        yield reserved


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
        labels = ("model", "variant")
        self.requests = Counter(
            "model_server_requests",
            "Inference requests by model, variant, endpoint and HTTP status",
            [*labels, "endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "model_server_request_duration_seconds",
            "Time from request received to response ready",
            [*labels, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "model_server_batch_size",
            "Rows per batch handed to the model",
            labels,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "model_server_queue_depth",
            "Requests waiting for the model",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.inflight = Gauge(
            "model_server_inflight_requests",
            "Requests being handled",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.load_seconds = Gauge(
            "model_server_model_load_seconds",
            "Time taken to load (and optimize) the model",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.ready = Gauge(
            "model_server_model_ready",
            "1 when the model is loaded and serving",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.info = Gauge(
            "model_server_model_info",
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
        self.parameters = Gauge(
            "model_server_model_parameters",
            "Number of model parameters",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.size_bytes = Gauge(
            "model_server_model_size_bytes",
            "Size of the model weights in memory",
            labels,
            registry=registry,
        ).labels(model, variant)
        self.sparsity = Gauge(
            "model_server_model_sparsity_ratio",
            "Fraction of zero weights after pruning",
            labels,
            registry=registry,
        ).labels(model, variant)
        self._batch_child = self.batch_size.labels(model, variant)
        self._latency_children: dict[str, Any] = {}
        self._request_children: dict[tuple[str, int], Any] = {}
        registry.register(GpuMemoryCollector(model, variant))
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        key = (endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(self.model, self.variant, endpoint, str(status))
            self._request_children[key] = child
        child.inc()
        lat = self._latency_children.get(endpoint)
        if lat is None:
            lat = self.latency.labels(self.model, self.variant, endpoint)
            self._latency_children[endpoint] = lat
        lat.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self._batch_child.observe(rows)

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
