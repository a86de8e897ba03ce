"""The operator against the real local control plane: create, GPU placement, Unschedulable,
updates, HPA-owned replicas, repair of hand edits (and their Events), garbage collection.
Invalid specs: test_bad_modelservices.py."""

from __future__ import annotations

from typing import Any

import pytest
from manifests import INT8, MS_API, modelservice
from msv_operator import kube
from operator_harness import (
    FIELD_MANAGER,
    LABEL_MODELSERVICE,
    LABEL_VARIANT,
    RunningOperator,
    condition,
)
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow


def get_ms(k: kube.Kube, ns: str, name: str) -> dict[str, Any] | None:
    return k.get(MS_API, "ModelService", ns, name)


def apply_ms(k: kube.Kube, body: dict[str, Any]) -> dict[str, Any]:
    return k.apply(body)


def owned(k: kube.Kube, ns: str, name: str, api_version: str, kind: str) -> list[dict[str, Any]]:
    return k.list(api_version, kind, ns, f"{LABEL_MODELSERVICE}={name}")


def ready(k: kube.Kube, ns: str, name: str) -> dict[str, Any] | None:
    ms = get_ms(k, ns, name)
    c = condition(ms, "Ready")
    gen = (ms or {}).get("metadata", {}).get("generation")
    if c.get("status") == "True" and (ms or {}).get("status", {}).get("observedGeneration") == gen:
        return ms
    return None


def wait_for_ready_reason(k: kube.Kube, ns: str, name: str, reason: str,
                          timeout: float) -> dict[str, Any]:
    """The Ready condition of ModelService `name`, once its reason is `reason`."""
    def reported() -> dict[str, Any] | None:
        c = condition(get_ms(k, ns, name), "Ready")
        return c if c.get("reason") == reason else None

    return wait_for(f"{name}: Ready/{reason}", reported, timeout=timeout)


