"""Requests through the local cluster's Gateway API implementation to real pods.

The local cluster runs a real Gateway (nginx driven by ``localcluster.gateway``, as pods on the
real node, ``msv-gateway`` in ``msv-gateway``). One ModelService with a ``baseline`` (two pods)
and an ``int8`` variant (one pod) at 90/10 attaches to it with a variant header; the operator's
HTTPRoute carries the weights, a retry and one header rule per variant. Through the gateway:

* 1,000 requests give int8 10 ± 3 % (the pods alone would give it a third); a rollout's
  first step of 25 % measures 25 ± 4 %;
* the variant header reaches its variant and nothing else does; a header naming no variant
  is routed normally, never a 5xx;
* ``kill -9`` of a serving baseline pod's server process under a steady client fails no
  request (the route's retry moves a refused request to the other pod);
* the operator's retry budget (an ``XBackendTrafficPolicy`` per ModelService) is accepted by
  the gateway; spent (0 %, a floor of one retry an hour), a crash's retries are refused: the
  client gets 503 with ``x-msv-retry-budget: exhausted`` and the gateway's counters say so;
* a parent Gateway that does not exist leaves ``FieldsIgnored`` naming ``spec.gateway`` and
  the stable Service keeps serving.

The stores and the classifier are test_real_pods.py's; the module runs its own operator.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from manifests import INT8, MS_API
from msv_operator import kube
from operator_harness import RunningOperator, api, condition
from realpods import cluster_ip, http_json, served, wait_ready
from test_real_pods import TEXTS, classifier, stores  # noqa: F401
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores, realnode
from localcluster.gateway import install as gateway
from localcluster.gateway import render as gateway_render

pytestmark = [pytest.mark.slow]

NAME = "gw"
HEADER = "x-msv-variant"
BUDGET_API = "gateway.networking.x-k8s.io/v1alpha1"
WEIGHTS = {"baseline": 90, "int8": 10}
PARENT = {"name": gateway.GATEWAY, "namespace": gateway.NAMESPACE}


def gateway_url(path: str) -> str:
    return f"http://{gateway.SERVICE_IP}{path}"


def answering(url: str) -> set[str]:
    """The variants 60 requests reach; a refused or failed request means "not yet" (the
    controller may not have reloaded nginx with the pods' endpoints)."""
    try:
        return {variant_of(url) for _ in range(60)}
    except OSError as e:
        raise AssertionError(f"{url}: {e}") from e


def variant_of(url: str, headers: dict[str, str] | None = None) -> str:
    """The variant that answered a metadata request (a fresh connection each time)."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.loads(r.read())["parameters"]["variant"])


@dataclass
class Routed:
    ns: str
    k: kube.Kube


@pytest.fixture(scope="module")
def routed(cluster: lc.Cluster, crd: None, stores: None, classifier: Path,  # noqa: F811
           module_real_namespace: str) -> Iterator[Routed]:
    """The ModelService, Ready, its route accepted by the programmed Gateway (share ==
    weight in the status), and the gateway answering for it."""
    ns = module_real_namespace
    k = api()
    op = RunningOperator([ns]).start()
    try:
        yield _routed(ns, k, classifier)
        assert op.alive, "the operator must still be running at the end of the module"
    finally:
        op.stop()
        k.close()


def _routed(ns: str, k: kube.Kube, classifier: Path) -> Routed:  # noqa: F811
    uri, digest = modelstores.publish_http(classifier, f"{ns}-gw")
    k.apply(served(NAME, ns, uri, digest, variants=[{"name": "baseline"}, INT8],
                   traffic=WEIGHTS, replicas=2,
                   gateway={"parentRefs": [PARENT], "variantHeader": HEADER}))
    wait_ready(k, ns, NAME, timeout=420)

    def exact() -> dict[str, Any]:
        ms = k.get(MS_API, "ModelService", ns, NAME) or {}
        st = ms.get("status") or {}
        shares = {v["name"]: v.get("share") for v in st.get("variants") or []}
        ready = {v["name"]: v.get("readyReplicas", 0) for v in st.get("variants") or []}
        ignored = condition(ms, "FieldsIgnored")
        # the state in the AssertionError is what a timeout reports
        assert (shares == WEIGHTS and ready == {"baseline": 2, "int8": 1}
                and ignored.get("status") == "False"), (shares, ready, ignored)
        return ms
    wait_for("the route accepted, shares = weights, all 3 pods ready", exact,
             timeout=420, interval=1)
    route = k.get("gateway.networking.k8s.io/v1", "HTTPRoute", ns, NAME) or {}
    assert any(r.get("retry") for r in route["spec"]["rules"]), route["spec"]
    policy = wait_for("the retry budget accepted by the gateway",
                      lambda: budget_accepted(k, ns), timeout=120)
    assert {t["name"] for t in policy["spec"]["targetRefs"]} == \
        {f"{NAME}-{v}" for v in WEIGHTS}, policy["spec"]
    assert policy["spec"]["retryConstraint"] == {
        "budget": {"percent": 20, "interval": "10s"},
        "minRetryRate": {"count": 10, "interval": "1s"}}, policy["spec"]
    # nginx has the pods' endpoints once every variant answers through the gateway
    wait_for("every variant answering through the gateway",
             lambda: answering(gateway_url(f"/v2/models/{NAME}")) == set(WEIGHTS), timeout=180)
    return Routed(ns, k)


def test_a_thousand_requests_through_the_gateway_follow_the_weights(routed: Routed) -> None:
    n = 1000
    counts = Counter(variant_of(gateway_url(f"/v2/models/{NAME}")) for _ in range(n))
    share = 100.0 * counts["int8"] / n
    print(f"through the gateway over {n} requests: {dict(counts)} -> int8 {share:.1f}%")
    assert abs(share - WEIGHTS["int8"]) <= 3.0, counts
    # The stable Service alone splits by pods (2:1), which is why the gateway is needed;
    # its status says what the gateway delivers.
    st = (routed.k.get(MS_API, "ModelService", routed.ns, NAME) or {})["status"]
    assert st["shares"] == "baseline=90,int8=10", st


def test_a_rollout_step_measures_its_weight_through_the_gateway(routed: Routed) -> None:
    """int8 back to weight 0 and named the rollout's candidate: its first step (25%) is
    what 1,000 requests through the gateway measure, whatever the pods (1 int8, 2 baseline)."""
    ns, k = routed.ns, routed.k
    ms = k.get(MS_API, "ModelService", ns, NAME) or {}
    spec = {**ms["spec"], "traffic": [{"variant": "baseline", "weight": 100}],
            "rollout": {"candidate": "int8", "steps": [25, 100], "stepDuration": "1h"}}
    k.apply({"apiVersion": MS_API, "kind": "ModelService",
             "metadata": {"name": NAME, "namespace": ns}, "spec": spec})

    def at_step_1() -> dict[str, Any] | None:
        st = (k.get(MS_API, "ModelService", ns, NAME) or {}).get("status") or {}
        ok = (st.get("rollout") or {}).get("step") == 1 and \
            st.get("traffic") == "baseline=75,int8=25"
        return st if ok else None
    st = wait_for("rollout step 1 (25%)", at_step_1, timeout=180)
    assert st["shares"] == "baseline=75,int8=25", st  # routed: the share is the weight
    url = gateway_url(f"/v2/models/{NAME}")

    def route_moved() -> bool:  # the route re-applied and reloaded: no longer 10%
        try:
            return sum(variant_of(url) == "int8" for _ in range(200)) >= 34  # 17%
        except OSError as e:
            raise AssertionError(str(e)) from e
    wait_for("the step's weights in the gateway", route_moved, timeout=120)
    n = 1000
    counts = Counter(variant_of(url) for _ in range(n))
    share = 100.0 * counts["int8"] / n
    print(f"rollout step 1 through the gateway over {n} requests: {dict(counts)}")
    assert abs(share - 25.0) <= 4.0, counts  # 3 standard deviations of 1,000 draws


def test_the_variant_header_reaches_its_variant_and_nothing_else(routed: Routed) -> None:
    url = gateway_url(f"/v2/models/{NAME}")
    for variant in WEIGHTS:
        got = Counter(variant_of(url, {HEADER: variant}) for _ in range(40))
        assert got == Counter({variant: 40}), (variant, got)
    # Without the header, and with one naming no variant: the weighted split, never a 5xx.
    plain = Counter(variant_of(url, {HEADER: "nope"}) for _ in range(200))
    assert set(plain) <= set(WEIGHTS) and plain["baseline"] > plain["int8"], plain


def kill_9_a_baseline_pod(k: kube.Kube, ns: str) -> None:
    """``kill -9`` of one of the two baseline pods' server process; returns once the kubelet
    has restarted the container and it is ready again."""
    pods = [p for p in k.list("v1", "Pod", ns, f"serving.modelservice.dev/modelservice={NAME}")
            if p["metadata"]["labels"].get("serving.modelservice.dev/variant") == "baseline"]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    victim = pods[0]
    restarts = victim["status"]["containerStatuses"][0].get("restartCount", 0)
    os.kill(realnode.container_pid(victim), signal.SIGKILL)

    def back() -> bool:
        pod = k.get("v1", "Pod", ns, victim["metadata"]["name"]) or {}
        st = (pod.get("status") or {}).get("containerStatuses") or [{}]
        return st[0].get("restartCount", 0) > restarts and bool(st[0].get("ready"))
    wait_for("the killed pod restarted and ready", back, timeout=300, interval=1)


class SteadyClient:
    """Infer requests through the gateway on a thread, one every 50 ms (~15-20/s, a new
    connection each): counts answers (``ok``), retries the budget refused (``refused``: 503
    with ``x-msv-retry-budget: exhausted``) and any other failure (``failed``, described in
    ``failures``). Entered once it has 20 answers; left when its thread has stopped."""

    BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]]}]}

    def __init__(self) -> None:
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self._url = gateway_url(f"/v2/models/{NAME}/infer")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                http_json(self._url, self.BODY, timeout=30)
                self.results["ok"] += 1
            except urllib.error.HTTPError as e:
                if e.code == 503 and e.headers.get("x-msv-retry-budget") == "exhausted":
                    self.results["refused"] += 1
                else:
                    self.results["failed"] += 1
                    self.failures.append(f"{e.code} {e.headers}")
            except Exception as e:
                # (a cut body raises http.client.IncompleteRead, not an OSError): counted, and
                # the client goes on, so a failure is reported instead of a silent stop
                self.results["failed"] += 1
                self.failures.append(repr(e))
            time.sleep(0.05)

    def __enter__(self) -> SteadyClient:
        self._thread.start()
        try:
            wait_for("the client running", lambda: self.results["ok"] >= 20, timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_kill_9_of_a_serving_pod_fails_no_request_through_the_gateway(routed: Routed) -> None:
    with SteadyClient() as client:
        before = client.results["ok"]
        kill_9_a_baseline_pod(routed.k, routed.ns)
        assert client.results["ok"] > before + 50, client.results  # it kept going meanwhile
    print(f"kill -9 under a steady client through the gateway: {dict(client.results)}")
    assert client.results["failed"] == client.results["refused"] == 0, client.failures[:5]


def budget_accepted(k: kube.Kube, ns: str) -> dict[str, Any] | None:
    """The ModelService's XBackendTrafficPolicy once the gateway accepted its generation."""
    policy = k.get(BUDGET_API, "XBackendTrafficPolicy", ns, NAME) or {}
    gen = (policy.get("metadata") or {}).get("generation")
    for a in (policy.get("status") or {}).get("ancestors") or []:
        if a.get("controllerName") != gateway_render.CONTROLLER_NAME:
            continue
        c: dict[str, Any] = next(
            (c for c in a.get("conditions") or [] if c.get("type") == "Accepted"), {})
        if c.get("status") == "True" and c.get("observedGeneration") == gen:
            return policy
    return None


def test_a_spent_retry_budget_refuses_a_crashs_retries(routed: Routed) -> None:
    """Budget 0 % with a floor of one retry an hour: after at most one allowed retry, every
    retry a crash causes is refused (503 + x-msv-retry-budget), and the gateway's counters
    match what the client saw. Each kill causes at least one refused connection, so a second
    kill is only needed when the first one spent the floor."""
    ns, k = routed.ns, routed.k
    ms = k.get(MS_API, "ModelService", ns, NAME) or {}
    spec = dict(ms["spec"])
    spec["gateway"] = {**spec["gateway"], "retry": {
        "budget": {"percent": 0, "minRetryRate": {"count": 1, "interval": "1h"}}}}
    k.apply({"apiVersion": MS_API, "kind": "ModelService",
             "metadata": {"name": NAME, "namespace": ns}, "spec": spec})

    def spent() -> dict[str, Any] | None:
        p = budget_accepted(k, ns)
        return p if p and p["spec"]["retryConstraint"]["budget"]["percent"] == 0 else None
    wait_for("the spent budget accepted by the gateway", spent, timeout=120)
    service = f"{NAME}-baseline"
    before = gateway.retry_counters(ns, service)
    with SteadyClient() as client:
        for _ in range(3):
            answered = client.results["ok"]
            kill_9_a_baseline_pod(k, ns)
            assert client.results["ok"] > answered + 50, client.results  # it kept calling
            if client.results["refused"]:
                break
    after = gateway.retry_counters(ns, service)
    allowed = after["allowed"] - before["allowed"]
    rejected = after["rejected"] - before["rejected"]
    results = client.results
    print(f"spent budget, kill -9 under a steady client: {dict(results)}; gateway: "
          f"{allowed:.0f} retries allowed, {rejected:.0f} refused")
    assert results["failed"] == 0, client.failures[:5]  # a failure is a refused retry
    assert results["refused"] >= 1, results
    assert rejected == results["refused"], (rejected, results)
    assert allowed <= 1, allowed  # the floor: one retry an hour


def test_a_missing_gateway_is_named_and_the_service_keeps_serving(routed: Routed) -> None:
    ns, k = routed.ns, routed.k
    ms = k.get(MS_API, "ModelService", ns, NAME) or {}
    spec = dict(ms["spec"])
    spec["gateway"] = {**spec["gateway"], "parentRefs": [{"name": "nope", "namespace": ns}]}
    k.apply({"apiVersion": MS_API, "kind": "ModelService",
             "metadata": {"name": NAME, "namespace": ns}, "spec": spec})

    def named() -> dict[str, Any] | None:
        c = condition(k.get(MS_API, "ModelService", ns, NAME), "FieldsIgnored")
        return c if c.get("reason") == "GatewayNotReady" else None
    c = wait_for("FieldsIgnored GatewayNotReady", named, timeout=120)
    assert "spec.gateway" in c["message"] and "nope" in c["message"], c
    ip = cluster_ip(k, ns, NAME, endpoints=3)
    assert variant_of(f"http://{ip}/v2/models/{NAME}") in WEIGHTS
