"""OIP v2 REST conformance of the model server against a test-double backend."""

from __future__ import annotations

import struct
import threading
import time

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from model_server.backends.base import TensorSpec

from .conftest import serve_app
from .doubles import BrokenBackend, EchoBackend, GenerateBackend

X = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}
TEXT = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ab", "héllo"]}


def infer(client: TestClient, body: object, path: str = "/v2/models/echo/infer", **kw: object):
    return client.post(path, content=orjson.dumps(body), **kw)  # type: ignore[arg-type]


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "modelservice"
    assert "generate" in meta["extensions"]


def test_model_metadata_reports_optimization(client: TestClient) -> None:
    meta = client.get("/v2/models/echo").json()
    assert meta["name"] == "echo"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "test"
    assert {"name": "x", "datatype": "FP32", "shape": [-1, 4]} in meta["inputs"]
    assert [o["name"] for o in meta["outputs"]] == ["y", "upper", "length"]
    params = meta["parameters"]
    assert params["variant"] == "int8"
    assert params["state"] == "ready"
    assert params["quantization"] == "dynamic-int8"
    assert params["sparsity"] == 0.5
    assert params["size_bytes"] == 5678
    assert client.get("/v2/models/echo/versions/1").json() == meta
    assert client.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": True}
    assert client.get("/v2/models/echo/versions/1/ready").status_code == 200


def test_unknown_model_or_version_is_404(client: TestClient) -> None:
    r = client.get("/v2/models/nope")
    assert r.status_code == 404
    assert "'nope'" in r.json()["error"]
    assert client.get("/v2/models/echo/versions/7").status_code == 404
    assert infer(client, {"inputs": [X, TEXT]}, "/v2/models/nope/infer").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404


def test_infer_fp32_and_bytes_with_id_and_nested_data(client: TestClient) -> None:
    r = infer(client, {"id": "req-7", "inputs": [X, TEXT]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "echo"
    assert body["model_version"] == "1"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["y"]["datatype"] == "FP32"
    assert out["y"]["shape"] == [2, 4]
    assert out["y"]["data"] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert out["upper"] == {
        "name": "upper",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["AB", "HéLLO"],
    }
    assert out["length"]["datatype"] == "INT64"
    assert out["length"]["data"] == [2, 6]  # utf-8 bytes of "héllo"


def test_requested_outputs_filter_and_version_path(client: TestClient) -> None:
    body = {"inputs": [X, TEXT], "outputs": [{"name": "length"}]}
    r = infer(client, body, "/v2/models/echo/versions/1/infer")
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["length"]
    r = infer(client, {"inputs": [X, TEXT], "outputs": [{"name": "bogus"}]})
    assert r.status_code == 400
    assert "bogus" in r.json()["error"]


def test_binary_tensor_extension_in_and_out(client: TestClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    words = [b"a", b"xyz"]
    text_raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}},
                {"name": "text", "shape": [2], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(text_raw)}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "upper"}],
        }
    )  # fmt: skip
    r = client.post(
        "/v2/models/echo/infer",
        content=header + x.tobytes() + text_raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    meta = orjson.loads(r.content[:n])
    y_meta = meta["outputs"][0]
    assert y_meta["parameters"]["binary_data_size"] == 32
    y = np.frombuffer(r.content[n : n + 32], dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(y, x * 2)
    assert meta["outputs"][1]["data"] == ["A", "XYZ"]


def test_bad_inputs_get_precise_400s(client: TestClient) -> None:
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"inputs": []}), "non-empty list"),
        (orjson.dumps({"inputs": [TEXT]}), "missing input(s): x"),
        (orjson.dumps({"inputs": [{**X, "shape": [2, 3]}, TEXT]}), "needs 6 elements"),
        (orjson.dumps({"inputs": [{**X, "shape": [4, 2]}, TEXT]}), "must have shape [-1, 4]"),
        (orjson.dumps({"inputs": [{**X, "datatype": "INT32"}, TEXT]}), "must be FP32, got INT32"),
        (orjson.dumps({"inputs": [{**X, "datatype": "FP8"}, TEXT]}), "unsupported datatype"),
        (orjson.dumps({"inputs": [{**X, "data": ["a"] * 8}, TEXT]}), "FP32 data cannot hold"),
        (orjson.dumps({"inputs": [X, {**TEXT, "data": [1, 2]}]}), "BYTES data must be strings"),
        (
            orjson.dumps({"inputs": [X, {**TEXT, "shape": [3], "data": ["a", "b", "c"]}]}),
            "batch size",
        ),
        (orjson.dumps({"inputs": [X, TEXT, {**X, "name": "z"}]}), "unknown input 'z'"),
        (orjson.dumps({"inputs": [X, X, TEXT]}), "appears twice"),
        (orjson.dumps({"inputs": [{**X, "shape": [-2, 4]}, TEXT]}), "non-negative integers"),
        (orjson.dumps({"id": 5, "inputs": [X, TEXT]}), "'id' must be a string"),
        (orjson.dumps({"inputs": [X, TEXT], "outputs": "y"}), "'outputs' must be a list"),
        (orjson.dumps({"inputs": [X, TEXT], "outputs": [{"name": "q"}]}), "unknown output 'q'"),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {**X, "shape": [0, 4], "data": []},
                        {**TEXT, "shape": [0], "data": []},
                    ]
                }
            ),
            "the batch is empty",
        ),
    ]
    for body, message in cases:
        r = client.post("/v2/models/echo/infer", content=body)
        assert r.status_code == 400, (body, r.text)
        assert message in r.json()["error"], (body, r.json())


