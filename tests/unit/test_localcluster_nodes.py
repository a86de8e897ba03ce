"""localcluster.nodes: kwok's simulated node pool (GPU capacity, labels and taints)."""

from __future__ import annotations

from localcluster import nodes


def test_gpu_nodes_carry_capacity_labels_and_taint() -> None:
    gpu = [nodes.node_manifest(n) for n in nodes.DEFAULT_POOL if n.has_gpus]
    cpu = [nodes.node_manifest(n) for n in nodes.DEFAULT_POOL if not n.has_gpus]
    assert gpu and cpu
    for m in gpu:
        capacity = m["status"]["capacity"]
        devices = [k for k in capacity if k == "nvidia.com/gpu" or k.startswith("nvidia.com/mig-")]
        assert devices and all(int(capacity[k]) > 0 for k in devices)
        assert m["metadata"]["labels"]["nvidia.com/gpu.product"].startswith("NVIDIA-")
        assert m["spec"]["taints"] == [nodes.GPU_TAINT]
    for m in cpu:
        assert not any(k.startswith("nvidia.com/") for k in m["status"]["capacity"])
        assert "taints" not in m["spec"]


def test_the_existing_pools_keep_their_names_and_whole_gpus() -> None:
    whole = {n.name: (n.gpu_product, n.gpus) for n in nodes.DEFAULT_POOL if n.gpus}
    assert whole == {"gpu-a100-1": ("NVIDIA-A100-SXM4-80GB", 8),
                     "gpu-a100-2": ("NVIDIA-A100-SXM4-80GB", 8),
                     "gpu-l4-1": ("NVIDIA-L4", 4)}


def test_the_h100_node_offers_mig_devices_as_gfd_labels_them_under_the_mixed_strategy() -> None:
    [spec] = [n for n in nodes.DEFAULT_POOL if n.mig]
    node = nodes.node_manifest(spec)
    labels, capacity = node["metadata"]["labels"], node["status"]["capacity"]
    assert "nvidia.com/gpu" not in capacity  # every GPU is partitioned
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert capacity["nvidia.com/mig-1g.10gb"] == labels["nvidia.com/mig-1g.10gb.count"] == "28"
    assert capacity["nvidia.com/mig-3g.40gb"] == "4"
    assert labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
    # the profile name's GB in MiB: 40 GB = 38146 MiB
    assert labels["nvidia.com/mig-3g.40gb.memory"] == "38146"
    assert node["status"]["allocatable"] == capacity


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
