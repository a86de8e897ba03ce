"""localcluster: a real Kubernetes control plane for development and tests, built from Go modules.

``build.build()`` compiles etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
kwok and helm from pinned Go modules into a cache outside the repository; ``up()`` starts them
on loopback with a simulated CPU/GPU node pool and returns a ``Cluster`` (kubeconfig, env);
``down()`` stops them; ``status()`` reports each component. CLI: ``python -m localcluster``.
"""

from localcluster.build import BuildError
from localcluster.cluster import (
    Cluster,
    ClusterError,
    ComponentStatus,
    NotBuiltError,
    current,
    down,
    is_healthy,
    status,
    up,
)

__all__ = [
    "BuildError",
    "Cluster",
    "ClusterError",
    "ComponentStatus",
    "NotBuiltError",
    "current",
    "down",
    "is_healthy",
    "status",
    "up",
]
