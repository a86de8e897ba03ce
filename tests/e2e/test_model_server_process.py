"""`model-server serve` as a real process on loopback, called with tritonclient.http.

Each test builds a tiny real model with tests/modelfactory.py, starts the documented
command on a free port, waits for readiness and calls it like a user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def model_server(*flags: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "model_server", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--torch-threads", "1", *flags,
    ]  # fmt: skip
    log = tempfile.TemporaryFile()  # noqa: SIM115 - a file, not a pipe: never blocks the server
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise AssertionError(f"model-server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"http://{url}/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_model(url: str, timeout_s: float = 120) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while True:
        meta = httpx.get(f"http://{url}/v2/models/model").json()
        if meta["parameters"]["state"] != "loading":
            return meta  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "model did not load"
        time.sleep(0.1)


def test_text_classifier_with_tritonclient(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    sys.path.insert(0, str(REPO / "tests"))
    from modelfactory import make_text_classifier

    model_dir = tmp_path / "sentiment"
    make_text_classifier(model_dir)
    with model_server(
        "--model-dir", str(model_dir), "--task", "text-classification", "--variant", "int8",
        "--quantization", "dynamic-int8", "--max-batch-size", "4",
    ) as url:  # fmt: skip
        meta = _wait_model(url)
        assert meta["parameters"]["state"] == "ready", meta
        assert meta["parameters"]["quantization"] == "dynamic-int8"
        client = httpclient.InferenceServerClient(url)
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("model")
        text = httpclient.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(np.array([b"a good movie", b"terrible food", b"ok"], dtype=object))
        result = client.infer("model", [text])
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert len(labels) == 3
        assert set(labels) <= {"NEGATIVE", "POSITIVE"}
        assert result.as_numpy("logits").shape == (3, 2)
        metrics = httpx.get(f"http://{url}/metrics").text
        assert 'quantization="dynamic-int8"' in metrics
        assert 'model_server_requests_total{endpoint="infer",model="model",status="200"' in metrics


def test_torchscript_fp32_with_tritonclient(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    sys.path.insert(0, str(REPO / "tests"))
    from modelfactory import make_torchscript

    source = tmp_path / "mlp"
    module = make_torchscript(source, in_features=8, out_features=4)
    # the init-container flow: pull into the (empty) model volume, then serve it
    model_dir = tmp_path / "volume"
    model_dir.mkdir()
    pulled = subprocess.run(
        [sys.executable, "-m", "model_server", "pull", source.as_uri(), str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert (model_dir / "model.pt").is_file()
    with model_server("--model-dir", str(model_dir)) as url:  # framework detected from model.pt
        meta = _wait_model(url)
        assert meta["parameters"]["state"] == "ready", meta
        assert meta["platform"] == "pytorch_libtorch"
        client = httpclient.InferenceServerClient(url)
        x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        inp = httpclient.InferInput("input", [5, 8], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("model", [inp])
        import torch

        expected = module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def test_generate_endpoint_on_a_real_generator(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from modelfactory import make_text_generator

    model_dir = tmp_path / "gpt"
    make_text_generator(model_dir)
    with model_server("--model-dir", str(model_dir), "--task", "text-generation") as url:
        assert _wait_model(url)["parameters"]["state"] == "ready"
        r = httpx.post(
            f"http://{url}/v2/models/model/generate",
            json={"text_input": "hello world", "parameters": {"max_tokens": 4}},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["text_output"], str)
        with httpx.stream(
            "POST",
            f"http://{url}/v2/models/model/generate_stream",
            json={"text_input": "hello", "parameters": {"max_tokens": 3}},
            timeout=60,
        ) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events
        assert all('"text_output"' in e for e in events)


def test_corrupt_model_is_not_ready_with_reason(tmp_path: Path) -> None:
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{ not json")
    with model_server("--model-dir", str(model_dir), "--task", "text-classification") as url:
        meta = _wait_model(url)
        assert meta["parameters"]["state"] == "failed"
        assert meta["parameters"]["reason"]
        r = httpx.get(f"http://{url}/v2/health/ready")
        assert r.status_code == 503
        assert "failed to load" in r.json()["error"]
        assert httpx.get(f"http://{url}/v2/health/live").status_code == 200


def test_unusable_token_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "model_server", "serve", "--model-dir", str(tmp_path),
         "--auth-tokens", str(tmp_path / "no-such-secret")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read auth tokens" in lines[0], proc.stderr


def test_three_front_ends_with_a_token_on_one_process(tmp_path: Path) -> None:
    """REST, gRPC and OpenAI of one `serve` process on a real generator, token required."""
    import openai
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    sys.path.insert(0, str(REPO / "tests"))
    from modelfactory import make_text_generator

    model_dir = tmp_path / "gpt"
    make_text_generator(model_dir)
    (tmp_path / "tokens").write_text("e2e-token\n")
    grpc_port = _free_port()
    flags = ("--model-dir", str(model_dir), "--task", "text-generation",
             "--grpc-port", str(grpc_port), "--auth-tokens", str(tmp_path / "tokens"))  # fmt: skip
    auth = {"Authorization": "Bearer e2e-token"}
    with model_server(*flags) as url:
        deadline = time.monotonic() + 120
        while httpx.get(f"http://{url}/v2/health/ready").status_code != 200:  # no token
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.1)
        assert httpx.get(f"http://{url}/v2/models/model").status_code == 401
        meta = httpx.get(f"http://{url}/v2/models/model", headers=auth).json()
        assert meta["parameters"]["supports_generate"] is True
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert client.is_server_ready()
            with pytest.raises(InferenceServerException):
                client.get_model_metadata("model")
            grpc_meta = client.get_model_metadata(
                "model", headers={"authorization": auth["Authorization"]}
            )
            assert grpc_meta.name == "model"
        finally:
            client.close()
        oai = openai.OpenAI(base_url=f"http://{url}/v1", api_key="e2e-token", max_retries=0)
        done = oai.completions.create(model="model", prompt="hello", max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens <= 3
