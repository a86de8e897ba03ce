"""Whole reconcile passes without a gateway (issue 22, item 5), replicas 2 and weight 10: the
status reports the share the pods deliver (33%), a rollout step the replicas cannot represent
holds with a condition saying why, and once spec.replicas allows it the stable side is scaled
up and the step taken; the share follows the pods as they become ready."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fakekube import FakeKube
from msv_operator import builders, cache, kube, reconcile, rollout, shares
from msv_operator.config import OperatorConfig
from msv_operator.owned import key_of

UID = "u-1"
NOW = "2026-01-01T12:00:00Z"


def pod(variant: str, n: int, serving: bool, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": f"sentiment-{variant}-{n}", "labels": {
                builders.LABEL_MODELSERVICE: "sentiment", builders.LABEL_VARIANT: variant,
                builders.LABEL_SERVING: "true" if serving else "false"}},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


class SharesKube(FakeKube):
    """A Deployment's apply answers with its live status, as the API server's does; nothing
    is pruned."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        super().__init__(may_delete=False)
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.live: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, obj: Mapping[str, Any], *, answer: bool = True,
              field_manager: str | None = None) -> dict[str, Any]:
        super().apply(obj, answer=answer, field_manager=field_manager)
        if obj["kind"] != "Deployment":
            return {}
        return {**obj, "status": (self.live.get(key_of(obj)) or {}).get("status") or {}}

class NoGateway:
    def get(self) -> kube.CapabilityAnswer:
        return kube.CapabilityAnswer(service_monitor=False, gateway_api=False)


def modelservice(status: Mapping[str, Any], replicas: int = 2,
                 rollout_spec: dict[str, Any] | None = None,
                 traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://m/x", "framework": "transformers", "task": "text-classification"},
        "replicas": replicas,
        "variants": [{"name": "baseline"},
                     {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}],
        "traffic": traffic or [{"variant": "baseline", "weight": 100}]}
    if rollout_spec:
        spec["rollout"] = rollout_spec
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": spec, "status": dict(status)}


def deployment(variant: str, replicas: int, ready: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"sentiment-{variant}", "namespace": "ml", "generation": 1,
                         "labels": {builders.LABEL_MODELSERVICE: "sentiment",
                                    builders.LABEL_VARIANT: variant},
                         "ownerReferences": [{"kind": "ModelService", "uid": UID,
                                              "controller": True}]},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                       "availableReplicas": ready, "updatedReplicas": replicas}}


class Operator:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.kube = SharesKube(pods)
        self.ctx = reconcile.Context(config=OperatorConfig(), kube=self.kube,
                                     capabilities=NoGateway(), analyzer=None)  # type: ignore[arg-type]
        self.status: dict[str, Any] = {}
        self.events: list[tuple[str, str, str]] = []

    def add(self, p: dict[str, Any]) -> None:
        self.kube.pods[p["metadata"]["name"]] = p

    def run(self, deployments: list[dict[str, Any]], **spec: Any) -> reconcile.Result:
        self.kube.applied.clear()
        self.kube.live = {key_of(d): d for d in deployments}
        observed = reconcile.Observed(objects=deployments,
                                      pods=[cache.plain(p) for p in self.kube.pods.values()])
        result = reconcile.reconcile(self.ctx, modelservice(self.status, **spec), observed, NOW)
        if result.status_written:
            self.status = self.kube.status
        self.events += result.events
        return result

    def variant(self, name: str) -> dict[str, Any]:
        return next(v for v in self.status["variants"] if v["name"] == name)

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)

    def replicas(self) -> dict[str, int]:
        return {name.removeprefix("sentiment-"): o["spec"]["replicas"]
                for (kind, name), o in self.kube.applied.items() if kind == "Deployment"}


def test_replicas_2_weight_10_reports_the_delivered_share_33() -> None:
    op = Operator([pod("baseline", 1, True), pod("baseline", 2, True), pod("int8", 1, True)])
    op.run([deployment("baseline", 2, 2), deployment("int8", 1, 1)],
           traffic=[{"variant": "baseline", "weight": 90}, {"variant": "int8", "weight": 10}])
    assert (op.variant("int8")["weight"], op.variant("int8")["share"]) == (10, 33)
    assert op.status["traffic"] == "baseline=90,int8=10"
    assert op.status["shares"] == "baseline=67,int8=33"
    assert op.replicas() == {"baseline": 2, "int8": 1}  # no extra pod that would not help
    progressing = op.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == (
        "False", shares.SHARE_NOT_REPRESENTABLE)
    assert "int8 at 10% gets 33% (1 of 3 pods)" in progressing["message"]
    assert "add a gateway (spec.gateway)" in progressing["message"]
    assert "raise spec.replicas to 6" in progressing["message"]
    assert op.condition("Ready")["status"] == "True"


def test_a_rollout_step_of_10_percent_on_2_replicas_holds_then_scales_up_and_steps() -> None:
    steps = {"candidate": "int8", "steps": [10, 100]}
    op = Operator([pod("baseline", 1, True), pod("baseline", 2, True), pod("int8", 1, False)])
    op.run([deployment("baseline", 2, 2), deployment("int8", 1, 1)], rollout_spec=steps)
    r = op.status["rollout"]
    assert (r["phase"], r["reason"], r["step"]) == (
        rollout.PAUSED, rollout.SHARE_NOT_REPRESENTABLE, 0)
    # nothing claimed, nothing delivered: the candidate is not in the stable Service
    assert op.status["traffic"] == "baseline=100,int8=0"
    assert op.status["shares"] == "baseline=100,int8=0"
    assert op.kube.relabelled == []
    assert op.condition("Rollout")["reason"] == shares.SHARE_NOT_REPRESENTABLE
    progressing = op.condition("Progressing")
    assert progressing["reason"] == shares.SHARE_NOT_REPRESENTABLE
    assert "holding before step 1/2 (candidate int8 at 10%)" in progressing["message"]
    assert "would get 33%" in progressing["message"]
    assert [reason for _, reason, _ in op.events] == ["RolloutStarted", "RolloutPaused"]

    # spec.replicas raised to 7: the step is taken, the stable side scaled to 6 pods
    op.run([deployment("baseline", 2, 2), deployment("int8", 1, 1)], replicas=7,
           rollout_spec=steps)
    r = op.status["rollout"]
    assert (r["phase"], r["step"]) == (rollout.PROGRESSING, 1)
    assert op.replicas() == {"baseline": 6, "int8": 1}
    assert op.kube.relabelled == [("sentiment-int8-1", {builders.LABEL_SERVING: "true"})]
    assert op.status["traffic"] == "baseline=90,int8=10"
    # the share is what the ready pods give while the stable side scales (never claimed)
    assert op.variant("int8")["share"] == 33
    assert op.condition("Progressing")["reason"] == "RollingOut"

    for n in range(3, 7):
        op.add(pod("baseline", n, True))
    op.run([deployment("baseline", 6, 6), deployment("int8", 1, 1)], replicas=7,
           rollout_spec=steps)
    assert op.status["shares"] == "baseline=86,int8=14"
    assert (op.variant("int8")["weight"], op.variant("int8")["share"]) == (10, 14)
    assert op.condition("Progressing")["reason"] == "RolloutComplete"
