"""Scale to zero, the operator's side: the API (spec), the plan (KEDA or an HPA, bring-back,
blind), the ScaledObject, the activator's EndpointSlices and routes, and the status at zero."""

from __future__ import annotations

import json
from typing import Any

import pytest
from msv_operator import builders, spec, status, zero
from msv_operator.config import uniform_images

from msv_contract import scaletozero as stz

UID = "u-1"
ABLE = zero.Ability(keda=True, activator="msv-system/msv-activator",
                    scaler_address="10.0.0.9:9090", activator_ips=("10.1.0.5", "10.1.0.4"),
                    prometheus_url="http://prom:9090")


def body(scaling: dict[str, Any] | None = None, **variant: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sentiment", "namespace": "ml", "uid": UID},
            "spec": {"model": {"uri": "s3://models/sst2", "framework": "transformers",
                               "task": "text-classification"},
                     "variants": [{"name": "baseline"}, {"name": "int8", **variant}],
                     "traffic": [{"variant": "baseline", "weight": 100}],
                     "autoscaling": {"maxReplicas": 3, **(scaling or {})}}}


def opts() -> builders.BuildOptions:
    return builders.BuildOptions(images=uniform_images("img:1"),
                                 service_monitor=False, gateway_api=False)


# ---- API -----------------------------------------------------------------------------------

def test_min_replicas_zero_and_idle_after_per_modelservice_and_per_variant() -> None:
    parsed = spec.parse_spec(body({"minReplicas": 1, "idleAfter": "10m"},
                                  autoscaling={"minReplicas": 0, "idleAfter": "90s"}))
    assert parsed.may_scale_to_zero == ("int8",)
    assert parsed.idle_seconds("int8") == 90 and parsed.idle_seconds("baseline") == 600
    whole = spec.parse_spec(body({"minReplicas": 0}))
    assert whole.may_scale_to_zero == ("baseline", "int8")
    assert whole.idle_seconds("baseline") == 300  # the default, 5m


@pytest.mark.parametrize(("raw", "field"), [
    ({"minReplicas": -1}, "spec.variants[1].autoscaling.minReplicas"),
    ({"minReplicas": 9}, "spec.variants[1].autoscaling.minReplicas"),
    ({"idleAfter": "5"}, "spec.variants[1].autoscaling.idleAfter"),
    ({"idleAfter": "10s"}, "spec.variants[1].autoscaling.idleAfter"),
    ({"minReplica": 0}, "spec.variants[1].autoscaling.minReplica"),
])
def test_bad_variant_autoscaling_is_refused_naming_the_field(raw: dict[str, Any],
                                                              field: str) -> None:
    with pytest.raises(spec.InvalidSpecError, match=field.replace("[", r"\[").replace(
            "]", r"\]")):
        spec.parse_spec(body(autoscaling=raw))


def test_variant_autoscaling_needs_spec_autoscaling() -> None:
    b = body(autoscaling={"minReplicas": 0})
    del b["spec"]["autoscaling"]
    with pytest.raises(spec.InvalidSpecError, match=r"spec.variants\[1\].autoscaling: needs "
                                                    "spec.autoscaling"):
        spec.parse_spec(b)


# ---- the plan ------------------------------------------------------------------------------

def test_without_keda_or_activator_a_variant_keeps_an_hpa_with_one_pod_and_says_why() -> None:
    parsed = spec.parse_spec(body(autoscaling={"minReplicas": 0}))
    blind = zero.Ability(keda=False, activator=None, scaler_address=None)
    plan = zero.plan(parsed, blind, {}, {"baseline": 100}, set(), {"int8": 0})
    assert plan.keda == {} and plan.floor == {"int8": 1}
    assert "install KEDA" in plan.blind[0] and "scaleToZero.enabled" in plan.blind[0]
    assert plan.ignored[0].startswith("spec.autoscaling.minReplicas: 0 (int8)")
    objs = builders.build_all(body(autoscaling={"minReplicas": 0}), opts(), parsed,
                              scale=plan, ability=blind)
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler"
               and o["metadata"]["name"] == "sentiment-int8")
    assert hpa["spec"]["minReplicas"] == 1
    assert not any(o["kind"] == stz.SCALED_OBJECT for o in objs)


