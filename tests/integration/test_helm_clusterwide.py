"""The chart installed cluster-wide with two replicas, exercised for real on a private control
plane (a cluster-wide operator on the shared one would reconcile other tests' ModelServices).

The private control plane has no real node, so the chart's operator pods are scheduled for
real (kwok marks them Ready: the PodDisruptionBudget and the anti-affinity are checked on
them) but do not run. The operators that do the work are two host processes that log in
with the chart's ServiceAccount token, so every request they send is authorized by the
Helm-rendered RBAC: the ClusterRole for ModelServices in any namespace and the Role for the
release's Lease. ModelServices in two namespaces are reconciled by the one leader.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helmchart import CHART, helm
from manifests import MS_API, modelservice
from msv_operator import kube, leader
from operator_harness import OperatorProcess, api, condition, token_kubeconfig
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow

SYSTEM, RELEASE = "msv-system", "msv"
FULLNAME = f"{RELEASE}-modelservice-operator"
TEAMS = ("team-a", "team-b")


@pytest.fixture
def release(private_cluster: lc.Cluster) -> Iterator[lc.Cluster]:
    c = private_cluster
    # The CRD is already installed (and shared by the other private tests): keep it.
    helm(c, "upgrade", "--install", RELEASE, str(CHART), "-n", SYSTEM, "--create-namespace",
         "--set", "replicaCount=2", "--set", "crds.install=false", "--set", "logFormat=text",
         "--wait", "--timeout", "180s")
    for team in TEAMS:
        c.kubectl_run("create", "namespace", team, check=False)
    yield c
    helm(c, "uninstall", RELEASE, "-n", SYSTEM, "--wait")
    for ns in (*TEAMS, SYSTEM):
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)


def reconciled(k: kube.Kube, ns: str, name: str) -> dict[str, Any] | None:
    ms = k.get(MS_API, "ModelService", ns, name)
    if ms and (ms.get("status") or {}).get("observedGeneration") == \
            ms["metadata"]["generation"] and condition(ms, "Ready").get("status") == "True":
        return ms
    return None


RBAC_DENIAL = re.compile(r"forbidden: User .* cannot ", re.IGNORECASE)


def test_clusterwide_release_with_two_replicas_reconciles_two_namespaces(
        release: lc.Cluster, tmp_path: Path) -> None:
    c = release
    pods = c.kubectl_json("get", "pods", "-n", SYSTEM)["items"]
    assert len(pods) == 2
    # The preferred anti-affinity spreads the replicas over the two simulated CPU nodes.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, [p["spec"] for p in pods]
    assert c.kubectl_json("get", "pdb", FULLNAME, "-n", SYSTEM)["spec"]["minAvailable"] == 1

    # The disruption controller counts the healthy pods on its own schedule, after helm's
    # --wait has seen them Ready: poll for the counts rather than read them once.
    def pdb_counts_two_healthy() -> bool:
        status = c.kubectl_json("get", "pdb", FULLNAME, "-n", SYSTEM).get("status") or {}
        counts = status.get("currentHealthy"), status.get("disruptionsAllowed")
        assert counts == (2, 1), f"currentHealthy, disruptionsAllowed = {counts}"
        return True

    wait_for("the PodDisruptionBudget to count two healthy pods", pdb_counts_two_healthy,
             timeout=60)
    assert c.kubectl_json("get", "clusterrole", FULLNAME)["rules"]

    token = c.kubectl_run("create", "token", FULLNAME, "-n", SYSTEM,
                          "--duration=1h").stdout.strip()
    sa_kubeconfig = token_kubeconfig(c.kubeconfig, token, tmp_path / "sa-kubeconfig")
    env = dict(c.env, KUBECONFIG=str(sa_kubeconfig))
    args = ["--leader-election", "--lease-name", FULLNAME, "--lease-namespace", SYSTEM,
            "--lease-duration", "6", "--renew-deadline", "4", "--retry-period", "0.5"]
    procs = [OperatorProcess(None, *args, "--identity", name, name=name, env=env)
             for name in ("host-a", "host-b")]
    k = api(c.kubeconfig)
    try:
        for p in procs:
            p.wait_up()
        wait_for("a leader", lambda: leader.lease_holder(k.lease(SYSTEM, FULLNAME, 10)),
                 timeout=30)
        for team in TEAMS:
            k.apply(modelservice("sentiment", team))
        for team in TEAMS:
            wait_for(f"{team}/sentiment Ready", lambda t=team: reconciled(k, t, "sentiment"),
                     timeout=90)
            assert k.get("apps/v1", "Deployment", team, "sentiment-baseline") is not None
        # Whoever held the Lease when the passes ran applied both ModelServices (at least a
        # Deployment and a Service each; on a loaded machine the Lease may have changed hands
        # since the first look); the other applied nothing.
        applied = {p.name: p.total("msv_operator_applies_total") for p in procs}
        assert sorted(applied.values())[0] == 0 and sorted(applied.values())[1] >= 4, applied
        for p in procs:
            assert p.alive, p.tail()
            log = p.tail(200_000)
            # RBAC denials name the user ("... is forbidden: User ... cannot ..."); other
            # tests' namespaces being deleted meanwhile are not this release's business.
            denied = [line for line in log.splitlines() if RBAC_DENIAL.search(line)]
            assert not denied, "\n".join(denied[-20:])
    finally:
        for p in procs:
            p.close()
        k.close()
