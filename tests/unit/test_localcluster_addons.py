"""localcluster's small pure parts: metrics stand-in quantities, node pool, add-on CRD lookup."""

from __future__ import annotations

import shutil
from decimal import Decimal

import pytest
import yaml

from localcluster import addons, metrics_server, nodes


def test_quantities_parse_like_kubernetes() -> None:
    assert metrics_server.parse_quantity("250m") == Decimal("0.25")
    assert metrics_server.parse_quantity("2") == Decimal(2)
    assert metrics_server.parse_quantity("512Mi") == Decimal(512 * 2**20)
    assert metrics_server.cpu_string(Decimal("0.25")) == "250000000n"
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        metrics_server.parse_quantity("lots")


def test_pod_metrics_use_annotations_and_ignore_bad_ones() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n", "annotations": {
        metrics_server.CPU_ANNOTATION: "1500m", metrics_server.MEMORY_ANNOTATION: "1Gi"}},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    m = metrics_server.pod_metrics(pod)
    assert [c["usage"] for c in m["containers"]] == [
        {"cpu": "1500000000n", "memory": str(2**30)}, {"cpu": "0n", "memory": "0"}]
    pod["metadata"]["annotations"][metrics_server.CPU_ANNOTATION] = "not-a-number"
    assert metrics_server.pod_metrics(pod)["containers"][0]["usage"]["cpu"] == "0n"
    node = metrics_server.node_metrics("x", [pod, pod])
    assert node["usage"]["memory"] == "0"  # a bad annotation zeroes that pod, never crashes


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
