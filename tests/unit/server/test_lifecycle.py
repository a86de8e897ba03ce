"""How the server process ends: termination messages, the load-failure hook, the drain.

The process-level behaviour (exit codes, SIGTERM under load) is tested on real processes in
tests/e2e/test_model_server_process.py; these are the pieces, in process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from model_server.app import create_app
from model_server.cli import TERMINATION_MESSAGE_MAX, main, write_termination_message
from model_server.routers import v2
from model_server.settings import Settings

from .conftest import serve_app
from .doubles import BrokenBackend, EchoBackend

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ab"]}


def test_termination_message_is_one_paragraph_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("an older, longer message that must not survive")
    assert write_termination_message(path, "model failed:\n  Traceback\tline  2\n")
    assert path.read_text() == "model failed: Traceback line 2"
    assert write_termination_message(path, "é" * 5000)
    data = path.read_bytes()
    assert len(data) <= TERMINATION_MESSAGE_MAX
    assert data.decode() == "é" * (TERMINATION_MESSAGE_MAX // 2)  # cut on a character


def test_termination_log_is_never_created(tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert not write_termination_message(absent, "boom")
    assert not absent.exists()
    assert not write_termination_message(tmp_path, "a directory is not writable as a file")


@pytest.fixture
def tlog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A termination-message file as the kubelet provides it (empty, existing)."""
    path = tmp_path / "termination-log"
    path.touch()
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(path))
    return path


def test_unknown_variable_exits_2_with_the_name_in_the_termination_log(
    tlog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_SERVER_QUANTISATION", "dynamic-int8")
    assert main(["serve"]) == 2
    assert tlog.read_text() == (
        "model-server serve: unknown environment variable(s) MODEL_SERVER_QUANTISATION (did "
        "you mean MODEL_SERVER_QUANTIZATION?); see `model-server serve --help` for the "
        "MODEL_SERVER_* settings")


def test_invalid_setting_exits_2_with_one_line_naming_the_variable(tlog: Path) -> None:
    assert main(["serve", "--drain-seconds", "-1"]) == 2
    assert tlog.read_text() == (
        "model-server serve: invalid settings: MODEL_SERVER_DRAIN_SECONDS: "
        "Input should be greater than or equal to 0 (got '-1')"
    )


def test_failed_load_calls_the_hook_once_with_the_message() -> None:
    settings = Settings(model_name="echo", variant="int8", model_dir=Path("/mnt/models"))
    app = create_app(settings, registry=CollectorRegistry(), backend=BrokenBackend())
    calls: list[str] = []
    app.state.on_load_failed = calls.append
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while not calls:
            assert time.monotonic() < deadline, "the hook was not called"
            time.sleep(0.01)
        assert client.get("/v2/health/ready").status_code == 503
    assert calls == [
        "model 'echo' (variant int8, framework auto) failed to load from /mnt/models: "
        "ModelLoadError: weights file model.safetensors is corrupt"]


def test_draining_turns_only_server_readiness_off() -> None:
    with serve_app() as (client, _, _):
        assert client.get("/v2/health/ready").status_code == 200
        client.app.start_draining()  # type: ignore[attr-defined]
        r = client.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"error": "the server is shutting down"})
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/models/echo/ready").status_code == 200
        r = client.post("/v2/models/echo/infer", json={"inputs": [X, TEXT]})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def _loading_app(backend: EchoBackend) -> TestClient:
    settings = Settings(model_name="echo", variant="baseline", model_dir=Path("/mnt/models"))
    backend.release_load.clear()  # the load waits until the test lets it go
    return TestClient(create_app(settings, registry=CollectorRegistry(), backend=backend),
                      raise_server_exceptions=False)


def test_a_waiting_ready_probe_is_answered_when_the_load_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The startup probe's ``?wait=``: held while the model loads, answered 200 by the load's
    end, not by the next probe."""
    backend = EchoBackend()
    holding = threading.Event()
    real_until_loaded = v2._until_loaded

    async def spy(dp: Any, wait: float) -> None:
        holding.set()
        await real_until_loaded(dp, wait)
    monkeypatch.setattr(v2, "_until_loaded", spy)
    with _loading_app(backend) as client:
        r = client.get("/v2/health/ready")  # no wait: at once, loading
        assert r.status_code == 503 and "loading" in r.text, r.text
        answer: list[Any] = []
        probe = threading.Thread(
            target=lambda: answer.append(client.get("/v2/health/ready?wait=5")))
        probe.start()
        assert holding.wait(10), "the probe never reached the server"
        backend.release_load.set()  # the load ends while the probe is held
        probe.join(10)
        assert answer and answer[0].status_code == 200, answer
        assert answer[0].json() == {"ready": True}


def test_a_waiting_ready_probe_gives_up_after_its_wait_and_is_bounded() -> None:
    backend = EchoBackend()
    with _loading_app(backend) as client:
        r = client.get("/v2/health/ready?wait=0.05")  # the load never ends within it
        assert r.status_code == 503 and "loading" in r.text, r.text
        for bad in ("6", "-1", "soon"):  # more than READY_WAIT_MAX_SECONDS, negative, text
            r = client.get(f"/v2/health/ready?wait={bad}")
            assert r.status_code == 400 and "query.wait" in r.text, (bad, r.text)
        backend.release_load.set()


def test_a_failed_load_ends_a_waiting_ready_probe_with_the_reason() -> None:
    settings = Settings(model_name="echo", variant="int8", model_dir=Path("/mnt/models"))
    app = create_app(settings, registry=CollectorRegistry(), backend=BrokenBackend())
    app.state.on_load_failed = lambda message: None
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v2/health/ready?wait=5")
        assert r.status_code == 503 and "corrupt" in r.text, r.text
