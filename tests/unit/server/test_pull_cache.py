"""`model-server pull --cache URL`: the node's model cache agent asked first (a stand-in speaking
msv_contract.modelcache on loopback), the store directly when it cannot answer, and the marker
recording where the bytes came from."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_server import cli
from model_server.pull import MARKER, PullError, pull, read_marker
from msv_contract import modelcache as mc


def tarball() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        data = b'{"a": 1}'
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


class FakeAgent:
    """Answers every artifact request with ``status``, ``body`` and ``headers``; records the
    requests."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []


@pytest.fixture
def agent() -> Iterator[tuple[str, FakeAgent]]:
    fake = FakeAgent()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            fake.requests.append((self.path, dict(self.headers)))
            self.send_response(fake.status)
            for name, value in fake.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            self.wfile.write(fake.body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_hit_is_unpacked_checked_and_recorded(tmp_path: Path, agent: tuple[str, FakeAgent],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, fake = agent
    data = tarball()
    fake.body = data
    fake.headers = {mc.SOURCE_HEADER: mc.HIT, mc.SHA256_HEADER: sha(data),
                    mc.STORE_BYTES_HEADER: "0"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    dest = pull("s3://models/m/model.tar.gz", tmp_path / "m", sha256=sha(data), cache=url)
    assert json.loads((dest / "config.json").read_text()) == {"a": 1}
    record = read_marker(dest)
    assert {k: record[k] for k in ("uri", "sha256", "source", "bytes", "cacheBytes")} == {
        "uri": "s3://models/m/model.tar.gz", "sha256": sha(data), "source": mc.HIT,
        "bytes": 0, "cacheBytes": len(data)}
    assert isinstance(record["seconds"], float)
    path, headers = fake.requests[0]
    assert path.startswith(mc.ARTIFACT_PATH) and f"sha256={sha(data)}" in path
    sent = {k.lower(): v for k, v in headers.items()}
    assert sent[mc.credential_header("AWS_ACCESS_KEY_ID").lower()] == "AKID"
    assert sent[mc.credential_header("AWS_SECRET_ACCESS_KEY").lower()] == "SECRET"
    # The same pull again is a no-op although the marker now holds more than uri and sha256.
    assert pull("s3://models/m/model.tar.gz", dest, sha256=sha(data), cache=url) == dest
    assert len(fake.requests) == 1


def test_an_unreachable_agent_falls_back_to_the_store(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    dest = pull(model.as_uri(), tmp_path / "m", cache=f"http://127.0.0.1:{port}")
    assert (dest / "model.pt").read_bytes() == b"weights"
    record = read_marker(dest)
    assert (record["source"], record["bytes"], record["cacheBytes"]) == (mc.DIRECT, 7, 0)
    assert "the agent was not used" in str(record["cacheBypass"])
    assert "pulling directly" in caplog.text


@pytest.mark.parametrize("status, headers, body, why", [
    (409, {}, b"a prefix", "HTTP 409"),
    (200, {mc.SHA256_HEADER: "0" * 64, mc.SOURCE_HEADER: mc.HIT}, b"weights", "announced"),
    (200, {mc.SOURCE_HEADER: mc.HIT}, b"garbage", "did not match --sha256"),
])
def test_refusals_and_wrong_bytes_from_the_agent_fall_back(
        tmp_path: Path, agent: tuple[str, FakeAgent], status: int, headers: dict[str, str],
        body: bytes, why: str) -> None:
    url, fake = agent
    fake.status, fake.headers, fake.body = status, headers, body
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    dest = pull(model.as_uri(), tmp_path / "m", sha256=sha(b"weights"), cache=url)
    assert (dest / "model.pt").read_bytes() == b"weights"
    assert read_marker(dest)["source"] == mc.DIRECT and why in str(read_marker(dest)["cacheBypass"])


def test_a_bypass_is_recorded_and_told_in_the_termination_message(
        tmp_path: Path, agent: tuple[str, FakeAgent], monkeypatch: pytest.MonkeyPatch) -> None:
    url, fake = agent
    fake.body = b"weights"
    fake.headers = {mc.SOURCE_HEADER: mc.BYPASSED, mc.BYPASS_HEADER: "the cache's disk is full"}
    log_file = tmp_path / "termination-log"
    log_file.write_text("")
    monkeypatch.setenv("MODEL_SERVER_TERMINATION_LOG", str(log_file))
    dest = tmp_path / "m"
    assert cli.main(["pull", "https://store.example/model.pt", str(dest), "--cache", url]) == 0
    record = read_marker(dest)
    assert (record["source"], record["bytes"]) == (mc.BYPASSED, 7)
    told = json.loads(log_file.read_text())
    assert (told["source"], told["cacheBypass"]) == (mc.BYPASSED, "the cache's disk is full")


def test_a_store_error_through_the_agent_still_fails_the_pull(
        tmp_path: Path, agent: tuple[str, FakeAgent]) -> None:
    url, fake = agent
    fake.status, fake.body = 404, b"no such object"
    with pytest.raises(PullError, match="no such file"):
        pull((tmp_path / "absent.pt").as_uri(), tmp_path / "m", cache=url)
    assert not (tmp_path / "m").exists() and fake.requests


def test_without_a_cache_the_marker_says_direct(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"abc")
    dest = pull(model.as_uri(), tmp_path / "m")
    record: dict[str, Any] = json.loads((dest / MARKER).read_text())
    assert (record["source"], record["bytes"]) == (mc.DIRECT, 3)
    assert "cacheBypass" not in record
