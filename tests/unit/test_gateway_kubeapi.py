"""localcluster.gateway.controller.KubeApi against a small fake API server on loopback: the
requests the kubernetes client sends (paths, watch parameters, PUT .../status) and what comes
back (lists, streamed watch events, 410 -> Gone, 409 -> Conflict, 404 -> NotFound, other
errors)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from localcluster.gateway import controller as c

GW = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
      "metadata": {"name": "gw", "namespace": "gw", "resourceVersion": "5"}}


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.first_seen = threading.Event()
        self.first_seen_in_time = False
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApiServer

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = parse_qs(url.query)
        self.server.requests.append(("GET", url.path, q, None))
        if url.path == "/api/v1/namespaces":
            self._send(500, b'{"message": "boom"}')
        elif url.path.startswith("/apis/gateway.networking.x-k8s.io/"):
            self._send(404, b'{"kind": "Status", "code": 404, "message": "404 page not found"}')
        elif q.get("watch") == ["true"] and q.get("resourceVersion") == ["old"]:
            self._send(200, json.dumps({"type": "ERROR", "object": {
                "kind": "Status", "code": 410, "message": "too old resource version"}}).encode())
        elif q.get("watch") == ["true"] and q.get("resourceVersion") == ["slow"]:
            # Chunked, like the API server: the first event, then a wait for the client to
            # have it (a client reading to the end first would see it only afterwards).
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in (1, 2):
                line = json.dumps({"type": "ADDED", "object": {
                    "metadata": {"name": f"o{n}", "resourceVersion": str(n)}}}).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
                if n == 1:
                    self.server.first_seen_in_time = self.server.first_seen.wait(10)
            self.wfile.write(b"0\r\n\r\n")
        elif q.get("watch") == ["true"]:
            moved = {**GW, "metadata": {**GW["metadata"], "resourceVersion": "6"}}
            lines = [{"type": "MODIFIED", "object": moved},
                     {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}]
            self._send(200, b"".join(json.dumps(e).encode() + b"\n" for e in lines))
        else:
            self._send(200, json.dumps({"kind": "GatewayList", "items": [GW],
                                        "metadata": {"resourceVersion": "5"}}).encode())

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("PUT", self.path, {}, body))
        if body["metadata"]["resourceVersion"] != "5":
            self._send(409, b'{"message": "the object has been modified"}')
        else:
            self._send(200, json.dumps(body).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[c.KubeApi, FakeApiServer]]:
    server = FakeApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    yield c.KubeApi(str(kubeconfig)), server
    server.shutdown()


def test_list_and_watch_read_raw_objects(api: tuple[c.KubeApi, FakeApiServer]) -> None:
    k, server = api
    items, rv = k.list(c.KIND["gateways"])
    assert items == [GW] and rv == "5"
    events = list(k.watch(c.KIND["gateways"], rv, 300))
    assert [(t, o["metadata"]["resourceVersion"]) for t, o in events] == \
        [("MODIFIED", "6"), ("BOOKMARK", "7")]
    (_m, path, q, _b) = server.requests[-1]
    assert path == "/apis/gateway.networking.k8s.io/v1/gateways"
    assert q["watch"] == ["true"] and q["resourceVersion"] == ["5"]
    assert q["allowWatchBookmarks"] == ["true"] and q["timeoutSeconds"] == ["300"]
    k.list(c.KIND["endpointslices"])
    assert server.requests[-1][1] == "/apis/discovery.k8s.io/v1/endpointslices"


def test_an_expired_watch_is_gone_and_other_errors_are_errors(
        api: tuple[c.KubeApi, FakeApiServer]) -> None:
    k, _server = api
    with pytest.raises(c.Gone):
        list(k.watch(c.KIND["services"], "old", 300))
    with pytest.raises(RuntimeError, match="GET /api/v1/namespaces: HTTP 500"):
        k.list(c.KIND["namespaces"])


def test_a_kind_the_server_does_not_serve_is_not_found(
        api: tuple[c.KubeApi, FakeApiServer]) -> None:
    k, server = api
    with pytest.raises(c.NotFound, match="HTTP 404"):
        k.list(c.KIND["xbackendtrafficpolicies"])
    assert server.requests[-1][1] == \
        "/apis/gateway.networking.x-k8s.io/v1alpha1/xbackendtrafficpolicies"


def test_status_is_put_on_the_subresource_with_the_read_version(
        api: tuple[c.KubeApi, FakeApiServer]) -> None:
    k, server = api
    k.replace_status(c.KIND["gateways"], {**GW, "status": {"conditions": []}})
    (method, path, _q, body) = server.requests[-1]
    assert (method, path) == ("PUT", "/apis/gateway.networking.k8s.io/v1/namespaces/gw/"
                                     "gateways/gw/status")
    assert body["status"] == {"conditions": []}
    stale = {**GW, "metadata": {**GW["metadata"], "resourceVersion": "4"}}
    with pytest.raises(c.Conflict):
        k.replace_status(c.KIND["gateways"], stale)
    k.replace_status(c.KIND["gatewayclasses"], {"metadata": {"name": "cls",
                                                             "resourceVersion": "5"}})
    assert server.requests[-1][1] == "/apis/gateway.networking.k8s.io/v1/gatewayclasses/cls/status"


def test_watch_events_arrive_as_they_are_sent(api: tuple[c.KubeApi, FakeApiServer]) -> None:
    k, server = api
    names = []
    for _type, obj in k.watch(c.KIND["gateways"], "slow", 300):
        names.append(obj["metadata"]["name"])
        server.first_seen.set()
    assert names == ["o1", "o2"]
    assert server.first_seen_in_time
