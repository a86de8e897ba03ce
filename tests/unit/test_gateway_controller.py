"""localcluster.gateway.controller with a fake API server and a fake data plane: status
writes (only what changed, other controllers' entries kept), nginx refusals, watches that
expire, the debounce, nginx's death, /healthz and /metrics."""

from __future__ import annotations

import copy
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from gateway_objects import (
    backend,
    endpoint_slice,
    gateway,
    gateway_class,
    listener,
    policy,
    route,
    rule,
    service,
)
from waiting import wait_for

from localcluster.gateway import controller as c
from localcluster.gateway.nginx import Applied
from localcluster.gateway.render import CONTROLLER_NAME, Options

OTHER = {"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
         "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                         "message": "theirs", "lastTransitionTime": "T",
                         "observedGeneration": 1}]}


class FakeApi:
    """Objects by kind; watches fed from queues; a status write bumps resourceVersion and is
    echoed as a MODIFIED event, as the API server does."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        by_kind = {"GatewayClass": "gatewayclasses", "Gateway": "gateways",
                   "HTTPRoute": "httproutes", "Service": "services",
                   "EndpointSlice": "endpointslices", "Namespace": "namespaces",
                   "XBackendTrafficPolicy": "xbackendtrafficpolicies"}
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            k.name: {} for k in c.KINDS}
        self.rv = 1
        for it in items:
            it = copy.deepcopy(it)
            it["metadata"]["resourceVersion"] = str(self._next())
            self.objects[by_kind[it["kind"]]][c._okey(it)] = it
        self.events: dict[str, queue.Queue[tuple[str, dict[str, Any]] | None]] = {
            k.name: queue.Queue() for k in c.KINDS}
        self.lists: dict[str, int] = {k.name: 0 for k in c.KINDS}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.gone: set[str] = set()
        self.missing: set[str] = set()  # kinds whose CRD is not installed (404)

    def _next(self) -> int:
        self.rv += 1
        return self.rv

    def list(self, kind: c.Kind) -> tuple[list[dict[str, Any]], str]:
        self.lists[kind.name] += 1
        if kind.name in self.missing:
            raise c.NotFound(f"GET /apis/{kind.group}/{kind.version}/{kind.name}: HTTP 404")
        return [copy.deepcopy(o) for o in self.objects[kind.name].values()], str(self.rv)

    def watch(self, kind: c.Kind, resource_version: str, timeout: int
              ) -> Iterator[tuple[str, dict[str, Any]]]:
        if kind.name in self.gone:
            self.gone.discard(kind.name)
            raise c.Gone("too old")
        try:
            ev = self.events[kind.name].get(timeout=0.2)
        except queue.Empty:
            return
        if ev is not None:
            yield ev

    def replace_status(self, kind: c.Kind, obj: Mapping[str, Any]) -> None:
        key = c._okey(obj)
        live = self.objects[kind.name][key]
        if live["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise c.Conflict("the object has been modified")
        new = copy.deepcopy(dict(obj))
        new["metadata"]["resourceVersion"] = str(self._next())
        self.objects[kind.name][key] = new
        self.writes.append((kind.name, new))
        self.events[kind.name].put(("MODIFIED", copy.deepcopy(new)))

    def change(self, kind: str, obj: dict[str, Any], type_: str = "MODIFIED") -> None:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next())
        if type_ == "DELETED":
            self.objects[kind].pop(c._okey(obj), None)
        else:
            self.objects[kind][c._okey(obj)] = obj
        self.events[kind].put((type_, copy.deepcopy(obj)))


class FakePlane:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.refuse = ""
        self.is_alive = True

    def start(self, routing_text: str) -> None:
        self.texts.append(routing_text)

    def apply(self, routing_text: str) -> Applied:
        if routing_text == self.texts[-1]:
            return Applied(False)
        if self.refuse and self.refuse in routing_text:
            return Applied(False, "[emerg] no")
        self.texts.append(routing_text)
        return Applied(True)

    def alive(self) -> bool:
        return self.is_alive

    def dead(self) -> str:
        return "" if self.is_alive else "nginx routing exited with 1"


def _items(**route_extra: Any) -> list[dict[str, Any]]:
    r = route([rule([backend("a")])], **route_extra)
    r["status"] = {"parents": [copy.deepcopy(OTHER)]}
    svc = service("msv-gateway", namespace="msv-gateway")
    svc["spec"]["clusterIP"] = "10.96.0.70"
    return [gateway_class(), gateway([listener(80)]), r, service("a"),
            endpoint_slice("a", ["10.0.0.1"], 8080), svc,
            {"kind": "Namespace", "metadata": {"name": "app"}}]


class Running:
    def __init__(self, api: FakeApi, plane: FakePlane, debounce: float = 0.0,
                 max_backoff: float = 30.0) -> None:
        self.api, self.plane = api, plane
        self.logged: list[str] = []
        self.ctl = c.Controller(api, plane, c.Settings(Options(runtime_dir="/r"),
                                                       debounce=debounce,
                                                       max_backoff=max_backoff),
                                log=self.logged.append)
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.ctl.run(sync_timeout=10)

    def stop(self) -> None:
        self.ctl.stopping.set()
        self.thread.join(10)

    def obj(self, kind: str, key: tuple[str, str]) -> dict[str, Any]:
        return self.api.objects[kind][key]


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(FakeApi(_items()), FakePlane())
    wait_for("the first render", lambda: r.ctl.started, timeout=10)
    yield r
    r.stop()


def _conds(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["type"]: x for x in status.get("conditions", [])}


def _settled(r: Running) -> int:
    """The number of status writes once a pass writes nothing more."""
    def quiet() -> int | None:
        before = len(r.api.writes)
        r.ctl.store.changed.set()
        r.ctl.render_once()
        return before if len(r.api.writes) == before else None
    return int(wait_for("status to settle", quiet, timeout=10))


def test_status_is_written_once_with_transition_times(running: Running) -> None:
    r = running
    writes = _settled(r)
    gc = r.obj("gatewayclasses", ("", "msv-test"))["status"]
    assert _conds(gc)["Accepted"]["status"] == "True"
    assert _conds(gc)["Accepted"]["lastTransitionTime"].endswith("Z")
    gw = r.obj("gateways", ("gw", "gw"))["status"]
    assert gw["addresses"] == [{"type": "IPAddress", "value": "10.96.0.70"}]
    assert _conds(gw)["Programmed"]["status"] == "True"
    assert gw["listeners"][0]["attachedRoutes"] == 1
    assert all(x["lastTransitionTime"] for x in gw["listeners"][0]["conditions"])
    parents = r.obj("httproutes", ("app", "route"))["status"]["parents"]
    assert parents[0] == OTHER  # another controller's entry is kept as it was
    assert parents[1]["controllerName"] == CONTROLLER_NAME
    assert _conds(parents[1])["Accepted"]["status"] == "True"
    assert writes == 3  # GatewayClass, Gateway, HTTPRoute
    assert r.ctl.healthy() == (True, "ok")
    assert r.plane.texts and "upstream msv_u0_0" in r.plane.texts[-1]


def test_a_refused_config_sets_programmed_false_until_a_good_one_serves(
        running: Running) -> None:
    r = running
    _settled(r)
    r.plane.refuse = "10.0.0.2"
    r.api.change("endpointslices", endpoint_slice("a", ["10.0.0.1", "10.0.0.2"], 8080))
    wait_for("Programmed=False", lambda: _conds(r.obj("gateways", ("gw", "gw"))["status"])
             ["Programmed"]["status"] == "False", timeout=10)
    prog = _conds(r.obj("gateways", ("gw", "gw"))["status"])["Programmed"]
    assert "[emerg] no" in prog["message"] and "previous one keeps serving" in prog["message"]
    r.api.change("endpointslices", endpoint_slice("a", ["10.0.0.3"], 8080))
    wait_for("Programmed=True", lambda: _conds(r.obj("gateways", ("gw", "gw"))["status"])
             ["Programmed"]["status"] == "True", timeout=10)
    assert "10.0.0.3:8080" in r.plane.texts[-1]


def test_a_route_that_leaves_the_gateway_loses_only_our_entry(running: Running) -> None:
    r = running
    _settled(r)
    moved = copy.deepcopy(r.obj("httproutes", ("app", "route")))
    moved["spec"]["parentRefs"] = [{"name": "elsewhere"}]
    r.api.change("httproutes", moved)
    wait_for("our entry removed", lambda: r.obj("httproutes", ("app", "route"))["status"]
             ["parents"] == [OTHER], timeout=10)
    assert "upstream msv_u0_0" not in r.plane.texts[-1]


def test_an_expired_watch_lists_again() -> None:
    api = FakeApi(_items())
    api.gone.add("services")
    r = Running(api, FakePlane())
    try:
        wait_for("a second list", lambda: api.lists["services"] >= 2, timeout=10)
        assert r.ctl.stats.watch_restarts["services"] == 1
    finally:
        r.stop()


def test_a_burst_of_changes_is_rendered_in_few_passes() -> None:
    api, plane = FakeApi(_items()), FakePlane()
    r = Running(api, plane, debounce=0.5)
    try:
        wait_for("the first render", lambda: r.ctl.started, timeout=10)
        before = len(plane.texts)
        for i in range(30):
            api.change("endpointslices", endpoint_slice("a", [f"10.0.1.{i}"], 8080))
        wait_for("the last change served", lambda: "10.0.1.29:8080" in plane.texts[-1],
                 timeout=10)
        assert len(plane.texts) - before <= 3
    finally:
        r.stop()


def test_nginx_dying_ends_the_run_with_1(running: Running) -> None:
    running.plane.is_alive = False
    assert running.ctl.healthy() == (False, "nginx routing exited with 1")
    running.thread.join(10)
    assert running.rc == 1


def test_healthz_and_metrics_are_served(running: Running) -> None:
    _settled(running)
    server = c.serve_http(running.ctl, 0, "127.0.0.1")
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for name in ("reloads", "reload_errors", "generation", "routes", "watch_restarts"):
            assert c.METRICS[name] in text
        assert f'{c.METRICS["endpoints"]}{{namespace="app",port="80",service="a"}} 1.0' in text
        assert f'{c.METRICS["routes"]} 1.0' in text
        running.plane.is_alive = False
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert e.value.code == 503
    finally:
        server.shutdown()


THEIR_ANCESTOR = {"ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                  "namespace": "x", "name": "theirs"},
                  "controllerName": "example.com/other", "conditions": OTHER["conditions"]}


def test_a_policys_ancestor_status_is_written_once_beside_other_controllers() -> None:
    pol = policy(["a"], sessionPersistence={"type": "Cookie"})
    pol["status"] = {"ancestors": [copy.deepcopy(THEIR_ANCESTOR)]}
    r = Running(FakeApi([*_items(), pol]), FakePlane())
    try:
        wait_for("the first render", lambda: r.ctl.started, timeout=10)
        writes = _settled(r)
        assert writes == 4  # GatewayClass, Gateway, HTTPRoute, the policy
        ancestors = r.obj("xbackendtrafficpolicies", ("app", "budget"))["status"]["ancestors"]
        assert ancestors[0] == THEIR_ANCESTOR
        assert ancestors[1]["ancestorRef"] == {"group": "gateway.networking.k8s.io",
                                               "kind": "Gateway", "namespace": "gw",
                                               "name": "gw"}
        assert ancestors[1]["controllerName"] == CONTROLLER_NAME
        accepted = _conds(ancestors[1])["Accepted"]
        assert accepted["status"] == "True" and accepted["lastTransitionTime"].endswith("Z")
        assert "spec.sessionPersistence: not supported" in accepted["message"]
        assert 'balance("app/a", 20, 10000, 10, 1000)' in r.plane.texts[-1]
        # The route leaves: our entry goes, theirs stays.
        moved = copy.deepcopy(r.obj("httproutes", ("app", "route")))
        moved["spec"]["parentRefs"] = [{"name": "elsewhere"}]
        r.api.change("httproutes", moved)
        wait_for("our ancestor removed", lambda: r.obj(
            "xbackendtrafficpolicies", ("app", "budget"))["status"]["ancestors"]
            == [THEIR_ANCESTOR], timeout=10)
    finally:
        r.stop()


def test_a_cluster_without_the_policy_crd_is_served_and_picks_it_up_later() -> None:
    api = FakeApi(_items())
    api.missing.add("xbackendtrafficpolicies")
    r = Running(api, FakePlane(), max_backoff=0.1)
    try:
        wait_for("the first render", lambda: r.ctl.started, timeout=10)
        wait_for("three lists", lambda: api.lists["xbackendtrafficpolicies"] >= 3, timeout=10)
        assert r.ctl.healthy() == (True, "ok")
        missing = [ln for ln in r.logged if "xbackendtrafficpolicies" in ln]
        assert missing == ["xbackendtrafficpolicies.gateway.networking.x-k8s.io is not served "
                           "(its CRD is not installed): none of them; listing again with a "
                           "backoff"]
        assert r.ctl.stats.watch_restarts["xbackendtrafficpolicies"] == 0
        # The CRD is installed and a policy made: it is listed and applied.
        api.objects["xbackendtrafficpolicies"][("app", "budget")] = {
            **policy(["a"], retryConstraint={"budget": {"percent": 7}}),
            "metadata": {**policy(["a"])["metadata"], "resourceVersion": "1"}}
        api.missing.clear()
        wait_for("the policy's budget served",
                 lambda: 'balance("app/a", 7, 10000, 10, 1000)' in r.plane.texts[-1], timeout=10)
        assert "xbackendtrafficpolicies.gateway.networking.x-k8s.io is served now" in r.logged
    finally:
        r.stop()


def test_a_missing_crd_of_a_kind_the_gateway_needs_is_an_error() -> None:
    api = FakeApi(_items())
    api.missing.add("httproutes")
    r = Running(api, FakePlane(), max_backoff=0.1)
    try:
        wait_for("two lists", lambda: api.lists["httproutes"] >= 2, timeout=10)
        assert not r.ctl.started
        assert r.ctl.stats.watch_restarts["httproutes"] >= 1
        assert any("watch httproutes: NotFound" in ln for ln in r.logged)
    finally:
        r.stop()


def test_the_retry_budget_counters_become_metrics() -> None:
    counters = {"app/a": {"requests": 12, "retries_allowed": 3, "retries_rejected": 2},
                "ml/stable": {"requests": 1, "retries_allowed": 0, "retries_rejected": 0}}
    calls: list[int] = []

    def read() -> dict[str, dict[str, int]]:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("connection refused")  # nginx restarting: the series are left out
        return counters

    ctl = c.Controller(FakeApi(_items()), FakePlane(), c.Settings(Options(runtime_dir="/r")),
                       log=lambda _l: None, budget_counters=read)
    server = c.serve_http(ctl, 0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        requests, retries = c.METRICS["backend_requests"], c.METRICS["retries"]
        assert (requests, retries) == ("msv_gateway_backend_requests_total",
                                       "msv_gateway_retries_total")
        for line in (f'{requests}{{namespace="app",service="a"}} 12.0',
                     f'{requests}{{namespace="ml",service="stable"}} 1.0',
                     f'{retries}{{namespace="app",result="allowed",service="a"}} 3.0',
                     f'{retries}{{namespace="app",result="rejected",service="a"}} 2.0',
                     f'{retries}{{namespace="ml",result="rejected",service="stable"}} 0.0'):
            assert line in text.splitlines(), line
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        assert requests not in text and c.METRICS["reloads"] in text
    finally:
        server.shutdown()
