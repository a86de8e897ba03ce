"""The Helm chart installed into the real cluster, and its RBAC proven both ways.

The chart's operator runs as a pod on the real node (the locally built operator image, the
chart's ServiceAccount): it must reconcile an example to Ready with no "forbidden" in its log
(the RBAC is sufficient), and `kubectl auth can-i` shows what the ServiceAccount may not do
(the RBAC is not excessive).
The CRD is shared by every test on this control plane, so the releases here install the
chart with crds.install=false; the CRD template itself is covered by tests/unit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helmchart import CHART, helm
from waiting import wait_for

from localcluster import cluster as lc

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sentiment-transformers.yaml"


@pytest.fixture
def release(crd: None, cluster: lc.Cluster, namespace: str) -> Iterator[tuple[str, str]]:
    """A namespaced-mode release in its own namespace, watching the test namespace."""
    suffix = uuid.uuid4().hex[:6]
    # ClusterRoles are cluster-scoped: a release name of its own keeps them apart from
    # other releases (e.g. the demo's) on the same control plane.
    system, name = f"msv-sys-{suffix}", f"msv-{suffix}"
    helm(cluster, "upgrade", "--install", name, str(CHART), "-n", system, "--create-namespace",
         "--set", f"watchNamespaces={{{namespace}}}", "--set", "crds.install=false", "--wait")
    yield system, name
    helm(cluster, "uninstall", name, "-n", system, check=False)
    cluster.kubectl_run("delete", "namespace", system, "--wait=false", check=False)


def can_i(cluster: lc.Cluster, who: str, verb: str, resource: str, ns: str | None) -> bool:
    # "kind/sub" means a subresource (kubectl itself would read it as kind/name)
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={who}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", ns] if ns else []
    out = cluster.kubectl_run(*args, check=False).stdout.strip()
    return out == "yes"


def test_operator_pod_of_the_chart_reconciles_to_ready(
        cluster: lc.Cluster, namespace: str, release: tuple[str, str]) -> None:
    system, name = release
    pods = cluster.kubectl_json("get", "pods", "-n", system)["items"]
    assert len(pods) == 1
    pod = pods[0]
    # The chart's operator really runs: the locally built image, on the real node, Ready.
    assert pod["spec"]["nodeName"] == "node-1"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and "sha256:" in status["imageID"], status
    assert status["image"].endswith("modelservice/operator:0.1.0")
    assert pod["spec"]["serviceAccountName"] == f"{name}-modelservice-operator"

    cluster.kubectl_run("apply", "-n", namespace, "-f", str(EXAMPLE))

    def sentiment_ready() -> bool:
        ms = cluster.kubectl_json("get", "modelservice", "sentiment", "-n", namespace)
        conds = (ms.get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    try:
        ready = wait_for("sentiment Ready", sentiment_ready, timeout=120, interval=0.5)
    except AssertionError:
        ready = False  # the operator pod's log below says why
    log = cluster.kubectl_run("logs", "-n", system, pod["metadata"]["name"]).stdout
    assert ready, f"not Ready; operator pod log:\n{log[-3000:]}"
    forbidden = [line for line in log.splitlines() if "forbidden" in line.lower()]
    assert not forbidden, forbidden[:5]
    # It stays up (no restarts): the in-cluster config reaches the API server through the
    # `kubernetes` Service, which kube-proxy routes to the API server on the node's bridge.
    again = cluster.kubectl_json("get", "pod", "-n", system, pod["metadata"]["name"])
    assert again["status"]["containerStatuses"][0]["restartCount"] == 0


def test_rbac_is_not_excessive(cluster: lc.Cluster, namespace: str,
                               release: tuple[str, str]) -> None:
    system, name = release
    who = f"system:serviceaccount:{system}:{name}-modelservice-operator"
    # what it needs, in the watched namespace
    assert can_i(cluster, who, "patch", "deployments", namespace)
    assert can_i(cluster, who, "patch", "modelservices/status", namespace)
    assert can_i(cluster, who, "create", "events", namespace)  # rollout steps, rollbacks
    assert can_i(cluster, who, "list", "pods.metrics.k8s.io", namespace)  # per-pod usage
    # what it must not do
    assert not can_i(cluster, who, "get", "secrets", namespace)
    assert not can_i(cluster, who, "list", "secrets", namespace)
    assert not can_i(cluster, who, "update", "modelservices", namespace)
    assert not can_i(cluster, who, "patch", "modelservices", namespace)  # never writes a spec
    assert not can_i(cluster, who, "update", "deployments", namespace)  # applies, never PUTs
    assert not can_i(cluster, who, "delete", "modelservices", namespace)
    assert not can_i(cluster, who, "create", "pods", namespace)
    assert not can_i(cluster, who, "patch", "pods.metrics.k8s.io", namespace)
    assert not can_i(cluster, who, "delete", "customresourcedefinitions", None)
    assert not can_i(cluster, who, "create", "clusterroles", None)
    # namespaced mode: nothing in another namespace
    assert not can_i(cluster, who, "list", "deployments", "default")
    assert not can_i(cluster, who, "list", "modelservices", "default")


def test_install_twice_upgrade_and_uninstall_keep_user_objects(
        cluster: lc.Cluster, namespace: str, release: tuple[str, str]) -> None:
    system, name = release
    cluster.kubectl_run("apply", "-n", namespace, "-f", str(EXAMPLE))
    helm(cluster, "upgrade", "--install", name, str(CHART), "-n", system,
         "--set", f"watchNamespaces={{{namespace}}}", "--set", "crds.install=false",
         "--set", "logFormat=text")
    bad = helm(cluster, "upgrade", name, str(CHART), "-n", system, "--set", "maxWorkers=0",
               check=False)
    assert bad.returncode != 0 and "maxWorkers" in bad.stderr
    helm(cluster, "uninstall", name, "-n", system)
    # the CRD and the user's ModelService survive the uninstall
    cluster.kubectl_run("get", "crd", "modelservices.serving.modelservice.dev")
    cluster.kubectl_run("get", "modelservice", "sentiment", "-n", namespace)
