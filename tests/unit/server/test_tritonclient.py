"""An unmodified OIP v2 client (tritonclient.http) against the server under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from model_server.app import create_app
from model_server.settings import Settings

from .conftest import UvicornThread
from .doubles import EchoBackend


@pytest.fixture(scope="module")
def triton() -> Iterator[httpclient.InferenceServerClient]:
    app = create_app(
        Settings(model_name="echo", variant="int8"),
        registry=CollectorRegistry(),
        backend=EchoBackend(),
    )
    with UvicornThread(app) as server:
        client = httpclient.InferenceServerClient(server.url)
        import time

        deadline = time.monotonic() + 10
        while not client.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client
        client.close()


def _inputs(x: np.ndarray, words: list[str], binary: bool) -> list[httpclient.InferInput]:
    xin = httpclient.InferInput("x", list(x.shape), "FP32")
    xin.set_data_from_numpy(x, binary_data=binary)
    tin = httpclient.InferInput("text", [len(words)], "BYTES")
    tin.set_data_from_numpy(np.array([w.encode() for w in words], dtype=object), binary_data=binary)
    return [xin, tin]


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("echo")
    assert not triton.is_model_ready("other")
    meta = triton.get_model_metadata("echo")
    assert meta["name"] == "echo"
    assert meta["parameters"]["variant"] == "int8"
    assert [i["name"] for i in meta["inputs"]] == ["x", "text"]
    assert triton.get_server_metadata()["name"] == "modelservice"


@pytest.mark.parametrize("binary", [False, True])
def test_infer_fp32_and_bytes(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    words = ["a", "bc", "déf"]
    outputs = [
        httpclient.InferRequestedOutput("y", binary_data=binary),
        httpclient.InferRequestedOutput("upper", binary_data=binary),
        httpclient.InferRequestedOutput("length", binary_data=binary),
    ]
    result = triton.infer("echo", _inputs(x, words, binary), outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    upper = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("upper")]
    assert upper == ["A", "BC", "DéF"]
    np.testing.assert_array_equal(result.as_numpy("length"), [1, 2, 4])
    assert result.get_response()["id"] == "r1"
    assert result.get_response()["parameters"] == {"variant": "int8"}  # who answered


def test_errors_surface_with_messages(triton: httpclient.InferenceServerClient) -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=r"must have shape \[-1, 4\]"):
        triton.infer("echo", _inputs(x, ["a", "b"], binary=True))
    with pytest.raises(InferenceServerException, match="not served here"):
        triton.infer("other", _inputs(np.zeros((1, 4), np.float32), ["a"], binary=False))
