"""Metric values after real requests, read from the injected registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from model_server.errors import ModelNotFound, ModelNotReady
from model_server.metrics import ServerMetrics

from .conftest import serve_app
from .doubles import EchoBackend, GenerateBackend

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


# the one accounting: RequestTracker.track() ------------------------------------------------
def _tracker() -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, "echo", "int8", process_metrics=False)
    return metrics.tracker("infer"), registry


def _counts(registry: CollectorRegistry) -> dict[str, float]:
    """Recorded requests by status, and how many are still in flight."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "model_server_requests_total":
                out[sample.labels["status"]] = sample.value
            elif sample.name == "model_server_inflight_requests":
                out["inflight"] = sample.value
    return out


class _Gone(BaseException):
    """Stands for a cancellation or a closed generator: the client went away."""


def test_a_tracked_block_records_its_outcome_once() -> None:
    tracker, registry = _tracker()
    with tracker.track():
        assert _counts(registry) == {"inflight": 1}
    with tracker.track() as request:  # a handler that rendered an error itself
        request.status = 413
    with pytest.raises(ModelNotFound), tracker.track():
        raise ModelNotFound("no")
    with pytest.raises(ZeroDivisionError), tracker.track() as request:
        request.status = 200  # an unexpected failure overrides
        raise ZeroDivisionError
    with pytest.raises(_Gone), tracker.track():
        raise _Gone  # gone before an answer: a failed request
    with pytest.raises(_Gone), tracker.track() as request:
        request.status = 200
        raise _Gone  # gone after the answer began: as it stood
    assert _counts(registry) == {"200": 2, "413": 1, "404": 1, "500": 2, "inflight": 0}


def test_a_deferred_request_is_recorded_when_its_stream_ends() -> None:
    tracker, registry = _tracker()

    async def stream(request: Any, fail: BaseException | None) -> AsyncIterator[int]:
        with request:
            yield 1
            if fail is not None:
                raise fail

    async def serve(fail: BaseException | None) -> AsyncIterator[int]:
        with tracker.track() as request:
            return stream(request.defer(), fail)

    async def run() -> None:
        events = await serve(None)
        assert _counts(registry) == {"inflight": 1}  # the handler returned: still in flight
        assert [e async for e in events] == [1]
        assert _counts(registry) == {"200": 1, "inflight": 0}
        events = await serve(ModelNotReady("gone"))
        with pytest.raises(ModelNotReady):
            _ = [e async for e in events]
        events = await serve(None)
        assert await events.__anext__() == 1
        await events.aclose()  # the client went away mid-stream: the answer had begun
        assert _counts(registry) == {"200": 2, "503": 1, "inflight": 0}
        with pytest.raises(ZeroDivisionError), tracker.track() as request:
            request.defer()
            raise ZeroDivisionError  # failed before the stream was returned: recorded here
        assert _counts(registry) == {"200": 2, "503": 1, "500": 1, "inflight": 0}

    asyncio.run(run())


def test_every_front_end_accounts_generation_including_streams() -> None:
    with serve_app(GenerateBackend()) as (client, _, registry):
        body = {"text_input": "a b c", "parameters": {"max_tokens": 2}}
        assert client.post("/v2/models/echo/generate", json=body).status_code == 200
        assert client.post("/v2/models/echo/generate", json={"text_input": 1}).status_code == 400
        with client.stream("POST", "/v2/models/echo/generate_stream", json=body) as r:
            assert r.status_code == 200
            r.read()
        completion = {"model": "echo", "prompt": "a b", "stream": True}
        with client.stream("POST", "/v1/completions", json=completion) as r:
            r.read()
        bad = {"model": "echo", "prompt": "a", "temperature": 9}
        assert client.post("/v1/completions", json=bad).status_code == 400
        chat = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 404

        def value(endpoint: str, status: str) -> float | None:
            labels = {**L, "endpoint": endpoint, "status": status}
            return registry.get_sample_value("model_server_requests_total", labels)

        assert value("generate", "200") == 1 and value("generate", "400") == 1
        assert value("generate_stream", "200") == 1
        assert value("openai_completions", "200") == 1
        assert value("openai_completions", "400") == 1
        assert value("openai_chat", "404") == 1
        assert registry.get_sample_value("model_server_inflight_requests", L) == 0
