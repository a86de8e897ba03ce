"""localcluster: a real Kubernetes control plane for development and tests, built from Go modules.

``build.build()`` compiles etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
kwok and helm from pinned Go modules into a cache outside the repository; ``up()`` starts them
on loopback with a simulated CPU/GPU node pool and returns a ``Cluster`` (kubeconfig, env);
``down()`` stops them; ``status()`` reports each component. CLI: ``python -m localcluster``.

The names below are imported when first used: the gateway image carries this package but
runs only ``localcluster.gateway``, without the host side's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {"BuildError": "localcluster.build",
          **{name: "localcluster.cluster" for name in (
              "Cluster", "ClusterError", "ComponentStatus", "NotBuiltError", "current", "down",
              "is_healthy", "status", "up")}}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'localcluster' has no attribute {name!r}")


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
