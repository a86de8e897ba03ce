"""The OIP v2 gRPC front end with an unmodified client (tritonclient.grpc), auth and TLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from model_server.app import create_app
from model_server.grpc_api import schema
from model_server.http_server import uvicorn_options
from model_server.settings import Settings

from .certs import write_tls_secret
from .conftest import UvicornThread
from .doubles import EchoBackend

TOKEN = "grpc-token"


class Served:
    def __init__(self, server: UvicornThread, registry: CollectorRegistry) -> None:
        self.server = server
        self.registry = registry
        self.grpc_url = f"127.0.0.1:{server.server.config.app.state.grpc_port}"


def _serve(**overrides: object) -> Iterator[Served]:
    settings = Settings(model_name="echo", variant="int8", grpc_port=0, **overrides)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry, backend=EchoBackend())
    with UvicornThread(app, **uvicorn_options(settings)) as server:
        yield Served(server, registry)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    yield from _serve()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(served.grpc_url)
    _wait_ready(c)
    yield c
    c.close()


def _wait_ready(c: grpcclient.InferenceServerClient, **kw: object) -> None:
    deadline = time.monotonic() + 10
    while not c.is_server_ready(**kw):
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.02)


def _inputs(x: np.ndarray, words: list[bytes]) -> list[grpcclient.InferInput]:
    xin = grpcclient.InferInput("x", list(x.shape), np_to_triton_dtype(x.dtype))
    xin.set_data_from_numpy(x)
    tin = grpcclient.InferInput("text", [len(words)], "BYTES")
    tin.set_data_from_numpy(np.array(words, dtype=object))
    return [xin, tin]


def test_schema_matches_the_clients_descriptors() -> None:
    """Field numbers, names, types and labels agree with tritonclient's own protobufs."""

    def fields(desc: object) -> list[tuple[int, str, int, bool, str]]:
        return sorted(
            (
                f.number,
                f.name,
                f.type,
                f.is_repeated,
                f.message_type.full_name if f.message_type else "",
            )
            for f in desc.fields  # type: ignore[attr-defined]
        )

    theirs = service_pb2.DESCRIPTOR
    for full_name in schema.MESSAGES:
        ours = schema.descriptor(full_name)
        top, *nested = full_name.split(".")
        desc = theirs.message_types_by_name[top]
        for part in nested:
            desc = desc.nested_types_by_name[part]
        assert fields(ours) == fields(desc), full_name
    methods = theirs.services_by_name["GRPCInferenceService"].methods_by_name
    for rpc, (request, response) in schema.METHODS.items():
        assert methods[rpc].input_type.name == request
        assert methods[rpc].output_type.name == response


