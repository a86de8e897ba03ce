"""Structured log lines, the guarded GPU memory collector, and load shedding over HTTP."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import types

import orjson
import pytest
from prometheus_client import CollectorRegistry

from model_server.logging import JsonFormatter
from model_server.metrics import ServerMetrics

from .conftest import serve_app
from .doubles import EchoBackend


def test_json_log_lines_carry_extras() -> None:
    record = logging.LogRecord(
        "model_server.app", logging.INFO, __file__, 1, "Loaded %s", ("m",), None
    )
    record.model = "sentiment"
    record.size_bytes = 123
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "Loaded m"
    assert line["level"] == "info"
    assert line["logger"] == "model_server.app"
    assert line["model"] == "sentiment"
    assert line["size_bytes"] == 123
    assert line["ts"].endswith("Z")


def test_gpu_memory_only_when_torch_uses_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    ServerMetrics(registry, "m", "v", process_metrics=False)
    labels = {"model": "m", "variant": "v", "device": "0"}
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert registry.get_sample_value("model_server_gpu_memory_allocated_bytes", labels) is None

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 1,
        memory_allocated=lambda i: 1024.0,
        memory_reserved=lambda i: 4096.0,
        max_memory_reserved=lambda i: 8192.0,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert registry.get_sample_value("model_server_gpu_memory_allocated_bytes", labels) == 1024
    assert registry.get_sample_value("model_server_gpu_memory_reserved_bytes", labels) == 4096
    assert registry.get_sample_value("model_server_gpu_memory_peak_bytes", labels) == 8192

    def broken() -> bool:
        raise RuntimeError("driver gone")

    monkeypatch.setitem(
        sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=broken))
    )
    assert registry.get_sample_value("model_server_gpu_memory_allocated_bytes", labels) is None


class GatedBackend(EchoBackend):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def predict(self, inputs):  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        return super().predict(inputs)


def test_full_queue_answers_503_with_retry_after() -> None:
    backend = GatedBackend()
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            ]
        }
    )
    with serve_app(backend, max_queue=1, max_batch_size=1) as (client, _, registry):
        statuses: list[int] = []

        def call() -> None:
            statuses.append(client.post("/v2/models/echo/infer", content=body).status_code)

        running = threading.Thread(target=call)
        running.start()
        time.sleep(0.2)  # the first request is inside the model
        queued = threading.Thread(target=call)
        queued.start()
        time.sleep(0.2)  # the second waits in the queue
        r = client.post("/v2/models/echo/infer", content=body)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "queue is full" in r.json()["error"]
        labels = {"model": "echo", "variant": "int8"}
        assert registry.get_sample_value("model_server_queue_depth", labels) == 1
        assert registry.get_sample_value("model_server_inflight_requests", labels) == 2
        backend.gate.set()
        running.join()
        queued.join()
        assert statuses == [200, 200]
        shed = {**labels, "endpoint": "infer", "status": "503"}
        assert registry.get_sample_value("model_server_requests_total", shed) == 1