def test_a_variant_that_may_idle_gets_a_scaled_object_instead_of_an_hpa() -> None:
    b = body({"targetInFlight": 4, "idleAfter": "2m"}, autoscaling={"minReplicas": 0})
    parsed = spec.parse_spec(b)
    plan = zero.plan(parsed, ABLE, {}, {"baseline": 100}, set(), {})
    objs = builders.build_all(b, opts(), parsed, scale=plan, ability=ABLE)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("HorizontalPodAutoscaler", "sentiment-baseline") in kinds
    assert ("HorizontalPodAutoscaler", "sentiment-int8") not in kinds
    so = next(o for o in objs if o["kind"] == stz.SCALED_OBJECT)
    assert so["apiVersion"] == stz.KEDA_API
    s = so["spec"]
    assert s["scaleTargetRef"]["name"] == "sentiment-int8"
    assert (s["minReplicaCount"], s["maxReplicaCount"], s["cooldownPeriod"]) == (0, 3, 120)
    triggers = {t["name"]: t for t in s["triggers"]}
    assert triggers["inflight"]["metadata"]["threshold"] == "4"
    assert 'variant="int8"' in triggers["inflight"]["metadata"]["query"]
    push = triggers["held"]
    assert push["type"] == "external-push"
    assert push["metadata"] == {"scalerAddress": "10.0.0.9:9090", "namespace": "ml",
                                "modelservice": "sentiment", "variant": "int8"}
    assert so["metadata"]["ownerReferences"][0]["uid"] == UID
    assert zero.PAUSED_REPLICAS not in (so["metadata"].get("annotations") or {})


def test_a_rollout_candidate_at_zero_is_brought_up_before_traffic_moves() -> None:
    b = body(autoscaling={"minReplicas": 0})
    b["spec"]["rollout"] = {"candidate": "int8"}
    parsed = spec.parse_spec(b)
    wake = zero.awake(parsed, {"phase": "Pending"}, None)
    assert wake == {"int8"}
    plan = zero.plan(parsed, ABLE, {}, {"baseline": 100}, wake, {})
    assert plan.keda == {"int8": 1}
    # once promoted (or rolled back) it returns to its idle policy
    assert zero.awake(parsed, {"phase": "Promoted"}, None) == set()


def test_a_brownout_variant_is_brought_up_while_overload_builds() -> None:
    b = body({"brownout": {"variant": "int8", "latencyObjectiveMs": 50}},
             autoscaling={"minReplicas": 0})
    parsed = spec.parse_spec(b)
    assert zero.awake(parsed, None, {"phase": "Inactive", "reason": "WithinObjective"}) == set()
    assert zero.awake(parsed, None, {"phase": "Inactive",
                                     "pressureSince": "2026-01-01T00:00:00Z"}) == {"int8"}
    assert zero.awake(parsed, None, {"phase": "Engaged"}) == {"int8"}


def test_keda_not_ready_or_activator_down_keeps_the_current_size() -> None:
    parsed = spec.parse_spec(body({"minReplicas": 0}))
    broken = {"status": {"conditions": [{"type": "Ready", "status": "False",
                                         "reason": "ScaledObjectCheckFailed",
                                         "message": "no scaler"}]}}
    live = {"baseline": zero.Live(broken, 0), "int8": zero.Live(None, 2)}
    plan = zero.plan(parsed, ABLE, live, {"baseline": 100, "int8": 0}, set(), {})
    # baseline serves and is at zero: KEDA paused at one pod, and the operator brings it back
    assert plan.paused == {"baseline": 1} and plan.restore == {"baseline": 1}
    assert "ScaledObjectCheckFailed" in plan.blind[0]
    down = zero.Ability(**{**ABLE.__dict__, "activator_ips": ()})
    plan = zero.plan(parsed, down, live, {"baseline": 100, "int8": 0}, set(), {})
    assert plan.paused == {"baseline": 1, "int8": 2}  # int8 keeps its 2 pods
    assert all("has no ready pod" in m for m in plan.blind)
    so = zero.build_scaled_object({"name": "x"}, parsed, "int8", "x", ABLE, 0, 2)
    assert so["metadata"]["annotations"][zero.PAUSED_REPLICAS] == "2"


# ---- routing at zero -----------------------------------------------------------------------

def pod(variant: str, ready: bool, serving: bool = True, deleting: bool = False
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{variant}", "labels": {
        builders.LABEL_VARIANT: variant, builders.LABEL_SERVING: str(serving).lower()}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_services_without_a_ready_pod_are_held_and_released_once_one_is_ready() -> None:
    parsed = spec.parse_spec(body({"minReplicas": 0}))
    services = {"baseline": "sentiment-baseline", "int8": "sentiment-int8"}
    weights = {"baseline": 100, "int8": 0}
    held = zero.services_at_zero(parsed, "sentiment", services, ["baseline", "int8"], weights,
                                 [], {"baseline": 0, "int8": 0})
    assert [(h.service, h.variant) for h in held] == [
        ("sentiment", None), ("sentiment-baseline", "baseline"), ("sentiment-int8", "int8")]
    # a draining pod does not count; a ready one releases its Services
    held = zero.services_at_zero(parsed, "sentiment", services, ["baseline", "int8"], weights,
                                 [pod("baseline", True, deleting=True)],
                                 {"baseline": 1, "int8": 0})
    assert len(held) == 3
    held = zero.services_at_zero(parsed, "sentiment", services, ["baseline", "int8"], weights,
                                 [pod("baseline", True)], {"baseline": 1, "int8": 0})
    assert [h.service for h in held] == ["sentiment-int8"]