def test_backend_invalid_input_is_400(client: TestClient) -> None:
    # NaN cannot travel in JSON, but it can in the binary extension; the backend rejects it.
    x = np.full((1, 4), np.nan, dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32",
                 "parameters": {"binary_data_size": 16}},
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            ]
        }
    )  # fmt: skip
    r = client.post(
        "/v2/models/echo/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400
    assert r.json() == {"error": "x contains NaN"}


def test_payload_too_large_is_413() -> None:
    with serve_app(max_request_bytes=2048) as (client, _, _):
        big = {"inputs": [{**X, "shape": [200, 4], "data": [1.0] * 800}, TEXT]}
        r = infer(client, big)
        assert r.status_code == 413
        assert "MODEL_SERVER_MAX_REQUEST_BYTES" in r.json()["error"]

        def chunks():
            yield orjson.dumps(big)

        r = client.post("/v2/models/echo/infer", content=chunks())  # chunked, no length
        assert r.status_code == 413


def test_not_ready_while_loading_then_ready() -> None:
    backend = EchoBackend()
    backend.release_load.clear()
    with serve_app(backend, ready=False) as (client, _, _):
        assert client.get("/v2/health/live").status_code == 200
        r = client.get("/v2/health/ready")
        assert r.status_code == 503
        assert "loading" in r.json()["error"]
        assert infer(client, {"inputs": [X, TEXT]}).status_code == 503
        assert client.get("/v2/models/echo").json()["parameters"]["state"] == "loading"
        backend.release_load.set()
        deadline = time.monotonic() + 10
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert infer(client, {"inputs": [X, TEXT]}).status_code == 200


def test_failed_load_reports_reason_and_stays_up() -> None:
    with serve_app(BrokenBackend(), ready=False) as (client, _, registry):
        deadline = time.monotonic() + 10
        while client.get("/v2/models/echo").json()["parameters"]["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        meta = client.get("/v2/models/echo").json()
        assert meta["parameters"]["state"] == "failed"
        assert "model.safetensors is corrupt" in meta["parameters"]["reason"]
        r = infer(client, {"inputs": [X, TEXT]})
        assert r.status_code == 503
        assert "failed to load" in r.json()["error"]
        assert "corrupt" in client.get("/v2/health/ready").json()["error"]
        assert client.get("/v2/health/live").status_code == 200
        labels = {"model": "echo", "variant": "int8"}
        assert registry.get_sample_value("model_server_model_ready", labels) == 0.0


def test_missing_model_dir_is_not_ready_with_reason(tmp_path) -> None:
    from model_server.app import create_app
    from model_server.settings import Settings

    app = create_app(Settings(model_name="m", model_dir=tmp_path / "absent"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/v2/models/m").json()["parameters"]["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reason = client.get("/v2/models/m").json()["parameters"]["reason"]
        assert "does not exist" in reason


def test_generate_and_stream() -> None:
    with serve_app(GenerateBackend()) as (client, _, _):
        r = client.post(
            "/v2/models/echo/generate",
            json={"text_input": "one two three", "parameters": {"max_tokens": 2}},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"model_name": "echo", "model_version": "1", "text_output": "one two "}
        with client.stream(
            "POST", "/v2/models/echo/generate_stream", json={"text_input": "a b c"}
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [
                orjson.loads(line[len("data: ") :])
                for line in stream.iter_lines()
                if line.startswith("data: ")
            ]
        assert [e["text_output"] for e in events] == ["a ", "b ", "c "]
        r = client.post("/v2/models/echo/generate", json={"text_input": 5})
        assert r.status_code == 400
        assert "text_input" in r.json()["error"]
        r = client.post("/v2/models/echo/generate", json={"text_input": "x", "max_tokens": -1})
        assert r.status_code == 400
        assert "max_tokens" in r.json()["error"]


def test_generate_on_a_non_generative_model_is_400(client: TestClient) -> None:
    r = client.post("/v2/models/echo/generate", json={"text_input": "hi"})
    assert r.status_code == 400
    assert "does not support generate" in r.json()["error"]


def test_concurrent_http_requests_get_their_own_rows() -> None:
    with serve_app(EchoBackend(delay_s=0.01), max_batch_size=8) as (client, backend, _):
        results: dict[int, object] = {}

        def call(i: int) -> None:
            body = {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [i, i, i, i]},
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"w{i}"]},
                ]
            }
            results[i] = infer(client, body).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, body in results.items():
            out = {o["name"]: o["data"] for o in body["outputs"]}  # type: ignore[index]
            assert out["y"] == [2 * i] * 4
            assert out["upper"] == [f"W{i}"]
        assert sum(backend.batches) == 12  # type: ignore[attr-defined]


def test_numeric_data_is_checked_in_one_pass() -> None:
    import pytest

    from model_server.codec import decode_tensor
    from model_server.errors import InvalidInput

    def decode(datatype: str, data: list[object]) -> np.ndarray:
        tensor = {"name": "t", "shape": [len(data)], "datatype": datatype, "data": data}
        return decode_tensor(tensor, 0, None, 0)[0]

    assert decode("INT8", [1, -2, 127]).dtype == np.int8
    assert decode("FP16", [1, 2.5]).tolist() == [1.0, 2.5]
    assert decode("BOOL", [True, False]).tolist() == [True, False]
    assert decode("INT32", []).shape == (0,)
    with pytest.raises(InvalidInput, match=r"outside the INT8 range \[-128, 127\]"):
        decode("INT8", [1, 300])
    with pytest.raises(InvalidInput, match=r"INT64 data cannot hold 1\.5"):
        decode("INT64", [1, 1.5])
    with pytest.raises(InvalidInput, match="BOOL data cannot hold 1"):
        decode("BOOL", [1, 0])
    with pytest.raises(InvalidInput, match="FP32 data cannot hold None"):
        decode("FP32", [1.0, None])


@pytest.mark.parametrize(
    "datatype, data",
    [
        ("FP32", [0.5, -1.25, 3, 1e30]),
        ("FP64", [1e-300, 2, -0.0]),
        ("INT8", [-128, 0, 127]),
        ("UINT8", [0, 255]),
        ("INT16", [-32768, 32767]),
        ("UINT16", [0, 65535]),
        ("INT32", [-(2**31), 2**31 - 1]),
        ("UINT32", [0, 2**32 - 1]),
        ("INT64", [-(2**63), 2**63 - 1, True]),
        ("UINT64", [0, 2**64 - 1]),  # numpy's inference made this float64 and refused it
        ("FP32", [1.0, True]),  # a boolean among numbers: numpy's path read it as 1 too
    ],
)
def test_clean_numbers_decode_like_numpys_checked_path(datatype: str, data: list[object]) -> None:
    """The one-pass array.array conversion gives the values and dtype numpy would."""
    from model_server.codec import DTYPES, decode_tensor

    tensor = {"name": "t", "shape": [1, len(data)], "datatype": datatype, "data": data}
    got = decode_tensor(tensor, 0, None, 0)[0]
    expected = np.array([data], dtype=DTYPES[datatype])
    assert got.dtype == DTYPES[datatype] and got.shape == (1, len(data))
    np.testing.assert_array_equal(got, expected)
    assert got.flags.writeable and got.flags.c_contiguous


@pytest.mark.parametrize(
    "datatype, data, error",
    [
        ("FP32", [True, False], "FP32 data cannot hold True"),
        ("INT32", [True], "INT32 data cannot hold True"),
        ("FP32", ["1.5"], "FP32 data cannot hold '1.5'"),
        ("FP64", [1.0, None], "FP64 data cannot hold None"),
        ("INT16", [1, 2.0], r"INT16 data cannot hold 2\.0"),
        ("UINT8", [-1], r"outside the UINT8 range \[0, 255\]"),
        ("INT32", [2**31], r"outside the INT32 range"),
        ("UINT64", [-1], r"outside the UINT64 range"),
    ],
)
def test_numbers_a_datatype_cannot_hold_are_refused(
    datatype: str, data: list[object], error: str
) -> None:
    from model_server.codec import decode_tensor
    from model_server.errors import InvalidInput

    tensor = {"name": "t", "shape": [len(data)], "datatype": datatype, "data": data}
    with pytest.raises(InvalidInput, match=error):
        decode_tensor(tensor, 0, None, 0)


def test_fastapi_route_behaves_like_the_fast_path() -> None:
    """The documented FastAPI infer route (fast path off) gives the same answers."""
    bodies = [
        orjson.dumps({"id": "a", "inputs": [X, TEXT]}),
        orjson.dumps({"inputs": [X, TEXT], "outputs": [{"name": "length"}]}),
        orjson.dumps({"inputs": [{**X, "shape": [2, 3]}, TEXT]}),
        orjson.dumps({"inputs": [TEXT]}),
        b"{not json",
    ]
    answers: dict[bool, list[tuple[int, object]]] = {}
    for fast in (True, False):
        with serve_app(infer_fast_path=fast) as (client, _, registry):
            answers[fast] = [
                (r.status_code, r.json())
                for r in (client.post("/v2/models/echo/infer", content=b) for b in bodies)
            ]
            answers[fast].append((infer(client, {}, "/v2/models/other/infer").status_code, None))
            labels = {"model": "echo", "variant": "int8", "endpoint": "infer", "status": "400"}
            assert registry.get_sample_value("model_server_requests_total", labels) == 3
    assert answers[True] == answers[False]
    assert [code for code, _ in answers[True]] == [200, 200, 400, 400, 400, 404]


def test_empty_batch_is_400_on_every_path() -> None:
    """`"shape":[0]` with no data once answered 500 (IndexError in the model)."""
    from .doubles import IdentityBackend

    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]}
    )
    for fast in (True, False):
        with serve_app(IdentityBackend(), infer_fast_path=fast) as (client, _, registry):
            r = client.post("/v2/models/echo/infer", content=body)
            assert r.status_code == 400, r.text
            assert "the batch is empty" in r.json()["error"]
            # and the same for a rank-1 input
            one = {"inputs": [{"name": "x", "shape": [0], "datatype": "FP32", "data": []}]}
            assert (
                client.post("/v2/models/echo/infer", content=orjson.dumps(one)).status_code == 400
            )
            labels = {"model": "echo", "variant": "int8", "endpoint": "infer", "status": "400"}
            assert registry.get_sample_value("model_server_requests_total", labels) == 2


