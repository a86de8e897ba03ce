"""The default simulated node pool: CPU nodes and GPU nodes shaped like real GPU pools.

GPU nodes advertise ``nvidia.com/gpu`` capacity, carry the labels NVIDIA's GPU feature
discovery sets (``nvidia.com/gpu.product``, ``.count``, ``.memory``) and the
``nvidia.com/gpu=present:NoSchedule`` taint managed GPU pools use. The H100 node's GPUs are
partitioned into MIG devices under the ``mixed`` strategy, as NVIDIA's device plugin and GFD
advertise them: one resource per profile (``nvidia.com/mig-1g.10gb``, ...), no
``nvidia.com/gpu``, the label ``nvidia.com/mig.strategy=mixed`` and per profile
``nvidia.com/mig-<profile>.count``, ``.memory`` (MiB), ``.slices.gi`` and ``.slices.ci``.
kwok manages every node annotated ``kwok.x-k8s.io/node: fake``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
MIG_PREFIX = "nvidia.com/mig-"
_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb$")


def mig_memory_mib(profile: str) -> int:
    """A MIG profile's memory label: the GB of its name in MiB, rounded down (real devices
    report a little more, e.g. 9728 MiB for an A100's 1g.10gb)."""
    m = _PROFILE.match(profile)
    assert m, profile
    return int(m.group(2)) * 10**9 // 2**20


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: str
    memory: str
    instance_type: str
    gpus: int = 0
    gpu_product: str = ""
    gpu_memory_mib: int = 0
    zone: str = "local-a"
    mig: tuple[tuple[str, int], ...] = ()
    """MIG devices by profile (``("1g.10gb", 28)``), advertised as ``nvidia.com/mig-<profile>``."""
    mig_gpus: int = 0
    """GPUs partitioned into ``mig`` (no longer ``nvidia.com/gpu``)."""

    @property
    def has_gpus(self) -> bool:
        return bool(self.gpus or self.mig)


DEFAULT_POOL: tuple[NodeSpec, ...] = (
    NodeSpec("cpu-1", cpu="16", memory="64Gi", instance_type="cpu-16x64"),
    NodeSpec("cpu-2", cpu="16", memory="64Gi", instance_type="cpu-16x64", zone="local-b"),
    NodeSpec("gpu-a100-1", cpu="96", memory="1024Gi", instance_type="a100-80gb-8x", gpus=8,
             gpu_product="NVIDIA-A100-SXM4-80GB", gpu_memory_mib=81920),
    NodeSpec("gpu-a100-2", cpu="96", memory="1024Gi", instance_type="a100-80gb-8x", gpus=8,
             gpu_product="NVIDIA-A100-SXM4-80GB", gpu_memory_mib=81920, zone="local-b"),
    NodeSpec("gpu-l4-1", cpu="48", memory="192Gi", instance_type="l4-24gb-4x", gpus=4,
             gpu_product="NVIDIA-L4", gpu_memory_mib=23034),
    # 8 H100s: 2 split into 2 x 3g.40gb, 2 into 3 x 2g.20gb, 4 into 7 x 1g.10gb
    NodeSpec("gpu-h100-mig-1", cpu="192", memory="2048Gi", instance_type="h100-80gb-8x-mig",
             gpu_product="NVIDIA-H100-80GB-HBM3", gpu_memory_mib=81559,
             mig=(("1g.10gb", 28), ("2g.20gb", 6), ("3g.40gb", 4)), mig_gpus=8),
)


# With a real node, the simulated CPU nodes carry this taint: ordinary CPU pods land on the
# real node and really run; a namespace opts into simulation (see ``SIMULATED_NAMESPACE``).
SIMULATED_TAINT = {"key": "localcluster.modelservice.dev/simulated", "value": "true",
                   "effect": "NoSchedule"}
# Namespace annotations (PodNodeSelector and PodTolerationRestriction admission plugins) that
# send every pod of a namespace to the simulated CPU nodes: for tests of operator logic that
# need many pods "Ready" without running them. Readiness there is kwok's, not a server's.
SIMULATED_NAMESPACE = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations":
        '[{"key": "localcluster.modelservice.dev/simulated", "operator": "Exists", '
        '"effect": "NoSchedule"}]',
}


def node_manifest(n: NodeSpec, real_node: bool = False) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": n.instance_type,
        "topology.kubernetes.io/zone": n.zone,
        "type": "kwok",
    }
    capacity = {"cpu": n.cpu, "memory": n.memory, "pods": "110", "ephemeral-storage": "500Gi"}
    taints: list[dict[str, str]] = []
    if n.has_gpus:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": n.gpu_product,
            "nvidia.com/gpu.count": str(n.gpus + n.mig_gpus),
            "nvidia.com/gpu.memory": str(n.gpu_memory_mib),
        }
        if n.gpus:
            capacity[GPU_RESOURCE] = str(n.gpus)
        if n.mig:
            labels["nvidia.com/mig.strategy"] = "mixed"
        for profile, count in n.mig:
            resource = f"{MIG_PREFIX}{profile}"
            slices = profile.split("g.", 1)[0]
            labels |= {f"{resource}.count": str(count),
                       f"{resource}.memory": str(mig_memory_mib(profile)),
                       f"{resource}.slices.gi": slices, f"{resource}.slices.ci": slices}
            capacity[resource] = str(count)
        taints.append(dict(GPU_TAINT))
    elif real_node:
        taints.append(dict(SIMULATED_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def pool_manifest(pool: tuple[NodeSpec, ...] = DEFAULT_POOL, real_node: bool = False
                  ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List",
            "items": [node_manifest(n, real_node) for n in pool]}
