"""localcluster.monitoring: the manifests of the monitoring stack (Prometheus, its operator,
metrics-server, prometheus-adapter)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml
from msv_operator.builders import INFLIGHT_METRIC

from localcluster import images, monitoring


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_monitoring_stack_watches_every_namespace_with_local_images() -> None:
    items = monitoring.manifests()["items"]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in items:
        by_kind.setdefault(obj["kind"], []).append(obj)
    (prom,) = by_kind["Prometheus"]
    spec = prom["spec"]
    assert spec["serviceMonitorSelector"] == {} and spec["serviceMonitorNamespaceSelector"] == {}
    assert spec["image"] == images.image_ref("prometheus")
    assert spec["version"] == "v3.16.0" and spec["scrapeInterval"] == "5s"
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    assert services["prometheus"]["spec"]["clusterIP"] == monitoring.PROMETHEUS_IP
    assert monitoring.PROMETHEUS_URL == "http://10.96.0.90:9090"
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    for name in ("prometheus-operator", "metrics-server", "prometheus-adapter"):
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert c["image"] == images.image_ref(name)
        assert c["image"].startswith("docker.io/modelservice/")
    op_args = deployments["prometheus-operator"]["spec"]["template"]["spec"]["containers"][0]
    assert (f"--prometheus-config-reloader={images.image_ref('prometheus-operator')}"
            in op_args["args"])
    apis = {a["metadata"]["name"]: a["spec"]["service"] for a in by_kind["APIService"]}
    adapter_svc = {"name": "prometheus-adapter", "namespace": "monitoring"}
    assert apis == {
        "v1beta1.metrics.k8s.io": {"name": "metrics-server", "namespace": "kube-system"},
        "v1beta1.custom.metrics.k8s.io": adapter_svc, "v1beta2.custom.metrics.k8s.io": adapter_svc}
    # The adapter serves the metric the operator's in-flight HPAs name, per pod.
    (config,) = by_kind["ConfigMap"]
    rules = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    inflight = [r for r in rules if r["seriesQuery"].startswith(INFLIGHT_METRIC + "{")]
    assert inflight and inflight[0]["resources"]["overrides"]["pod"] == {"resource": "pod"}
    adapter = deployments["prometheus-adapter"]["spec"]["template"]["spec"]["containers"][0]
    assert f"--prometheus-url={monitoring.PROMETHEUS_URL}/" in adapter["args"]
    # Upstream's RBAC, bound to service accounts that exist in the namespaces we deploy to.
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"])
                for a in by_kind["ServiceAccount"]}
    bindings = by_kind["ClusterRoleBinding"] + by_kind["RoleBinding"]
    assert len(bindings) >= 4
    for b in bindings:
        for subject in b["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
    roles = {r["metadata"]["name"]: r for r in by_kind["ClusterRole"]}
    assert any("servicemonitors" in rule.get("resources", [])
               for rule in roles["prometheus-operator"]["rules"])