def test_ports_stay_while_held_and_new_ones_take_the_lowest_free_port() -> None:
    lo = stz.PORT_RANGE[0]
    other = zero.Route(lo, "ml", "other", 80, "other", None)
    routes = zero.assign_ports([other], "ml", "sentiment", [("sentiment", 80, None),
                                                            ("sentiment", 9000, None)])
    assert [(r.service, r.service_port, r.port) for r in routes] == [
        ("other", 80, lo), ("sentiment", 80, lo + 1), ("sentiment", 9000, lo + 2)]
    again = zero.assign_ports(routes, "ml", "sentiment", [("sentiment", 9000, None)])
    assert [(r.service, r.port) for r in again] == [("other", lo), ("sentiment", lo + 2)]
    released = zero.assign_ports(again, "ml", "sentiment", [])
    assert released == [other]  # another ModelService's route is never touched
    cm = zero.build_routes("msv-system", again)
    assert cm["metadata"] == {"name": stz.ROUTES_CONFIGMAP, "namespace": "msv-system",
                              "labels": {"app.kubernetes.io/managed-by": builders.MANAGED_BY}}
    assert zero.read_routes(cm) == again
    assert json.loads(cm["data"][stz.ROUTES_KEY])["routes"][1] == {
        "port": lo + 2, "namespace": "ml", "service": "sentiment", "servicePort": 9000,
        "modelservice": "sentiment", "variant": None}


def test_ports_run_out_with_a_clear_error() -> None:
    full = [zero.Route(p, "ml", f"s{p}", 80, "x", None)
            for p in range(stz.PORT_RANGE[0], stz.PORT_RANGE[1] + 1)]
    with pytest.raises(zero.PortsExhausted):
        zero.assign_ports(full, "ml", "sentiment", [("sentiment", 80, None)])


def test_the_activator_slice_carries_the_service_name_and_the_allocated_ports() -> None:
    ms = body({"minReplicas": 0})
    meta = builders.object_metadata(ms, "sentiment-int8", "int8")
    s = zero.build_slice(meta, zero.HeldService("sentiment-int8", "int8"),
                         {"http": 20001, "grpc": 20002}, ABLE.activator_ips)
    assert s["metadata"]["name"] == "sentiment-int8" + stz.SLICE_SUFFIX
    labels = s["metadata"]["labels"]
    assert labels[zero.SERVICE_NAME_LABEL] == "sentiment-int8"
    assert labels[zero.MANAGED_BY_LABEL] == stz.SLICE_MANAGED_BY
    assert s["metadata"]["ownerReferences"][0]["uid"] == UID
    assert s["addressType"] == "IPv4"
    assert [e["addresses"] for e in s["endpoints"]] == [["10.1.0.4"], ["10.1.0.5"]]
    assert all(e["conditions"]["ready"] for e in s["endpoints"])
    assert {p["name"]: p["port"] for p in s["ports"]} == {"http": 20001, "grpc": 20002}
    assert zero.owns_slice(s)
    controllers = {"metadata": {"labels": {
        zero.MANAGED_BY_LABEL: "endpointslice-controller.k8s.io",
        builders.LABEL_MODELSERVICE: "sentiment"}}}
    assert not zero.owns_slice(controllers)


# ---- status --------------------------------------------------------------------------------

def test_serving_variants_all_at_zero_are_ready_scaled_to_zero() -> None:
    ms = body({"minReplicas": 0})
    idle = {"metadata": {"generation": 1}, "spec": {"replicas": 0},
            "status": {"observedGeneration": 1}}
    st = status.compute_status(ms, deployments={"baseline": idle, "int8": idle}, pods=[],
                               now="2026-01-01T00:00:00Z", observed_generation=1,
                               zero_variants=("baseline", "int8"))
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", stz.REASON_SCALED_TO_ZERO)
    assert all(v["scaledToZero"] is True and v["replicas"] == 0 for v in st["variants"])
    blind = next(c for c in st["conditions"] if c["type"] == "AutoscalingBlind")
    assert blind["status"] == "False"


def test_scale_to_zero_unable_to_act_is_autoscaling_blind() -> None:
    ms = body({"minReplicas": 0})
    up = {"metadata": {"generation": 1}, "spec": {"replicas": 1},
          "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                     "updatedReplicas": 1, "availableReplicas": 1}}
    st = status.compute_status(ms, deployments={"baseline": up, "int8": up}, pods=[],
                               now="2026-01-01T00:00:00Z", observed_generation=1,
                               zero_blind=("variant int8: the activator has no ready pod",))
    blind = next(c for c in st["conditions"] if c["type"] == "AutoscalingBlind")
    assert (blind["status"], blind["reason"]) == ("True", stz.REASON_SCALING_BLIND)
    assert "activator" in blind["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "AllVariantsReady"
    assert not any(v.get("scaledToZero") for v in st["variants"])
