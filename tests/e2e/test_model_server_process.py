"""`model-server serve` as a real process on loopback, called with tritonclient.http.

Each test builds a tiny real model with tests/modelfactory.py, starts the documented
command on a free port, waits for readiness and calls it like a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from waiting import wait_for

from localcluster.ports import free_port

pytestmark = [pytest.mark.torch, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _spawn(
    *flags: str, env: dict[str, str] | None = None, port: int | None = None
) -> tuple[subprocess.Popen, str, Any]:  # type: ignore[type-arg]
    """Start `model-server serve` on loopback (a free port unless given); (process,
    host:port, log file)."""
    port = port or free_port()
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
    return proc, f"127.0.0.1:{port}", log


def _output(log: Any) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace"))


def _wait_live(proc: subprocess.Popen, url: str, log: Any) -> None:  # type: ignore[type-arg]
    def live() -> bool:
        if proc.poll() is not None:  # not an AssertionError: it ends the wait at once
            raise RuntimeError(f"model-server exited with {proc.returncode}:\n{_output(log)}")
        try:
            return httpx.get(f"http://{url}/v2/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the server to start", live, timeout=120, interval=0.1)


@contextmanager
def model_server(
    *flags: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[str]:
    # --drain-seconds 0: stop at once at the end
    proc, url, log = _spawn("--drain-seconds", "0", *flags, env=env, port=port)
    try:
        _wait_live(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_model(url: str, timeout_s: float = 120) -> dict:  # type: ignore[type-arg]
    return wait_for("the model to load", lambda: httpx.get(f"http://{url}/v2/models/model").json(),
                    timeout=timeout_s, interval=0.1,
                    until=lambda meta: meta["parameters"]["state"] != "loading")


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


def test_corrupt_model_is_not_ready_with_reason_when_told_to_stay_up(tmp_path: Path) -> None:
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{ not json")
    with model_server(
        "--model-dir", str(model_dir), "--task", "text-classification",
        env={"MODEL_SERVER_EXIT_ON_LOAD_FAILURE": "false"},
    ) as url:  # fmt: skip
        meta = _wait_model(url)
        assert meta["parameters"]["state"] == "failed"
        assert meta["parameters"]["reason"]
        r = httpx.get(f"http://{url}/v2/health/ready")
        assert r.status_code == 503
        assert "failed to load" in r.json()["error"]
        assert httpx.get(f"http://{url}/v2/health/live").status_code == 200


def test_unusable_token_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    tlog = _termination_log(tmp_path)
    code, output = _run_to_exit(
        "--model-dir", str(tmp_path), "--auth-tokens", str(tmp_path / "no-such-secret"),
        env={"MODEL_SERVER_TERMINATION_LOG": str(tlog)},
    )  # fmt: skip
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read auth tokens" in lines[0], output
    assert "cannot read auth tokens" in tlog.read_text()


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
    grpc_port = free_port()
    flags = ("--model-dir", str(model_dir), "--task", "text-generation",
             "--grpc-port", str(grpc_port), "--auth-tokens", str(tmp_path / "tokens"))  # fmt: skip
    auth = {"Authorization": "Bearer e2e-token"}
    with model_server(*flags) as url:
        wait_for("the model to load", lambda: httpx.get(  # no token
            f"http://{url}/v2/health/ready").status_code == 200, timeout=120, interval=0.1)
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


# How the process ends (model_server/cli.py): exit codes, termination message, drain -------


def _termination_log(tmp_path: Path) -> Path:
    path = tmp_path / "termination-log"
    path.touch()  # the kubelet creates it in every container; the server only writes it
    return path


def _run_to_exit(*flags: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `model-server serve` until it exits by itself: (exit code, output)."""
    proc, _, log = _spawn(*flags, env=env)
    try:
        code = proc.wait(120)
    finally:
        proc.kill()
        output = _output(log)
        log.close()
    return code, output