def test_health_metadata_and_infer(
    client: grpcclient.InferenceServerClient, served: Served
) -> None:
    assert client.is_server_live()
    assert client.is_model_ready("echo")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelservice"
    model = client.get_model_metadata("echo", as_json=True)
    assert model["versions"] == ["1"]
    assert [i["name"] for i in model["inputs"]] == ["x", "text"]
    assert model["inputs"][0]["shape"] == ["-1", "4"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("echo", _inputs(x, [b"ab", "h\u00e9".encode()]), request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert result.as_numpy("upper").tolist() == [b"AB", "H\u00e9".encode()]  # bytes.upper: ASCII
    assert result.as_numpy("length").tolist() == [2, 3]
    assert result.get_response().id == "r1"
    assert result.get_response().parameters["variant"].string_param == "int8"
    only = client.infer(
        "echo", _inputs(x, [b"a", b"b"]), outputs=[grpcclient.InferRequestedOutput("length")]
    )
    assert only.as_numpy("y") is None and only.as_numpy("length").tolist() == [1, 1]
    labels = {"model": "echo", "variant": "int8", "endpoint": "grpc_infer", "status": "200"}
    assert served.registry.get_sample_value("model_server_requests_total", labels) == 2


def test_errors_are_grpc_status_codes(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    cases = [
        ("echo", _inputs(x.astype(np.float64), [b"a", b"b"]), "INVALID_ARGUMENT", "must be FP32"),
        ("echo", _inputs(x[:, :3], [b"a", b"b"]), "INVALID_ARGUMENT", "must have shape"),
        ("echo", _inputs(x[:0], []), "INVALID_ARGUMENT", "the batch is empty"),
        ("echo", _inputs(x, [b"a"]), "INVALID_ARGUMENT", "batch size"),
        ("other", _inputs(x, [b"a", b"b"]), "NOT_FOUND", "not served here"),
    ]
    for model, inputs, code, message in cases:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs)
        assert info.value.status() == f"StatusCode.{code}", (message, info.value)
        assert message in info.value.message(), info.value.message()


def test_typed_contents_are_decoded(served: Served) -> None:
    """Requests with `contents` instead of raw bytes (other OIP clients send these)."""
    request_cls = schema.message("ModelInferRequest")
    response_cls = schema.message("ModelInferResponse")
    request = request_cls(model_name="echo")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    t = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"hi")
    with grpc.insecure_channel(served.grpc_url) as channel:
        call = channel.unary_unary(
            f"/{schema.SERVICE}/ModelInfer",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        response = call(request, timeout=10)
        y = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
        assert y.tolist() == [2.0, 4.0, 6.0, 8.0]
        del x.contents.fp32_contents[-1]
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 4 elements" in info.value.details()


def test_malformed_grpc_requests_are_invalid_argument(served: Served) -> None:
    request_cls = schema.message("ModelInferRequest")

    def tensor(**fields: object) -> bytes:
        request = request_cls(model_name="echo")
        request.inputs.add(**fields)  # type: ignore[arg-type]
        return bytes(request.SerializeToString())

    x = {"name": "x", "datatype": "FP32"}
    cases = [
        (b"\xff\xff\xff not protobuf", "not a valid ModelInferRequest"),
        (bytes(request_cls(model_name="echo").SerializeToString()), "at least one tensor"),
        (tensor(**x, shape=[-1, 4]), "non-negative integers"),
        (tensor(**x, shape=[1 << 20, 1 << 20]), "too large"),
        (tensor(name="x", datatype="FP8", shape=[1, 4]), "unsupported datatype"),
        (tensor(name="x", datatype="FP16", shape=[1, 4]), "raw_input_contents"),
        (tensor(name="", datatype="FP32", shape=[1]), "non-empty name"),
    ]
    raw = request_cls(model_name="echo")
    raw.inputs.add(**x, shape=[1, 4])
    raw.raw_input_contents.append(b"\0" * 15)  # 4 FP32 need 16 bytes
    cases.append((bytes(raw.SerializeToString()), "needs 16 bytes"))
    with grpc.insecure_channel(served.grpc_url) as channel:
        call = channel.unary_unary(f"/{schema.SERVICE}/ModelInfer")
        for body, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                call(body, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (message, info.value)
            assert message in (info.value.details() or ""), info.value.details()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    base = tmp_path_factory.mktemp("grpc-tls")
    secret = write_tls_secret(base / "secret")
    (base / "tokens").write_text(TOKEN)
    for served in _serve(
        auth_tokens=base / "tokens",
        tls_cert_file=secret / "tls.crt",
        tls_key_file=secret / "tls.key",
    ):
        yield served, secret


def test_auth_and_tls_on_grpc(secured: tuple[Served, Path]) -> None:
    served, secret = secured
    client = grpcclient.InferenceServerClient(
        served.grpc_url, ssl=True, root_certificates=str(secret / "ca.crt")
    )
    try:
        _wait_ready(client)  # health: no token needed
        assert client.is_server_live()
        x = np.ones((1, 4), dtype=np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("echo", _inputs(x, [b"a"]))
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "authentication required" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer("echo", _inputs(x, [b"a"]), headers={"authorization": "Bearer nope"})
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("echo")  # metadata needs the token too
        good = {"authorization": f"Bearer {TOKEN}"}
        assert client.get_model_metadata("echo", headers=good).name == "echo"
        result = client.infer("echo", _inputs(x, [b"a"]), headers=good)
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    finally:
        client.close()
    plain = grpcclient.InferenceServerClient(served.grpc_url)  # no TLS: refused
    try:
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
    finally:
        plain.close()
