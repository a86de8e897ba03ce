"""The real metrics pipeline on the real node: Prometheus configured by prometheus-operator
from the ServiceMonitor the operator writes, metrics-server reading the real kubelet, and the
real HPA controller scaling an operator-built Deployment on that CPU usage.

Every number here was measured by a real component from real pods; nothing is annotated,
simulated or stubbed. The stack is what ``localcluster up`` installs (``localcluster.monitoring``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from msv_operator import kube
from service_load import Load
from test_real_pods import (
    cluster_ip,
    infer_once,
    operator,  # noqa: F401  (the fixture: an operator on real_namespace)
    served,
    wait_ready,
)
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores, monitoring

# Each test runs the operator on its real_namespace (test_real_pods' fixture).
pytestmark = [pytest.mark.slow, pytest.mark.torch, pytest.mark.usefixtures("operator")]

MONITORING_API = "monitoring.coreos.com/v1"


@pytest.fixture(scope="module")
def published(cluster: lc.Cluster, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[str, str]:
    """A tiny classifier in the in-cluster HTTP store: (uri, sha256)."""
    from modelfactory import make_text_classifier

    if not cluster.real_node:
        pytest.fail("the metrics pipeline runs on the real node; start the cluster without "
                    "--no-real-node", pytrace=False)
    modelstores.deploy(cluster)
    path = tmp_path_factory.mktemp("models") / "classifier"
    make_text_classifier(path)
    return modelstores.publish_http(path, f"metrics-{path.parent.name}")


def metrics_api(cluster: lc.Cluster, path: str) -> dict[str, Any] | None:
    proc = cluster.kubectl_run("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/{path}",
                               check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def quantity(q: str) -> float:
    """A CPU (cores) or memory (bytes) quantity as metrics-server reports it."""
    units = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q)


def test_service_monitor_becomes_a_prometheus_target_with_the_models_metrics(
        cluster: lc.Cluster, published: tuple[str, str], real_namespace: str,
        k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = published
    k.apply(served("watched", ns, uri, digest, monitoring={"interval": "5s"}))
    wait_ready(k, ns, "watched")
    sm = k.get(MONITORING_API, "ServiceMonitor", ns, "watched")
    assert sm, "the operator writes a ServiceMonitor when the cluster serves the CRD"

    # prometheus-operator turned it into scrape config; Prometheus found the pod and scrapes it.
    found = monitoring.wait_for_target({"namespace": ns, "service": "watched"})
    assert any(t["scrapePool"] == f"serviceMonitor/{ns}/watched/0" for t in found), found

    ip = cluster_ip(k, ns, "watched")
    for _ in range(5):
        infer_once(ip, "watched")
    promql = f'sum by (model, variant) (model_server_requests_total{{namespace="{ns}"}})'
    result = monitoring.wait_for_query(
        promql, accept=lambda r: bool(r) and float(r[0]["value"][1]) >= 5)
    assert len(result) == 1, result
    assert result[0]["metric"] == {"model": "watched", "variant": "baseline"}


def test_metrics_server_reports_real_usage_of_a_model_server_pod(
        cluster: lc.Cluster, published: tuple[str, str], real_namespace: str,
        k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = published
    k.apply(served("measured", ns, uri, digest))
    wait_ready(k, ns, "measured")
    (pod,) = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=measured")
    name = pod["metadata"]["name"]

    usage = wait_for(f"metrics.k8s.io usage of {ns}/{name}",
                     lambda: metrics_api(cluster, f"namespaces/{ns}/pods/{name}"), timeout=90)
    by_container = {c["name"]: c["usage"] for c in usage["containers"]}
    server = pod["spec"]["containers"][0]["name"]
    # A Python process that imported torch and loaded a model: tens of MB at the very least.
    assert quantity(by_container[server]["memory"]) > 50 * 2**20, by_container
    assert quantity(by_container[server]["cpu"]) > 0, by_container

    top = wait_for("kubectl top pod", lambda: cluster.kubectl_run(
        "top", "pod", name, "-n", ns, "--no-headers", check=False).stdout.split(), timeout=60)
    assert top[0] == name and top[1].endswith("m") and top[2].endswith("Mi"), top
    assert int(top[2][:-2]) > 50, top
    node = metrics_api(cluster, "nodes/node-1")
    assert node and quantity(node["usage"]["memory"]) > quantity(by_container[server]["memory"])


# Scale up at once, down 15 s after the metric fell (the defaults wait 5 minutes).
QUICK = {"scaleUp": {"stabilizationWindowSeconds": 0,
                     "policies": [{"type": "Pods", "value": 1, "periodSeconds": 5}]},
         "scaleDown": {"stabilizationWindowSeconds": 15,
                       "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]}}


def current_metric(hpa: dict[str, Any], kind: str, field: str) -> float | None:
    """The HPA's current value of its ``kind`` metric (``resource``/``pods``) ``field``."""
    for m in hpa.get("status", {}).get("currentMetrics") or []:
        value = (m.get(kind) or {}).get("current", {}).get(field)
        if value is not None:
            return quantity(str(value))
    return None


