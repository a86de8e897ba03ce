"""The gateway's data plane with the REAL nginx binary, on loopback only.

Rendered configurations (``localcluster.gateway.render``) are served by a real nginx master
(``localcluster.gateway.nginx``, as the controller runs it) on 127.0.0.1 with free ports and a
temporary prefix directory; small Python HTTP servers on loopback are the endpoints (the
EndpointSlices fed to render carry 127.0.0.1 and their ports). Each backend answers with its
name, so a test counts where each request went. Nothing here needs root or a cluster; nginx
must be installed (Debian's package: ``scripts/node-packages`` installs it for ``make test``),
and a missing nginx FAILS with the install line rather than skipping. The retry budget's tests
read the routing tier's counters (``Nginx.budget_counters``) and compare them with what the
endpoints answered.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gateway_objects import (
    backend,
    budget,
    endpoint_slice,
    gateway,
    gateway_class,
    listener,
    objects,
    policy,
    route,
    rule,
    service,
)
from waiting import wait_for

from localcluster.gateway import controller, render
from localcluster.gateway.nginx import DataPlane, Nginx, NginxError, find_binary
from localcluster.ports import free_port

pytestmark = pytest.mark.slow

VARIANT_HEADER = "x-msv-variant"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one send (flushed when the request is done), as a model
    # server's short answer does: a kill cuts a request before its answer or not at all. (A
    # crash after an answer started cannot be retried by anyone: docs/gateway.md, Retries.)
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: Backend

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/stream":
            self._stream()
            return
        if self.server.delay:
            time.sleep(self.server.delay)
        with self.server.conns_lock:
            self.server.hits += 1
        body = self.server.name.encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        """Server-sent events: one event, then a wait until the client has it, then one more."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n in (1, 2):
            event = f"data: {self.server.name} {n}\n\n".encode()
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            self.wfile.flush()
            if n == 1:
                self.server.first_event_seen_in_time = self.server.first_event_seen.wait(10)
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


class Backend(ThreadingHTTPServer):
    """An endpoint on 127.0.0.1 answering its name with ``status`` (``hits`` counts the
    answers); ``kill`` drops it like ``kill -9``."""

    daemon_threads = True

    def __init__(self, name: str, delay: float = 0.0, status: int = 200) -> None:
        self.name, self.delay, self.status = name, delay, status
        self.hits = 0
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.first_event_seen = threading.Event()
        self.first_event_seen_in_time = False
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = int(self.server_address[1])
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def kill(self) -> None:
        """No more connections, and every open one cut mid-request (a crashed process)."""
        self.shutdown()
        self.socket.close()
        with self.conns_lock:
            for c in list(self.conns):
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    try:
        return find_binary()
    except NginxError as e:
        pytest.fail(str(e), pytrace=False)


@dataclass
class Gateway:
    """A real nginx serving what ``serve`` renders; ``url`` is its listener on loopback."""

    binary: str
    dir: Path
    port: int = field(default_factory=free_port)
    plane: DataPlane | None = None
    last: render.Rendered | None = None

    def __post_init__(self) -> None:
        self.options = render.Options(
            runtime_dir=str(self.dir), ports=frozenset({self.port}), listen_address="127.0.0.1",
            status_listen=f"127.0.0.1:{free_port()}",
            edge_status_listen=f"127.0.0.1:{free_port()}", workers="1")

    def serve(self, *items: Mapping[str, Any]) -> render.Rendered:
        out = render.render(objects(gateway_class(), gateway([listener(self.port)]), *items),
                            self.options)
        if self.plane is None:
            self.plane = DataPlane(self.dir, self.dir, self.options, binary=self.binary,
                                   log=lambda _line: None)
            self.plane.start(out.config)
        else:
            applied = self.plane.apply(out.config)
            assert not applied.error, applied.error
        self.last = out
        return out

    @property
    def nginx(self) -> Nginx:
        assert self.plane is not None
        return self.plane.routing

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


@pytest.fixture
def gw(nginx_binary: str) -> Iterator[Gateway]:
    d = Path(tempfile.mkdtemp(prefix="msv-gw-"))
    d.chmod(0o755)  # nginx's workers (nobody, when the tests run as root) use its temp dirs
    g = Gateway(nginx_binary, d)
    try:
        yield g
    finally:
        if g.plane is not None:
            g.plane.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str, delay: float = 0.0, status: int = 200) -> Backend:
        b = Backend(name, delay, status)
        made.append(b)
        return b

    yield make
    for b in made:
        b.shutdown()
        b.server_close()


def _svc(name: str, *eps: Backend) -> list[dict[str, Any]]:
    """The Service and one EndpointSlice per endpoint (each has its own port on loopback)."""
    return [service(name), *(endpoint_slice(name, ["127.0.0.1"], b.port, name=f"{name}-{i}")
                             for i, b in enumerate(eps))]


