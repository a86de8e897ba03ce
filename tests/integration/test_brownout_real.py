"""Brownout (load-adaptive precision) on real pods, judged by a real Prometheus on real load.

The product's own path end to end: the operator (a real process) writes the Deployments,
HPAs and ServiceMonitor; prometheus-operator scrapes the model servers; the HPA controller
reports the stable variant at maxReplicas (min 1, max 1: it cannot scale further); the
operator reads the stable variant's p95 from Prometheus. Concurrent requests through the
stable Service push that p95 above a tight objective: after ``engageAfter`` the brownout
engages (status, Events, the int8 pods join the stable Service and answer requests). When
the load stops the p95 falls below the release line (no requests at all counts as below),
and after ``releaseAfter`` the traffic comes back to the baseline.

Cases (issue 10, item 5): engage under sustained overload at maxReplicas and release after;
a brownout variant whose pods cannot load the model is reported and never given traffic.
The lead runs this (it needs the real node and the in-cluster Prometheus).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from manifests import model, modelservice
from msv_operator import kube
from operator_harness import OperatorProcess, condition
from service_load import Load
from test_rollout_real import (
    SERVER,
    event_reasons,
    models,
    ms_of,
    operator,
    publish,
    stable_ip,
    stores,
)
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = [pytest.mark.slow, pytest.mark.torch]
# fixtures shared with the rollout tests: the model store, the models ("trained", "broken")
# and the operator process with the in-cluster Prometheus
__all__ = ["models", "operator", "stores"]

# Tight enough that a single pod under concurrent load is above it; short windows so a
# whole engage/release cycle fits in a test (the machine is the real one).
BROWNOUT = {"variant": "int8", "maxShare": 50, "latencyObjectiveMs": 2,
            "engageAfter": "20s", "releaseAfter": "20s", "releaseBelow": 0.8,
            "interval": "5s", "window": "20s"}
CONCURRENCY = 8


def browning_out(name: str, ns: str, stable: dict[str, str], cheap: dict[str, Any]
                 ) -> dict[str, Any]:
    """baseline at 100% autoscaled between 1 and 1 replica, ``cheap`` the brownout variant."""
    return modelservice(
        name, ns, model=model(**stable), server=SERVER, monitoring={"interval": "5s"},
        variants=[{"name": "baseline"}, cheap], traffic={"baseline": 100},
        autoscaling={"minReplicas": 1, "maxReplicas": 1, "brownout": BROWNOUT})


def seconds(stamp: Any) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def brownout_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    return dict((ms_of(k, ns, name).get("status") or {}).get("brownout") or {})


def test_brownout_engages_under_overload_at_max_replicas_and_releases_after(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    ns, name = real_namespace, "brownout"
    trained = publish(models, "trained", ns)
    k.apply(browning_out(name, ns, trained,
                         {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}))
    ip = stable_ip(k, ns, name)
    wait_for("the stable HPA at maxReplicas", lambda: (
        lambda b: b if b.get("stableReplicas") == 1 and b.get("stableMaxReplicas") == 1
        else None)(brownout_of(k, ns, name)), timeout=180)
    assert brownout_of(k, ns, name)["phase"] == "Inactive"
    assert ms_of(k, ns, name)["status"]["traffic"] == "baseline=100,int8=0"
    int8_selector = (f"serving.modelservice.dev/modelservice={name},"
                     "serving.modelservice.dev/variant=int8")

    def int8_pods() -> list[tuple[str, str]]:
        pods = k.list("v1", "Pod", ns, int8_selector)
        return sorted((p["metadata"]["uid"], p["metadata"]["labels"].get(
            "serving.modelservice.dev/serving", "")) for p in pods)

    [(warm_uid, label)] = wait_for("one int8 pod", int8_pods)
    assert label == "false"

    with Load(ip, name, clients=CONCURRENCY) as load:
        engaged = wait_for("brownout Engaged", lambda: (
            lambda b: b if b.get("phase") == "Engaged" else None)(brownout_of(k, ns, name)),
            timeout=300, interval=1)
        assert engaged["p95Ms"] > BROWNOUT["latencyObjectiveMs"], engaged
        assert engaged["share"] == 50, engaged
        assert ms_of(k, ns, name)["status"]["traffic"] == "baseline=50,int8=50"
        # the warm int8 pod joins the stable Service (relabelled, not restarted) and answers
        wait_for("int8 answering through the stable Service",
                 lambda: load.variants["int8"] > 0, timeout=180)
    assert load.failures == {}, (
        f"the client saw errors during the brownout: {load.statuses} {load.errors}")

    released = wait_for("brownout released", lambda: (
        lambda b: b if b.get("phase") == "Inactive" else None)(brownout_of(k, ns, name)),
        timeout=300, interval=1)
    assert released["share"] == 0, released
    wait_for("traffic back on the baseline", lambda: ms_of(k, ns, name)["status"][
        "traffic"] == "baseline=100,int8=0", timeout=60)
    # the same int8 pod served and left again: the brownout restarted no pod
    wait_for("the warm int8 pod out of the stable Service again",
             lambda: int8_pods() == [(warm_uid, "false")], timeout=60)
    reasons = event_reasons(k, ns, name)
    assert "BrownoutEngaged" in reasons and "BrownoutReleased" in reasons, reasons
    assert reasons.index("BrownoutEngaged") < reasons.index("BrownoutReleased"), reasons
    # the brownout read Prometheus throughout (an HPA without a metrics pipeline may be blind)
    blind = condition(ms_of(k, ns, name), "AutoscalingBlind")
    assert blind.get("reason") != "PrometheusUnavailable", blind
    # the spec (the user's Git) is untouched
    assert ms_of(k, ns, name)["spec"]["traffic"] == [{"variant": "baseline", "weight": 100}]
    variants = {v["name"]: v for v in ms_of(k, ns, name)["status"]["variants"]}
    assert variants["baseline"]["maxReplicas"] == 1, variants
    assert variants["baseline"]["desiredReplicas"] == 1, variants


def test_a_brownout_variant_that_cannot_load_is_reported_and_never_served(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    ns, name = real_namespace, "brownout-broken"
    k.apply(browning_out(name, ns, publish(models, "trained", ns),
                         {"name": "int8", "model": publish(models, "broken", ns)}))
    ip = stable_ip(k, ns, name)
    with Load(ip, name, clients=CONCURRENCY) as load:
        held = wait_for("brownout VariantNotReady under overload", lambda: (
            lambda b: b if b.get("reason") == "VariantNotReady"
            and (b.get("p95Ms") or 0) > BROWNOUT["latencyObjectiveMs"] else None)(
                brownout_of(k, ns, name)), timeout=300, interval=1)
        # overloaded for longer than engageAfter: still nothing moves to that variant
        first = seconds(held["measuredAt"])
        wait_for("measurements past engageAfter", lambda: (
            lambda b: b if seconds(b.get("measuredAt")) - first > 25 else None)(
                brownout_of(k, ns, name)), timeout=180)
    b = brownout_of(k, ns, name)
    assert b["phase"] == "Inactive" and b["share"] == 0, b
    assert "no-such-architecture" in b["message"] or "no ready pod" in b["message"], b
    assert ms_of(k, ns, name)["status"]["traffic"] == "baseline=100,int8=0"
    assert load.variants.keys() == {"baseline"}, load.variants
    assert load.failures == {}, load.statuses
    assert "BrownoutUnavailable" in event_reasons(k, ns, name)
    assert "BrownoutEngaged" not in event_reasons(k, ns, name)
