"""Brownout against the real local control plane (kwok's simulated pods become Ready), with
Prometheus unreachable: the operator must say it is blind and move nothing.

What needs no model traffic: the brownout's status and Event, the ``AutoscalingBlind``
condition, the weights held at spec.traffic, nothing scaled to zero, the ready/desired replica
counts and HPA bounds from the real HPA controller, the ``REPLICAS``/``BROWNOUT`` columns of
``kubectl get msv`` and ``kubectl msv get``. Engaging and releasing on real p95 are in
test_brownout_real.py (real pods, real Prometheus); every transition is unit-tested with
samples fed through the analyzer interface (tests/unit/operator/test_reconcile_brownout.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from manifests import MS_API, modelservice
from msv_operator import kube
from operator_harness import RunningOperator, condition
from test_operator_rollout import closed_port, kubectl_msv, plugin_env, reasons
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow
__all__ = ["plugin_env"]  # a fixture, imported for pytest


@pytest.fixture
def blind_operator(crd: None, namespace: str) -> Iterator[RunningOperator]:
    op = RunningOperator([namespace], prometheus_url=f"http://127.0.0.1:{closed_port()}",
                         prometheus_timeout=2.0).start()
    yield op
    op.stop()


def brownout_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    return dict((ms.get("status") or {}).get("brownout") or {})


def test_a_brownout_without_metrics_is_blind_and_moves_nothing(
        blind_operator: RunningOperator, k: kube.Kube, namespace: str, cluster: lc.Cluster,
        plugin_env: dict[str, str]) -> None:
    ns, name = namespace, "sentiment"
    k.apply(modelservice(
        name, ns,
        variants=[{"name": "baseline"},
                  {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}],
        traffic=[{"variant": "baseline", "weight": 100}],
        autoscaling={"minReplicas": 1, "maxReplicas": 1, "brownout": {
            "variant": "int8", "latencyObjectiveMs": 50, "engageAfter": "1s",
            "interval": "1s"}}))

    held = wait_for("brownout MetricsUnavailable", lambda: (
        lambda b: b if b.get("reason") == "MetricsUnavailable" else None)(
            brownout_of(k, ns, name)), timeout=90)
    assert held["phase"] == "Inactive" and held["share"] == 0, held
    assert "unreachable" in held["metricsError"], held
    ms = wait_for("both variants ready", lambda: (
        lambda m: m if (m.get("status") or {}).get("replicaCounts") ==
        "baseline=1/1,int8=1/1" else None)(k.get(MS_API, "ModelService", ns, name) or {}),
        timeout=90)
    blind = condition(ms, "AutoscalingBlind")
    assert blind["status"] == "True", blind
    assert "brownout cannot read the stable p95" in blind["message"], blind
    # nothing moved blind, nothing scaled to zero
    assert ms["status"]["traffic"] == "baseline=100,int8=0"
    for variant in ("baseline", "int8"):
        dep = k.get("apps/v1", "Deployment", ns, f"{name}-{variant}") or {}
        assert dep["spec"].get("replicas", 1) >= 1, dep["spec"]
    variants = {v["name"]: v for v in ms["status"]["variants"]}
    assert (variants["baseline"]["minReplicas"], variants["baseline"]["maxReplicas"]) == (1, 1)
    assert variants["baseline"]["desiredReplicas"] == 1
    assert condition(ms, "Stalled")["status"] == "False"
    wait_for("the Event", lambda: "BrownoutMetricsUnavailable" in reasons(k, ns, name))

    table = cluster.kubectl_run("get", "msv", name, "-n", ns).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[header.index("REPLICAS")] and row[header.index("REPLICAS")] == \
        "baseline=1/1,int8=1/1", table
    assert row[header.index("BROWNOUT")] == "Inactive", table
    out = kubectl_msv(cluster, plugin_env, "get", name, "-n", ns)
    assert "Brownout: variant int8 for stable baseline" in out, out
    assert "Inactive (MetricsUnavailable)" in out and "Autoscaling is blind" in out, out
    assert k.get(MS_API, "ModelService", ns, name)["spec"]["traffic"] == [  # type: ignore[index]
        {"variant": "baseline", "weight": 100}]
