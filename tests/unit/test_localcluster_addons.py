"""localcluster's small pure parts: node pool, add-on CRD lookup, the monitoring manifests."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml
from msv_operator.builders import INFLIGHT_METRIC

from localcluster import addons, images, monitoring, nodes


def test_gpu_nodes_carry_capacity_labels_and_taint() -> None:
    gpu = [nodes.node_manifest(n) for n in nodes.DEFAULT_POOL if n.gpus]
    cpu = [nodes.node_manifest(n) for n in nodes.DEFAULT_POOL if not n.gpus]
    assert gpu and cpu
    for m in gpu:
        assert int(m["status"]["capacity"]["nvidia.com/gpu"]) > 0
        assert m["metadata"]["labels"]["nvidia.com/gpu.product"].startswith("NVIDIA-")
        assert m["spec"]["taints"] == [nodes.GPU_TAINT]
    for m in cpu:
        assert "nvidia.com/gpu" not in m["status"]["capacity"]
        assert "taints" not in m["spec"]


def test_unknown_addon_is_a_clear_error() -> None:
    with pytest.raises(addons.AddonError, match="unknown add-on 'nope'; known: gateway-api"):
        addons.crd_files("nope")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
@pytest.mark.parametrize(("name", "kind"), [("gateway-api", "HTTPRoute"),
                                            ("prometheus-operator", "ServiceMonitor")])
def test_addon_crds_come_from_the_go_module(name: str, kind: str) -> None:
    files = addons.crd_files(name)
    kinds = set()
    for f in files:
        # BaseLoader: the Prometheus Operator CRDs hold a bare `=` scalar, which PyYAML's
        # safe loader rejects as an unknown tag.
        for doc in yaml.load_all(f.read_text(), Loader=yaml.BaseLoader):
            assert doc["kind"] == "CustomResourceDefinition"
            kinds.add(doc["spec"]["names"]["kind"])
    assert kind in kinds


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