def test_added_middleware_sees_infer_requests() -> None:
    """The infer short cut must not skip ASGI middleware: adding one turns it off."""
    from prometheus_client import CollectorRegistry

    from model_server.app import create_app
    from model_server.settings import Settings

    seen: list[str] = []

    class Recorder:
        def __init__(self, app: object) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: object, send: object) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)  # type: ignore[operator]

    app = create_app(
        Settings(model_name="echo"), registry=CollectorRegistry(), backend=EchoBackend()
    )
    app.add_middleware(Recorder)
    with TestClient(app) as client:
        wait_ready_client(client)
        r = infer(client, {"inputs": [X, TEXT]})
        assert r.status_code == 200, r.text
    assert "/v2/models/echo/infer" in seen


def wait_ready_client(client: TestClient) -> None:
    from .conftest import wait_ready

    wait_ready(client)


class _ForgetfulBackend(EchoBackend):
    """Declares an output `extra` that its predict never returns (a faulty model)."""

    def outputs(self) -> list[TensorSpec]:
        return [*super().outputs(), TensorSpec("extra", "FP32", (-1,))]


@pytest.mark.parametrize("delay_s", [0.0, 0.01], ids=["inline", "queued"])
def test_an_asked_output_the_model_did_not_produce_is_500(delay_s: float) -> None:
    """Both halves of DataPlane.run (inline for a fast idle model, else the queue) check it."""
    body = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
        ],
        "outputs": [{"name": "y"}, {"name": "extra"}],
    }
    with serve_app(_ForgetfulBackend(delay_s=delay_s)) as (client, _, _):
        for _ in range(3):  # the first runs through the queue; a fast model then runs inline
            r = infer(client, body)
            assert r.status_code == 500, r.text
            assert "did not produce output 'extra'" in r.json()["error"]
        ok = infer(client, {**body, "outputs": [{"name": "y"}]})
        assert ok.status_code == 200, ok.text
