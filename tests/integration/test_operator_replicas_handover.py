"""Switching a variant between fixed replicas and autoscaling never drops its running pods.

With server-side apply, the operator no longer sending ``spec.replicas`` (an HPA takes over)
would remove the field and the Deployment would fall to 1 replica before the HPA acts.
The operator hands the count over to a second field manager first (kube's documented
procedure), so the count the Deployment had is the one the HPA starts from.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from manifests import modelservice
from msv_operator import kube
from operator_harness import FIELD_MANAGER, RunningOperator
from waiting import wait_for

pytestmark = pytest.mark.slow


class ReplicaRecorder:
    """Every ``spec.replicas`` value the Deployment shows, polled until stopped."""

    def __init__(self, k: kube.Kube, ns: str, name: str) -> None:
        self.k, self.ns, self.name = k, ns, name
        self.seen: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            dep = self.k.get("apps/v1", "Deployment", self.ns, self.name)
            if dep is not None:
                value = dep["spec"].get("replicas")
                if not self.seen or self.seen[-1] != value:
                    self.seen.append(value)
            self._stop.wait(0.02)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def replicas(k: kube.Kube, ns: str, name: str) -> int | None:
    dep = k.get("apps/v1", "Deployment", ns, name)
    return None if dep is None else dep["spec"].get("replicas")


def owns_replicas(dep: dict[str, Any], manager: str) -> bool:
    return any("f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})
               for e in dep["metadata"]["managedFields"] if e["manager"] == manager)


def test_fixed_to_autoscaled_to_fixed_keeps_the_replica_count(
        operator: RunningOperator, namespace: str) -> None:
    k = kube.Kube("test-client")
    body = modelservice("switch", namespace, replicas=3)
    k.apply(body)
    wait_for("3 replicas", lambda: replicas(k, namespace, "switch-baseline") == 3, timeout=60)

    with ReplicaRecorder(k, namespace, "switch-baseline") as seen:
        body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 5,
                                       "targetCPUUtilization": 70}
        k.apply(body)
        wait_for("the HPA", lambda: k.get("autoscaling/v2", "HorizontalPodAutoscaler",
                                          namespace, "switch-baseline"), timeout=60)
        passes = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
        wait_for("two more passes", lambda: operator.metric(
            "msv_operator_reconciles_total", {"result": "unchanged"}) >= passes + 2, timeout=60)
    dep = k.get("apps/v1", "Deployment", namespace, "switch-baseline")
    assert dep is not None
    assert seen.seen == [3], f"replicas changed while switching to autoscaling: {seen.seen}"
    assert not owns_replicas(dep, FIELD_MANAGER), "the operator must not own replicas now"

    with ReplicaRecorder(k, namespace, "switch-baseline") as seen:
        del body["spec"]["autoscaling"]
        k.apply(body)
        wait_for("the HPA gone", lambda: k.get("autoscaling/v2", "HorizontalPodAutoscaler",
                                               namespace, "switch-baseline") is None, timeout=60)
        passes = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
        wait_for("two more passes", lambda: operator.metric(
            "msv_operator_reconciles_total", {"result": "unchanged"}) >= passes + 2, timeout=60)
    dep = k.get("apps/v1", "Deployment", namespace, "switch-baseline")
    assert dep is not None and owns_replicas(dep, FIELD_MANAGER)
    assert seen.seen == [3], f"replicas changed while switching back to fixed: {seen.seen}"