def test_create_applies_every_object_and_becomes_ready(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    ms = apply_ms(k, modelservice("sentiment", namespace, variants=[{"name": "baseline"}, INT8],
                                  traffic={"baseline": 75, "int8": 25}))
    uid = ms["metadata"]["uid"]
    final = wait_for("Ready=True", lambda: ready(k, namespace, "sentiment"), timeout=90)

    deployments = {d["metadata"]["name"]: d for d in
                   owned(k, namespace, "sentiment", "apps/v1", "Deployment")}
    services = {s["metadata"]["name"] for s in owned(k, namespace, "sentiment", "v1", "Service")}
    assert set(deployments) == {"sentiment-baseline", "sentiment-int8"}
    assert services == {"sentiment", "sentiment-baseline", "sentiment-int8"}
    for dep in deployments.values():
        meta = dep["metadata"]
        refs = meta["ownerReferences"]
        assert [(r["uid"], r["kind"], r["controller"]) for r in refs] == [
            (uid, "ModelService", True)]
        assert meta["labels"][LABEL_MODELSERVICE] == "sentiment"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelservice-operator"
        appliers = {m["manager"] for m in meta["managedFields"] if m["operation"] == "Apply"}
        assert appliers == {FIELD_MANAGER}
        assert dep["status"].get("readyReplicas") == 1
    int8 = deployments["sentiment-int8"]
    env = {e["name"]: e.get("value") for e in
           int8["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert env.get("MODEL_SERVER_QUANTIZATION") == "dynamic-int8"
    assert int8["metadata"]["labels"][LABEL_VARIANT] == "int8"

    status = final["status"]
    assert status["url"] == f"http://sentiment.{namespace}.svc.cluster.local"
    assert {(v["name"], v["weight"], v["readyReplicas"]) for v in status["variants"]} == {
        ("baseline", 75, 1), ("int8", 25, 1)}
    assert condition(final, "Degraded")["status"] == "False"
    assert condition(final, "Progressing")["status"] == "False"
    assert operator.metric("msv_operator_reconciles_total", {"result": "applied"}) >= 1
    assert operator.metric("msv_operator_status_writes_total") >= 1


def test_gpu_modelservice_lands_only_on_matching_gpu_nodes(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    apply_ms(k, modelservice("llm", namespace,
                             gpu={"count": 1, "resourceName": "nvidia.com/gpu",
                                  "products": ["NVIDIA-L4"]},
                             variants=[{"name": "fp16",
                                        "optimization": {"quantization": "float16"}}]))
    wait_for("Ready=True", lambda: ready(k, namespace, "llm"), timeout=90)
    pods = k.list("v1", "Pod", namespace, f"{LABEL_MODELSERVICE}=llm")
    assert pods, "the Deployment must have created pods"
    for pod in pods:
        node = k.get("v1", "Node", None, pod["spec"]["nodeName"])
        assert node is not None
        assert node["metadata"]["labels"].get("nvidia.com/gpu.product") == "NVIDIA-L4"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert str(limits["nvidia.com/gpu"]) == "1"


def test_impossible_gpu_request_is_unschedulable_with_the_scheduler_message(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    apply_ms(k, modelservice("huge", namespace, gpu={"count": 16}))
    c = wait_for_ready_reason(k, namespace, "huge", "Unschedulable", timeout=90)
    assert c["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in c["message"]
    ms = get_ms(k, namespace, "huge")
    assert condition(ms, "Degraded")["status"] == "True"
    def events() -> list[dict[str, Any]]:
        return [e for e in k.list("v1", "Event", namespace)
                if e["involvedObject"].get("kind") == "ModelService"
                and e["reason"] == "Unschedulable"]

    wait_for("the Unschedulable Event", events, timeout=30)
    passes = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
    wait_for("two more passes", lambda: operator.metric(
        "msv_operator_reconciles_total", {"result": "unchanged"}) >= passes + 2, timeout=30)
    assert len(events()) == 1, "one Event for the transition, not one per pass"


def test_spec_updates_converge_and_observed_generation_follows(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    body = modelservice("svc", namespace, variants=[{"name": "baseline"}, INT8],
                        traffic={"baseline": 50, "int8": 50})
    apply_ms(k, body)
    wait_for("Ready=True", lambda: ready(k, namespace, "svc"), timeout=90)

    body["spec"]["server"] = {"image": "registry.example/model-server:9.9"}
    body["spec"]["variants"] = [{"name": "baseline"}, {"name": "pruned", "optimization": {
        "pruning": {"method": "structured", "amount": 0.3}}}]
    body["spec"]["traffic"] = [{"variant": "baseline", "weight": 90},
                               {"variant": "pruned", "weight": 10}]
    updated = apply_ms(k, body)
    generation = updated["metadata"]["generation"]
    final = wait_for("the new generation to be Ready",
                     lambda: ready(k, namespace, "svc"), timeout=90)
    assert final["status"]["observedGeneration"] == generation
    assert {(v["name"], v["weight"]) for v in final["status"]["variants"]} == {
        ("baseline", 90), ("pruned", 10)}

    def converged() -> bool:
        deps = {d["metadata"]["name"]: d for d in
                owned(k, namespace, "svc", "apps/v1", "Deployment")}
        svcs = {s["metadata"]["name"] for s in owned(k, namespace, "svc", "v1", "Service")}
        images = {d["spec"]["template"]["spec"]["containers"][0]["image"]
                  for d in deps.values()}
        return (set(deps) == {"svc-baseline", "svc-pruned"}
                and svcs == {"svc", "svc-baseline", "svc-pruned"}
                and images == {"registry.example/model-server:9.9"})

    wait_for("removed variant pruned, image rolled", converged, timeout=60)

    # Down to one variant: the stable Service becomes its only Service (carrying the variant
    # label the ServiceMonitor selects); the per-variant Services are pruned.
    body["spec"]["variants"] = [{"name": "baseline"}]
    body["spec"]["traffic"] = [{"variant": "baseline", "weight": 100}]
    apply_ms(k, body)

    def one_service() -> dict[str, Any] | None:
        svcs = {s["metadata"]["name"]: s for s in owned(k, namespace, "svc", "v1", "Service")}
        return svcs["svc"] if set(svcs) == {"svc"} else None

    stable = wait_for("one Service left", one_service, timeout=60)
    assert stable["metadata"]["labels"]["serving.modelservice.dev/variant"] == "baseline"
    wait_for("Ready=True with one variant", lambda: ready(k, namespace, "svc"), timeout=90)


def test_replicas_changed_by_the_hpa_stay_untouched(
        operator: RunningOperator, k: kube.Kube, namespace: str,
        cluster: lc.Cluster) -> None:
    apply_ms(k, modelservice("auto", namespace,
                             autoscaling={"minReplicas": 1, "maxReplicas": 5,
                                          "targetCPUUtilization": 70}))
    wait_for("Ready=True", lambda: ready(k, namespace, "auto"), timeout=90)
    hpas = owned(k, namespace, "auto", "autoscaling/v2", "HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["auto-baseline"]
    dep = k.get("apps/v1", "Deployment", namespace, "auto-baseline")
    assert dep is not None
    for entry in dep["metadata"]["managedFields"]:
        if entry["manager"] == FIELD_MANAGER:
            assert "f:replicas" not in entry.get("fieldsV1", {}).get("f:spec", {}), \
                "the operator must not own replicas when an HPA exists"
    # Scale through the scale subresource, as the HPA controller does.
    cluster.kubectl_run("scale", "deployment/auto-baseline", "--replicas=3", "-n", namespace)
    resyncs = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
    wait_for("two resync passes", lambda: operator.metric(
        "msv_operator_reconciles_total", {"result": "unchanged"}) >= resyncs + 2, timeout=30)
    dep = k.get("apps/v1", "Deployment", namespace, "auto-baseline")
    assert dep is not None and dep["spec"]["replicas"] == 3
    assert repair_events(k, namespace) == [], "an HPA-owned replica count is not drift"


def test_objects_edited_or_deleted_by_hand_are_repaired(
        operator: RunningOperator, k: kube.Kube, namespace: str,
        cluster: lc.Cluster) -> None:
    apply_ms(k, modelservice("fix", namespace))
    wait_for("Ready=True", lambda: ready(k, namespace, "fix"), timeout=90)
    dep = k.get("apps/v1", "Deployment", namespace, "fix-baseline")
    assert dep is not None
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    cluster.kubectl_run("delete", "service", "fix", "-n", namespace)
    cluster.kubectl_run("set", "image", "deployment/fix-baseline",
                        f"{dep['spec']['template']['spec']['containers'][0]['name']}=evil:1",
                        "-n", namespace)

    def repaired() -> bool:
        svc = k.get("v1", "Service", namespace, "fix")
        d = k.get("apps/v1", "Deployment", namespace, "fix-baseline")
        return bool(svc and d and
                    d["spec"]["template"]["spec"]["containers"][0]["image"] == image)

    wait_for("the Service recreated and the image restored", repaired, timeout=30)
    # Each repair leaves an Event on the ModelService naming the object (and the field).
    messages = wait_for("two Repaired Events", lambda: (
        m if len(m := repair_events(k, namespace)) >= 2 else None), timeout=30)
    assert "re-created Service fix: it was deleted" in messages
    assert ("restored Deployment fix-baseline: spec.template.spec.containers[0].image was "
            "changed by hand") in messages

    cluster.kubectl_run("scale", "deployment/fix-baseline", "--replicas=4", "-n", namespace)
    wait_for("the replica count restored", lambda: (
        d := k.get("apps/v1", "Deployment", namespace, "fix-baseline")) is not None
        and d["spec"]["replicas"] == 1, timeout=30)
    wait_for("the replicas repair Event", lambda: (
        "restored Deployment fix-baseline: spec.replicas was changed by hand"
        in repair_events(k, namespace)), timeout=30)


def repair_events(k: kube.Kube, namespace: str) -> list[str]:
    return [e["message"] for e in k.list("v1", "Event", namespace)
            if e["involvedObject"].get("kind") == "ModelService" and e["reason"] == "Repaired"]


def test_deleting_the_modelservice_garbage_collects_everything(
        operator: RunningOperator, k: kube.Kube, namespace: str,
        cluster: lc.Cluster) -> None:
    apply_ms(k, modelservice("gone", namespace, autoscaling={"minReplicas": 1,
                                                             "maxReplicas": 2}))
    wait_for("Ready=True", lambda: ready(k, namespace, "gone"), timeout=90)
    # A look-alike the operator does not own must survive.
    stranger = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "gone-baseline", "namespace": namespace,
                             "labels": {LABEL_MODELSERVICE: "gone"}}}
    k.apply(stranger)
    cluster.kubectl_run("delete", "modelservice", "gone", "-n", namespace, "--wait=true",
                        "--timeout=30s")

    def nothing_left() -> bool:
        kinds = (("apps/v1", "Deployment"), ("v1", "Service"),
                 ("autoscaling/v2", "HorizontalPodAutoscaler"), ("v1", "Pod"))
        return not any(owned(k, namespace, "gone", a, kd) for a, kd in kinds)

    wait_for("every owned object garbage-collected", nothing_left, timeout=60)
    assert k.get("v1", "ConfigMap", namespace, "gone-baseline") is not None


def test_no_writes_when_nothing_changed(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    apply_ms(k, modelservice("quiet", namespace))
    wait_for("Ready=True", lambda: ready(k, namespace, "quiet"), timeout=90)
    def quiet_pass() -> bool:
        """One more resync pass, and whether it wrote no status (a pass may still follow
        Ready with a write, e.g. the pods' start-up times)."""
        writes = operator.metric("msv_operator_status_writes_total")
        seen = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
        wait_for("a resync pass", lambda: operator.metric(
            "msv_operator_reconciles_total", {"result": "unchanged"}) > seen, timeout=30)
        return operator.metric("msv_operator_status_writes_total") == writes

    wait_for("a pass that writes nothing", quiet_pass, timeout=90)
    before = k.get(MS_API, "ModelService", namespace, "quiet")
    writes = operator.metric("msv_operator_status_writes_total")
    applies = sum(operator.metric("msv_operator_applies_total", {"kind": kd})
                  for kd in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    passes = operator.metric("msv_operator_reconciles_total", {"result": "unchanged"})
    wait_for("three resync passes", lambda: operator.metric(
        "msv_operator_reconciles_total", {"result": "unchanged"}) >= passes + 3, timeout=30)
    after = k.get(MS_API, "ModelService", namespace, "quiet")
    assert operator.metric("msv_operator_status_writes_total") == writes
    assert sum(operator.metric("msv_operator_applies_total", {"kind": kd})
               for kd in ("Deployment", "Service", "HorizontalPodAutoscaler")) == applies
    assert before and after
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