def request(conn: http.client.HTTPConnection, path: str = "/v2/models/m/infer",
            headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    conn.request("POST", path, body=b'{"inputs": []}',
                 headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


def where(gw: Gateway, n: int, headers: Mapping[str, str] | None = None,
          path: str = "/v2/models/m/infer") -> Counter[str]:
    """Send ``n`` requests on one keep-alive connection; count answers by backend name (or
    by status for errors)."""
    got: Counter[str] = Counter()
    conn = gw.connection()
    for _ in range(n):
        status, body = request(conn, path, headers)
        got[body if status == 200 else str(status)] += 1
    conn.close()
    return got


class SteadyClient:
    """``threads`` clients sending requests back to back until stopped (bounded in count),
    each on one keep-alive connection it reuses without checking it first (the strictest
    client: a connection the gateway closed between two requests would fail a request)."""

    def __init__(self, gw: Gateway, threads: int = 4, limit: int = 20000) -> None:
        self.gw, self.limit = gw, limit
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> SteadyClient:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def done(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)

    def _run(self) -> None:
        conn = self.gw.connection()
        while not self.stopping.is_set() and self.done() < self.limit:
            try:
                status, body = request(conn)
                outcome = "" if status == 200 else f"HTTP {status}: {body[:80]}"
            except (OSError, http.client.HTTPException) as e:
                outcome = f"{type(e).__name__}: {e}"
                conn.close()
                conn = self.gw.connection()
            with self.lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.ok += 1
        conn.close()

    def wait_for(self, n: int, timeout: float = 60) -> None:
        start = self.done()
        wait_for(f"{n} more requests", lambda: self.done() - start >= n, timeout=timeout)


def test_a_10_90_split_measures_10_percent_over_1000_requests(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable, canary = backends("stable"), backends("canary")
    # Two stable pods against one canary pod: the split is per request, not per pod.
    stable2 = backends("stable")
    gw.serve(route([rule([backend("canary", weight=10), backend("stable", weight=90)])]),
             *_svc("stable", stable, stable2), *_svc("canary", canary))
    got = where(gw, 1000)
    assert set(got) == {"stable", "canary"}, got
    assert 70 <= got["canary"] <= 130, got  # 10 % +- 3 points


def test_a_header_match_reaches_its_backend_and_nothing_else_does(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable, canary = backends("stable"), backends("canary")
    gw.serve(route([rule([backend("stable")], path="/"),
                    rule([backend("canary")], path="/", headers={VARIANT_HEADER: "canary"})]),
             *_svc("stable", stable), *_svc("canary", canary))
    assert where(gw, 100, {VARIANT_HEADER: "canary"}) == Counter(canary=100)
    assert where(gw, 100) == Counter(stable=100)
    # A value that names no variant, another case, or the header on another name: normal routing.
    assert where(gw, 20, {VARIANT_HEADER: "Canary"}) == Counter(stable=20)
    assert where(gw, 20, {VARIANT_HEADER: "nope"}) == Counter(stable=20)
    assert where(gw, 20, {"x-other": "canary"}) == Counter(stable=20)


def test_header_values_and_paths_with_nginx_syntax_route_exactly(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable, canary = backends("stable"), backends("canary")
    evil = 'x"; } server { listen 1; } #'
    gw.serve(route([rule([backend("stable")], path="/"),
                    rule([backend("canary")], path="/p;$x", headers={VARIANT_HEADER: evil})]),
             *_svc("stable", stable), *_svc("canary", canary))
    assert where(gw, 5, {VARIANT_HEADER: evil}, path="/p;$x/y") == Counter(canary=5)
    assert where(gw, 5, {VARIANT_HEADER: evil}, path="/p;$xy") == Counter(stable=5)
    assert where(gw, 5, {VARIANT_HEADER: evil[:-1]}, path="/p;$x") == Counter(stable=5)


def _raw(gw: Gateway, request: bytes) -> tuple[int, str]:
    """One request as bytes on its own connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_hostnames_pick_their_routes_whatever_the_case_port_or_http_version(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable, canary = backends("stable"), backends("canary")
    gw.serve(route([rule([backend("stable")])], name="any"),
             route([rule([backend("canary")])], name="exact", hostnames=["m.example.com"]),
             *_svc("stable", stable), *_svc("canary", canary))
    assert _raw(gw, b"GET / HTTP/1.1\r\nHost: m.example.com\r\nConnection: close\r\n\r\n") \
        == (200, "canary")
    assert _raw(gw, b"GET / HTTP/1.1\r\nHost: M.Example.com:80\r\nConnection: close\r\n\r\n") \
        == (200, "canary")
    assert _raw(gw, b"GET http://m.example.com/ HTTP/1.1\r\nHost: x\r\nConnection: close"
                    b"\r\n\r\n") == (200, "canary")  # the request line's host wins
    assert _raw(gw, b"GET / HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n") \
        == (200, "stable")
    assert _raw(gw, b"GET / HTTP/1.0\r\n\r\n") == (200, "stable")  # no Host at all


def test_a_streamed_response_reaches_the_client_as_it_is_sent(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    sse = backends("sse")
    gw.serve(route([rule([backend("sse")])]), *_svc("sse", sse))
    conn = gw.connection()
    conn.request("GET", "/stream", headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline() == b"data: sse 1\n"  # before the server sends the second event
    sse.first_event_seen.set()
    assert resp.read() == b"\ndata: sse 2\n\n"
    assert sse.first_event_seen_in_time
    conn.close()


def test_no_matching_rule_is_404_and_an_exact_path_wins(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    a, b = backends("a"), backends("b")
    gw.serve(route([rule([backend("a")], path="/v2"),
                    rule([backend("b")], path="/v2/health/ready", exact=True)]),
             *_svc("a", a), *_svc("b", b))
    assert where(gw, 5, path="/v2/models/x") == Counter(a=5)
    assert where(gw, 5, path="/v2/health/ready") == Counter(b=5)
    assert where(gw, 5, path="/v2/health/ready/x") == Counter(a=5)
    assert where(gw, 5, path="/v2x") == Counter({"404": 5})
    assert where(gw, 5, path="/metrics") == Counter({"404": 5})


def test_a_killed_endpoint_under_a_steady_client_fails_no_request(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    pod1, pod2 = backends("stable", delay=0.005), backends("stable", delay=0.005)
    gw.serve(route([rule([backend("stable")], retry={"attempts": 2, "codes": [503]})]),
             *_svc("stable", pod1, pod2))
    with SteadyClient(gw) as client:
        client.wait_for(200)
        pod1.kill()  # its in-flight requests are cut, new connections refused
        client.wait_for(600)
    assert client.failures == [], client.failures[:5]
    assert client.ok >= 800


def test_a_backend_without_endpoints_answers_503_for_its_share_only(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable = backends("stable")
    out = gw.serve(route([rule([backend("stable", weight=50), backend("empty", weight=50)])]),
                   *_svc("stable", stable), service("empty"))
    got = where(gw, 400)
    assert set(got) == {"stable", "503"}, got  # never re-spread onto stable
    assert 160 <= got["503"] <= 240, got
    (parent,) = out.routes[("app", "route")]
    resolved = {c["type"]: c for c in parent["conditions"]}["ResolvedRefs"]
    assert "app/empty:80 has no ready endpoints" in resolved["message"]


def test_a_reload_under_load_drops_nothing(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable, canary = backends("stable"), backends("canary")
    eps = (*_svc("stable", stable), *_svc("canary", canary))
    gw.serve(route([rule([backend("canary", weight=10), backend("stable", weight=90)])]), *eps)
    with SteadyClient(gw) as client:
        client.wait_for(100)
        for step in (20, 30, 40, 50, 60):
            gw.serve(route([rule([backend("canary", weight=step),
                                  backend("stable", weight=100 - step)])]), *eps)
            client.wait_for(100)
    assert gw.nginx.reloads == 5
    assert client.failures == [], client.failures[:5]


def test_a_config_nginx_refuses_keeps_the_old_one_serving(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    stable = backends("stable")
    gw.serve(route([rule([backend("stable")])]), *_svc("stable", stable))
    assert gw.last is not None
    broken = gw.last.config.replace("keepalive 16;", "keepalive nope;")
    applied = gw.nginx.apply(broken)
    assert not applied.changed and 'invalid value "nope" in "keepalive"' in applied.error
    assert gw.nginx.reload_errors == 1
    assert where(gw, 10) == Counter(stable=10)
    # The same refused text is not tried again; a good one is served.
    assert gw.nginx.apply(broken).error == applied.error and gw.nginx.reload_errors == 1
    gw.serve(route([rule([backend("stable")], path="/v2")]), *_svc("stable", stable))
    assert where(gw, 3, path="/x") == Counter({"404": 3})


# -- the retry budget ---------------------------------------------------------------------------


@dataclass
class Answers:
    """What a client got: 200s, 503s the budget refused (header and body), anything else."""

    ok: int = 0
    refused: int = 0
    other: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.refused + len(self.other)

    def send(self, conn: http.client.HTTPConnection) -> Answers:
        conn.request("POST", "/v2/models/m/infer", body=b'{"inputs": []}',
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        header = resp.getheader(render.BUDGET_HEADER)
        if resp.status == 200 and body == "stable" and header is None:
            self.ok += 1
        elif resp.status == 503 and header == render.BUDGET_HEADER_VALUE \
                and body == "the backend failed and its retry budget is spent: not retried\n":
            self.refused += 1
        else:
            self.other.append(f"{resp.status} {header} {body[:80]!r}")
        return self


def _metric(families: list[Any], name: str, **labels: str) -> float:
    (value,) = [s.value for f in families for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(value)


def test_a_failing_endpoint_gets_no_more_retries_than_its_budget(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    bad, good = backends("stable", status=503), backends("stable")
    items = (route([rule([backend("stable")], retry={"attempts": 2, "codes": [503]})]),
             *_svc("stable", bad, good))
    # No share of requests, and a floor of one retry per hour: one retry, then none.
    out = gw.serve(*items, policy(["stable"], retryConstraint=budget(
        percent=0, count=1, floor="1h")))
    assert _balance_line(out.config).endswith('balance("app/stable", 0, 10000, 1, 3600000) }')
    got = Answers()
    conn = gw.connection()
    # The failing endpoint sits out nginx's fail_timeout (1 s) after each failure, so it is
    # reached every second or two: wait for three refused retries.
    wait_for("three retries refused", lambda: got.send(conn).refused >= 3, timeout=60,
             interval=0.01)
    conn.close()
    assert got.other == []
    counters = gw.nginx.budget_counters()["app/stable"]
    assert counters == {"requests": got.total, "retries_allowed": 1,
                        "retries_rejected": got.refused}
    # Every hit of the failing endpoint was a first try: one retried (the floor), the rest
    # refused; the healthy endpoint answered every 200 once.
    assert bad.hits == 1 + got.refused
    assert good.hits == got.ok
    families = list(controller.budget_metrics(gw.nginx.budget_counters()))
    labels = {"namespace": "app", "service": "stable"}
    assert _metric(families, controller.METRICS["backend_requests"], **labels) == got.total
    assert _metric(families, controller.METRICS["retries"], result="allowed", **labels) == 1
    assert _metric(families, controller.METRICS["retries"], result="rejected",
                   **labels) == got.refused
    # A policy that allows every retry takes effect on reload; the counters survive it.
    gw.serve(*items, policy(["stable"], retryConstraint=budget(percent=100, count=1,
                                                               floor="1h")))
    assert gw.nginx.budget_counters()["app/stable"] == counters
    hits, after = bad.hits, Answers()
    conn = gw.connection()
    wait_for("the failing endpoint tried again",
             lambda: after.send(conn) and bad.hits > hits, timeout=60, interval=0.01)
    conn.close()
    assert after.ok == after.total and after.total >= 1, after
    assert gw.nginx.budget_counters()["app/stable"]["retries_allowed"] == 1 + bad.hits - hits


def test_with_the_default_budget_a_failing_endpoint_at_low_traffic_is_always_retried(
        gw: Gateway, backends: Callable[..., Backend]) -> None:
    bad, good = backends("stable", status=503), backends("stable")
    out = gw.serve(route([rule([backend("stable")], retry={"attempts": 2, "codes": [503]})]),
                   *_svc("stable", bad, good))
    assert _balance_line(out.config).endswith('balance("app/stable", 20, 10000, 10, 1000) }')
    got = Answers()
    conn = gw.connection()
    # Two requests a second (wait_for's pace): the failing endpoint, back after its
    # fail_timeout, takes one in two to five of them, so retries come near or above 20 % of
    # requests; the floor (10 a second) allows them whatever the share.
    wait_for("three hits of the failing endpoint", lambda: got.send(conn) and bad.hits >= 3,
             timeout=60, interval=0.5)
    conn.close()
    assert got.ok == got.total and got.other == [], got
    assert gw.nginx.budget_counters() == {"app/stable": {
        "requests": got.total, "retries_allowed": bad.hits, "retries_rejected": 0}}
    assert good.hits == got.total


def _balance_line(config: str) -> str:
    (line,) = [ln.strip() for ln in config.splitlines() if "balancer_by_lua_block" in ln]
    return line


def test_nginx_is_installed_for_make_test() -> None:
    """scripts/node-packages installs nginx and its lua module, so make test never runs
    without them."""
    script = (Path(__file__).resolve().parents[2] / "scripts" / "node-packages").read_text()
    packages = script.split("packages=(", 1)[1].split(")", 1)[0].split()
    assert {"nginx", "libnginx-mod-http-lua"} <= set(packages)
    assert os.access(find_binary(), os.X_OK)
    modules = Path(render.Options(runtime_dir="/r").nginx_modules_dir)
    assert all((modules / m).is_file() for m in render.NGINX_LUA_MODULES)
