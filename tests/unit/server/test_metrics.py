"""Metric values after real requests, read from the injected registry."""

from __future__ import annotations

import orjson

from .conftest import serve_app
from .doubles import EchoBackend

L = {"model": "echo", "variant": "int8"}
X = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}
TEXT = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}


def test_request_batch_and_model_metrics() -> None:
    with serve_app(EchoBackend()) as (client, _, registry):
        for _ in range(3):
            assert (
                client.post(
                    "/v2/models/echo/infer", content=orjson.dumps({"inputs": [X, TEXT]})
                ).status_code
                == 200
            )
        assert client.post("/v2/models/echo/infer", content=b"{}").status_code == 400
        assert client.post("/v2/models/nope/infer", content=b"{}").status_code == 404

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {**L, **labels})

        assert value("model_server_requests_total", endpoint="infer", status="200") == 3
        assert value("model_server_requests_total", endpoint="infer", status="400") == 1
        assert value("model_server_requests_total", endpoint="infer", status="404") == 1
        assert value("model_server_request_duration_seconds_count", endpoint="infer") == 5
        assert value("model_server_batch_size_count") == 3
        assert value("model_server_batch_size_sum") == 6  # three batches of 2 rows
        assert value("model_server_batch_size_bucket", le="1.0") == 0
        assert value("model_server_batch_size_bucket", le="2.0") == 3
        assert value("model_server_inflight_requests") == 0
        assert value("model_server_queue_depth") == 0
        assert value("model_server_model_ready") == 1
        assert value("model_server_model_load_seconds") is not None
        assert value("model_server_model_parameters") == 1234
        assert value("model_server_model_size_bytes") == 5678
        assert value("model_server_model_sparsity_ratio") == 0.5
        info = value(
            "model_server_model_info",
            framework="test",
            device="cpu",
            quantization="dynamic-int8",
            pruning_method="unstructured",
            sparsity="0.5000",
            parameters="1234",
            size_bytes="5678",
        )
        assert info == 1
        assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
        assert registry.get_sample_value("process_cpu_seconds_total") is not None

        text = client.get("/metrics").text
        assert (
            'model_server_requests_total{endpoint="infer",model="echo",status="200",'
            'variant="int8"} 3.0' in text
        )
        assert "process_resident_memory_bytes" in text


def test_two_apps_do_not_share_metrics() -> None:
    with serve_app() as (c1, _, r1), serve_app() as (_, _, r2):
        c1.post("/v2/models/echo/infer", content=orjson.dumps({"inputs": [X, TEXT]}))
        labels = {**L, "endpoint": "infer", "status": "200"}
        assert r1.get_sample_value("model_server_requests_total", labels) == 1
        assert r2.get_sample_value("model_server_requests_total", labels) is None
