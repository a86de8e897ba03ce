"""localcluster.nodes: kwok's simulated node pool (GPU capacity, labels and taints)."""

from __future__ import annotations

from localcluster import nodes


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


def test_with_a_real_node_simulated_cpu_nodes_are_tainted_gpu_nodes_unchanged() -> None:
    items = {n["metadata"]["name"]: n for n in nodes.pool_manifest(real_node=True)["items"]}
    plain = {n["metadata"]["name"]: n for n in nodes.pool_manifest()["items"]}
    assert items.keys() == plain.keys()
    for name, node in items.items():
        taints = node["spec"].get("taints", [])
        if node["metadata"]["labels"].get("nvidia.com/gpu.present"):
            assert taints == plain[name]["spec"]["taints"]
        else:
            assert taints == [nodes.SIMULATED_TAINT]
            assert not plain[name]["spec"].get("taints")
