"""A client that leaves in the middle of a stream frees the model and its in-flight slot."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from model_server.app import create_app
from model_server.settings import Settings

from .conftest import UvicornThread
from .doubles import EndlessGenerateBackend


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/gen/generate_stream", {"text_input": "go"}),
        ("/v1/completions", {"model": "gen", "prompt": "go", "stream": True, "max_tokens": 99}),
    ],
)
def test_disconnect_mid_stream_frees_the_slot(path: str, body: dict[str, object]) -> None:
    backend = EndlessGenerateBackend()
    registry = CollectorRegistry()
    app = create_app(Settings(model_name="gen"), registry=registry, backend=backend)
    labels = {"model": "gen", "variant": "default"}
    with UvicornThread(app) as server:
        base = f"http://{server.url}"
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with httpx.stream("POST", base + path, json=body, timeout=10) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert registry.get_sample_value("model_server_inflight_requests", labels) == 1
        # the client is gone: the backend's generator is closed and the request finished
        assert backend.closed.wait(10), "generation went on after the client left"
        deadline = time.monotonic() + 10
        while registry.get_sample_value("model_server_inflight_requests", labels) != 0:
            assert time.monotonic() < deadline, "the stream still counts as in flight"
            time.sleep(0.02)
        produced = backend.produced
        time.sleep(0.2)
        assert backend.produced == produced  # nothing generated after the close
        # and the model serves the next request
        x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
        text = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}
        r = httpx.post(f"{base}/v2/models/gen/infer", json={"inputs": [x, text]}, timeout=10)
        assert r.status_code == 200, r.text