def test_failed_load_exits_4_with_the_error_as_termination_message(tmp_path: Path) -> None:
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{ not json")
    tlog = _termination_log(tmp_path)
    code, output = _run_to_exit(
        "--model-dir", str(model_dir), "--task", "text-classification", "--variant", "int8",
        env={"MODEL_SERVER_TERMINATION_LOG": str(tlog)},
    )  # fmt: skip
    assert code == 4, output
    message = tlog.read_text()
    assert message.startswith("model 'model' (variant int8, framework auto) failed to load from "
                              f"{model_dir}: "), message
    assert "config.json" in message or "JSON" in message, message
    assert "\n" not in message


def test_missing_model_dir_exits_4_and_no_file_is_created_outside_a_pod(tmp_path: Path) -> None:
    absent = tmp_path / "no-termination-log"
    code, output = _run_to_exit(
        "--model-dir", str(tmp_path / "missing"), env={"MODEL_SERVER_TERMINATION_LOG": str(absent)}
    )
    assert code == 4, output
    assert "does not exist" in output
    assert not absent.exists()


def test_pull_with_a_wrong_sha256_writes_one_line_termination_message(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"not really a model")
    tlog = _termination_log(tmp_path)
    pulled = subprocess.run(
        [sys.executable, "-m", "model_server", "pull", source.as_uri(), str(tmp_path / "dest"),
         "--sha256", "0" * 64],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "MODEL_SERVER_TERMINATION_LOG": str(tlog)},
    )  # fmt: skip
    assert pulled.returncode == 1, pulled.stderr
    message = tlog.read_text()
    assert message.startswith("model pull failed: checksum mismatch for "), message
    assert f"expected sha256 {'0' * 64}, got " in message
    assert "\n" not in message


def test_sigterm_drains_with_no_failed_request(tmp_path: Path) -> None:
    """SIGTERM under load, with clients that behave like a Service's endpoint removal.

    Eight clients on kept-alive connections send infer requests without pause. A watcher
    plays the endpoints controller: it polls readiness, and some time after it sees 503 the
    "endpoint is removed" and the clients stop sending new requests (requests already sent
    still have to finish). Every request sent must succeed and the process must exit 0.
    """
    import signal
    import threading

    sys.path.insert(0, str(REPO / "tests"))
    from modelfactory import make_text_classifier

    model_dir = tmp_path / "sentiment"
    make_text_classifier(model_dir)
    proc, url, log = _spawn(
        "--model-dir", str(model_dir), "--task", "text-classification", "--drain-seconds", "5"
    )
    removed = threading.Event()
    threads: list[threading.Thread] = []
    try:
        _wait_live(proc, url, log)
        assert _wait_model(url)["parameters"]["state"] == "ready"
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                            "data": ["a good movie"]}]}  # fmt: skip
        sigterm_sent = threading.Event()
        lock = threading.Lock()
        counts = {"ok": 0, "after_sigterm": 0, "closed_by_server": 0}
        failures: list[str] = []

        def client() -> None:
            with httpx.Client(base_url=f"http://{url}", timeout=30) as c:
                while not removed.is_set():
                    after = sigterm_sent.is_set()
                    try:
                        r = c.post("/v2/models/model/infer", json=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"HTTP {r.status_code}: {r.text}")
                        else:
                            counts["ok"] += 1
                            counts["after_sigterm"] += after
                            counts["closed_by_server"] += r.headers.get("connection") == "close"

        threads += [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        while counts["ok"] < 50:  # under load before the signal
            assert not failures, failures
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sigterm_sent.set()
        while httpx.get(f"http://{url}/v2/health/ready", timeout=5).status_code != 503:
            time.sleep(0.05)
        # endpoint removal propagates with a delay: clients keep sending for a while
        time.sleep(1.0)
        removed.set()
        for t in threads:
            t.join(60)
        code = proc.wait(60)
    finally:
        removed.set()
        for t in threads:
            t.join(60)
        proc.kill()
        proc.wait()
    output = _output(log)
    assert failures == [], failures[:5]
    assert counts["after_sigterm"] > 0, counts
    assert counts["closed_by_server"] > 0, counts  # clients were told to reconnect elsewhere
    assert code == 0, output
    assert "draining" in output