def scale_up_under_load_and_back(k: kube.Kube, ns: str, name: str, kind: str, field: str,
                                 target: float, clients: int) -> None:
    """An autoscaled ModelService (min 1, max 2) is Ready: its HPA reads the metric idle,
    scales to 2 ready replicas under load from ``clients`` and back to 1 after it."""
    hpa_name = f"{name}-baseline"

    def hpa() -> dict[str, Any]:
        return k.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, hpa_name) or {}

    def replicas(field: str) -> int:
        d = k.get("apps/v1", "Deployment", ns, hpa_name) or {}
        return int(d.get(field.split(".")[0], {}).get(field.split(".")[1], 0))

    # Idle: the HPA reads a real (low) value and keeps the minimum.
    wait_for(f"the HPA to read its {kind} metric", lambda: current_metric(
        hpa(), kind, field) is not None, timeout=180, interval=2)
    assert hpa()["status"]["desiredReplicas"] == 1, hpa()["status"]

    ip = cluster_ip(k, ns, name)
    with Load(ip, name, clients=clients, pause=0) as load:
        wait_for(f"the HPA to see its {kind} metric above {target}",
                 lambda: (current_metric(hpa(), kind, field) or 0) > target, timeout=180,
                 interval=2)
        wait_for("a second ready replica started by the HPA",
                 lambda: replicas("status.readyReplicas") == 2, timeout=300, interval=2)
        pods = k.list("v1", "Pod", ns, f"serving.modelservice.dev/modelservice={name}")
        assert all(p["spec"]["nodeName"] == "node-1" for p in pods)
    assert load.answered > 0 and not load.failures, (load.statuses, load.errors)

    # Load stopped: the metric falls and the HPA scales back to its minimum per its behavior.
    wait_for("the HPA to scale back to 1 replica after the load",
             lambda: hpa().get("status", {}).get("desiredReplicas") == 1, timeout=240,
             interval=2)
    wait_for("the Deployment to shrink to 1 replica",
             lambda: replicas("spec.replicas") == 1, timeout=60)
    reasons = [e.get("message", "") for e in k.list("v1", "Event", ns)
               if e.get("reason") == "SuccessfulRescale"]
    assert any("above target" in m for m in reasons), reasons
    assert any("below target" in m for m in reasons), reasons


def test_cpu_hpa_of_an_operator_built_deployment_scales_up_under_load_and_back_down(
        cluster: lc.Cluster, published: tuple[str, str], real_namespace: str,
        k: kube.Kube) -> None:
    uri, digest = published
    k.apply(served("scaled", real_namespace, uri, digest, autoscaling={
        "minReplicas": 1, "maxReplicas": 2, "targetCPUUtilization": 50, "behavior": QUICK}))
    wait_ready(k, real_namespace, "scaled")
    # metrics-server's CPU of the real pods, as a percentage of their 50m request.
    scale_up_under_load_and_back(k, real_namespace, "scaled", "resource",
                                 "averageUtilization", target=50, clients=3)


def test_inflight_hpa_scales_on_the_model_servers_own_metric_through_the_adapter(
        cluster: lc.Cluster, published: tuple[str, str], real_namespace: str,
        k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = published
    k.apply(served("busy", ns, uri, digest, monitoring={"interval": "5s"}, autoscaling={
        "minReplicas": 1, "maxReplicas": 2, "targetInFlight": 1, "behavior": QUICK}))
    wait_ready(k, ns, "busy")
    hpa = k.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, "busy-baseline")
    assert hpa and [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"], hpa

    # Prometheus scrapes the pod; prometheus-adapter serves its gauge per pod.
    path = f"namespaces/{ns}/pods/*/model_server_inflight_requests"

    def pods_served() -> list[dict[str, Any]]:
        proc = cluster.kubectl_run(
            "get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta1/{path}", check=False)
        return list(json.loads(proc.stdout)["items"]) if proc.returncode == 0 else []

    items = wait_for(f"custom.metrics.k8s.io {path} to list the pod", pods_served,
                     timeout=120, interval=2)
    assert [i["describedObject"]["kind"] for i in items] == ["Pod"], items

    # model_server_inflight_requests via the adapter: 4 closed-loop clients keep several
    # requests in the one pod against a target of 1 per pod.
    scale_up_under_load_and_back(k, ns, "busy", "pods", "averageValue", target=1, clients=4)


def test_prometheus_helpers_report_what_prometheus_said(cluster: lc.Cluster) -> None:
    # The stack's own targets are not scraped (no ServiceMonitor for them): `up` is empty.
    assert monitoring.query('up{namespace="monitoring"}') == []
    assert monitoring.query("vector(1)")[0]["value"][1] == "1"
    with pytest.raises(monitoring.MonitoringError, match="parse error"):
        monitoring.query("sum(")
    with pytest.raises(monitoring.MonitoringError, match="no target with labels"):
        monitoring.wait_for_target({"namespace": "no-such-namespace"}, timeout=2)
    names = [name for name, ok, _detail in monitoring.health(cluster) if ok]
    assert names == ["prometheus-operator", f"prometheus-{monitoring.PROMETHEUS_NAME}",
                     "metrics-server", "prometheus-adapter", "prometheus-api",
                     "metrics.k8s.io", "custom.metrics.k8s.io"]
