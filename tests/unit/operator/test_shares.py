"""Honest shares (issue 22, item 5): what each variant receives, the representation policy as
a table, what the builders, the rollout machine and the status make of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gitops_status import argocd_health, kstatus
from msv_operator import builders as b
from msv_operator import rollout as ro
from msv_operator import shares
from msv_operator import status as s
from msv_operator.config import RuntimeImages
from msv_operator.spec import parse_spec

from msv_contract import api

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NOW = "2026-01-01T12:00:00Z"
READY = {"baseline": ro.Readiness(ready=1), "int8": ro.Readiness(ready=1)}


def body(**spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": {"uri": "s3://m/x", "framework": "transformers", "task": "text-classification"},
        "variants": [{"name": "baseline"}, {"name": "int8"}],
        "traffic": [{"variant": "baseline", "weight": 100}]}
    out.update(spec)
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": out}


def pod(variant: str, n: int, ready: bool = True, serving: bool = True,
        deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"sentiment-{variant}-{n}", "labels": {
        b.LABEL_MODELSERVICE: "sentiment", b.LABEL_VARIANT: variant,
        b.LABEL_SERVING: "true" if serving else "false"}}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


# ---- what is delivered -----------------------------------------------------------------------

def test_percents_sum_to_100_by_largest_remainder_and_are_0_for_no_pods() -> None:
    assert shares.percents({"a": 2, "b": 1}) == {"a": 67, "b": 33}
    assert shares.percents({"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert shares.percents({"a": 6, "b": 1}) == {"a": 86, "b": 14}
    assert shares.percents({"a": 0, "b": 3}) == {"a": 0, "b": 100}
    assert shares.percents({"a": 0, "b": 0}) == {"a": 0, "b": 0}


@pytest.mark.parametrize(("pods", "routed", "want"), [
    # no gateway: ready pods carrying the serving mark, over all of them
    ([pod("baseline", 1), pod("baseline", 2), pod("int8", 1)], False,
     {"baseline": 67, "int8": 33}),
    # a pod that is not ready, being deleted or not marked is no endpoint
    ([pod("baseline", 1), pod("baseline", 2, ready=False), pod("int8", 1),
      pod("int8", 2, deleting=True), pod("int8", 3, serving=False)], False,
     {"baseline": 50, "int8": 50}),
    # a marked pod receives requests whatever its weight says (a mark not yet moved)
    ([pod("baseline", 1), pod("baseline", 2), pod("baseline", 3), pod("int8", 1)], False,
     {"baseline": 75, "int8": 25}),
    # none serves: 0 for all
    ([pod("baseline", 1, ready=False), pod("int8", 1, serving=False)], False,
     {"baseline": 0, "int8": 0}),
    # a gateway routes by weight, whatever the pod count
    ([pod("baseline", 1), pod("baseline", 2), pod("int8", 1, serving=False)], True,
     {"baseline": 90, "int8": 10}),
    # ... but with no ready pod in any weighted variant nothing is delivered
    ([pod("baseline", 1, ready=False), pod("int8", 1, ready=False)], True,
     {"baseline": 0, "int8": 0}),
])
def test_delivered_shares(pods: list[dict[str, Any]], routed: bool,
                          want: dict[str, int]) -> None:
    got = shares.delivered({"baseline": 90, "int8": 10}, pods, routed)
    assert got == want
    assert sum(got.values()) in (0, 100)


def test_shares_text_says_when_nothing_serves() -> None:
    assert shares.text({"baseline": 67, "int8": 33}) == "baseline=67,int8=33"
    assert shares.text({"baseline": 0, "int8": 0}) == \
        "baseline=0,int8=0 (no ready endpoints)"
    assert shares.text({}) == ""


# ---- the policy: a table of weights / floors / bounds -> decision ----------------------------

@pytest.mark.parametrize(("weights", "floors", "bounds", "pods", "representable"), [
    # within ±5 points as it is: nothing changes
    ({"a": 75, "b": 25}, {"a": 3, "b": 1}, {"a": 4, "b": 4}, {"a": 3, "b": 1}, True),
    ({"a": 50, "b": 50}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, True),
    ({"a": 100}, {"a": 2}, {"a": 2}, {"a": 2}, True),
    ({"a": 95, "b": 5}, {"a": 10, "b": 1}, {"a": 10, "b": 10}, {"a": 10, "b": 1}, True),
    # the fewest extra pods, to the variant furthest below its weight
    ({"a": 90, "b": 10}, {"a": 5, "b": 1}, {"a": 6, "b": 6}, {"a": 6, "b": 1}, True),
    ({"a": 90, "b": 10}, {"a": 2, "b": 1}, {"a": 6, "b": 6}, {"a": 6, "b": 1}, True),
    ({"a": 75, "b": 25}, {"a": 2, "b": 1}, {"a": 3, "b": 3}, {"a": 3, "b": 1}, True),
    ({"a": 60, "b": 40}, {"a": 1, "b": 1}, {"a": 4, "b": 4}, {"a": 3, "b": 2}, True),
    ({"a": 60, "b": 40}, {"a": 4, "b": 1}, {"a": 4, "b": 4}, {"a": 4, "b": 3}, True),
    ({"a": 50, "b": 25, "c": 25}, {"a": 1, "b": 1, "c": 1}, {"a": 9, "b": 9, "c": 9},
     {"a": 2, "b": 1, "c": 1}, True),
    # the bounds do not allow it: the floors stay, not representable
    ({"a": 90, "b": 10}, {"a": 2, "b": 1}, {"a": 2, "b": 2}, {"a": 2, "b": 1}, False),
    ({"a": 90, "b": 10}, {"a": 1, "b": 1}, {"a": 4, "b": 4}, {"a": 1, "b": 1}, False),
    ({"a": 60, "b": 40}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, False),
    # a fixed count that cannot serve its weight (0 pods for 20%)
    ({"a": 80, "b": 20}, {"a": 4, "b": 0}, {"a": 9, "b": 0}, {"a": 4, "b": 0}, False),
    # variants without weight take no part
    ({"a": 100, "b": 0}, {"a": 1}, {"a": 1}, {"a": 1}, True),
])
def test_represent(weights: dict[str, int], floors: dict[str, int], bounds: dict[str, int],
                   pods: dict[str, int], representable: bool) -> None:
    split = shares.represent(weights, floors, bounds)
    assert (dict(split.pods), split.representable) == (pods, representable)
    if representable:
        got = split.shares()
        assert all(abs(got[v] - w) <= shares.TOLERANCE + 1 for v, w in split.weights.items())


@pytest.mark.parametrize(("spec", "weight", "pods", "representable", "needed"), [
    # spec.replicas: each weighted variant its part (at least 1), at most spec.replicas
    ({"replicas": 2}, 10, {"baseline": 2, "int8": 1}, False, 6),
    ({"replicas": 1}, 10, {"baseline": 1, "int8": 1}, False, 6),
    ({"replicas": 1}, 50, {"baseline": 1, "int8": 1}, True, None),
    ({"replicas": 2}, 25, {"baseline": 2, "int8": 1}, False, 3),
    ({"replicas": 3}, 25, {"baseline": 3, "int8": 1}, True, None),  # scaled up from 2
    ({"replicas": 6}, 10, {"baseline": 6, "int8": 1}, True, None),  # scaled up from 5
    ({"replicas": 10}, 10, {"baseline": 9, "int8": 1}, True, None),
    ({"replicas": 4}, 100, {"int8": 4}, True, None),
    ({"replicas": 3}, 90, {"baseline": 1, "int8": 3}, False, 6),
    # explicit variant replicas are the user's: neither raised nor lowered
    ({"replicas": 10, "variants": [{"name": "baseline", "replicas": 3}, {"name": "int8"}]},
     10, {"baseline": 3, "int8": 1}, False, None),
    # autoscaling: from the HPAs' minReplicas, at most maxReplicas
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, 10,
     {"baseline": 1, "int8": 1}, False, 6),
    ({"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, 25,
     {"baseline": 3, "int8": 1}, True, None),
    ({"autoscaling": {"minReplicas": 2, "maxReplicas": 8}}, 10,
     {"baseline": 2, "int8": 2}, False, 12),
])
def test_plan_from_the_spec(spec: dict[str, Any], weight: int, pods: dict[str, int],
                            representable: bool, needed: int | None) -> None:
    p = shares.plan(parse_spec(body(**spec)), {"baseline": 100 - weight, "int8": weight})
    assert dict(p.split.pods) == pods
    assert (p.split.representable, p.needed) == (representable, needed)


def test_explain_names_the_weight_the_share_and_what_to_do() -> None:
    p = shares.plan(parse_spec(body(replicas=2)), {"baseline": 90, "int8": 10})
    text = shares.explain(p, would=True)
    assert "int8 at 10% would get 33% (1 of 3 pods)" in text
    assert "spec.replicas=2" in text and "±5 points" in text
    assert "add a gateway (spec.gateway)" in text and "raise spec.replicas to 6" in text
    auto = shares.plan(parse_spec(body(autoscaling={"maxReplicas": 4})),
                       {"baseline": 90, "int8": 10})
    assert "int8 at 10% gets 50% (1 of 2 pods)" in shares.explain(auto)
    assert "raise spec.autoscaling.maxReplicas to 6" in shares.explain(auto)
    fixed = shares.plan(parse_spec(body(variants=[{"name": "baseline", "replicas": 3},
                                                  {"name": "int8"}])),
                        {"baseline": 90, "int8": 10})
    assert "change spec.variants[].replicas" in shares.explain(fixed)


# ---- builders: the replica split follows the plan without a gateway --------------------------

OPTS = b.BuildOptions({"torch": RuntimeImages("ms:cpu", None)}, service_monitor=False,
                      gateway_api=True)


def replicas_of(objs: list[dict[str, Any]], kind: str, key: str) -> dict[str, int]:
    return {o["metadata"]["labels"][b.LABEL_VARIANT]: o["spec"][key]
            for o in objs if o["kind"] == kind}


def test_without_a_gateway_the_stable_side_gets_the_extra_pods() -> None:
    ms = body(replicas=6, rollout={"candidate": "int8"})
    spec = parse_spec(ms)
    step = {"baseline": 90, "int8": 10}
    unrouted = b.build_all(ms, OPTS, spec, b.Serving(step))
    assert replicas_of(unrouted, "Deployment", "replicas") == {"baseline": 6, "int8": 1}
    routed = b.build_all(ms, OPTS, spec, b.Serving(step, routed=True))
    assert replicas_of(routed, "Deployment", "replicas") == {"baseline": 5, "int8": 1}
    # not representable within spec.replicas: the plain split, no pods spent for nothing
    small = body(replicas=2)
    assert b.variant_replicas(parse_spec(small), step) == {"baseline": 2, "int8": 1}


def test_with_autoscaling_the_hpa_min_replicas_are_raised_never_above_max() -> None:
    ms = body(autoscaling={"minReplicas": 1, "maxReplicas": 4})
    spec = parse_spec(ms)
    objs = b.build_all(ms, OPTS, spec, b.Serving({"baseline": 75, "int8": 25}))
    assert replicas_of(objs, "HorizontalPodAutoscaler", "minReplicas") == {
        "baseline": 3, "int8": 1}
    assert all(o["spec"]["maxReplicas"] == 4 for o in objs
               if o["kind"] == "HorizontalPodAutoscaler")
    assert "replicas" not in next(o for o in objs if o["kind"] == "Deployment")["spec"]
    routed = b.build_all(ms, OPTS, spec, b.Serving({"baseline": 75, "int8": 25}, routed=True))
    assert replicas_of(routed, "HorizontalPodAutoscaler", "minReplicas") == {
        "baseline": 1, "int8": 1}
    beyond = b.build_all(ms, OPTS, spec, b.Serving({"baseline": 90, "int8": 10}))
    assert replicas_of(beyond, "HorizontalPodAutoscaler", "minReplicas") == {
        "baseline": 1, "int8": 1}


# ---- the rollout machine: a step the replicas cannot represent holds --------------------------

def rollout_spec(replicas: int, steps: list[int]) -> Any:
    return parse_spec(body(replicas=replicas, rollout={
        "candidate": "int8", "steps": steps, "stepDuration": "1m", "minRequests": 50,
        "analysis": {"minAgreement": 0, "mirrorPercent": 0, "failureLimit": 0}}))


def good(requests: float = 100, p95: float = 10.0) -> ro.Sample:
    return ro.Sample(
        variants={"baseline": ro.VariantMetrics(p95_ms=10.0, rps=5.0, error_rate=0.0),
                  "int8": ro.VariantMetrics(p95_ms=p95, rps=1.0, error_rate=0.0)},
        step_requests={"int8": requests})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_first_step_the_replicas_cannot_represent_holds_before_it() -> None:
    spec = rollout_spec(2, [10, 100])
    d = ro.advance(spec, None, READY, None, {}, at(0))
    st = d.status
    assert st is not None
    assert (st["phase"], st["reason"], st["step"]) == (ro.PAUSED, ro.SHARE_NOT_REPRESENTABLE, 0)
    assert "holding before step 1/2 (candidate int8 at 10%)" in st["message"]
    assert "would get 33% (1 of 3 pods)" in st["message"]
    assert "raise spec.replicas to 6" in st["message"]
    # never claimed: the weights stay the spec's, the condition says why
    assert d.weights == {"baseline": 100, "int8": 0}
    assert ("Warning", "RolloutPaused", st["message"]) in d.events
    assert s.rollout_condition(st) == ("False", ro.SHARE_NOT_REPRESENTABLE, st["message"])
    assert d.requeue_after == 15
    assert ro.analysis_due(spec, st, at(30)) is None  # the candidate serves nothing
    # held pass after pass (no new Event), then entered once replicas allow it
    again = ro.advance(spec, st, READY, None, {}, at(15))
    assert again.status is not None and again.status["reason"] == ro.SHARE_NOT_REPRESENTABLE
    assert again.events == [] and again.weights == {"baseline": 100, "int8": 0}
    entered = ro.advance(rollout_spec(6, [10, 100]), st, READY, None, {}, at(30))
    assert entered.status is not None
    assert (entered.status["phase"], entered.status["step"]) == (ro.PROGRESSING, 1)
    assert entered.weights == {"baseline": 90, "int8": 10}
    # with a gateway the same step is exact: entered at once
    routed = ro.advance(spec, None, READY, None, {}, at(0), routed=True)
    assert routed.status is not None and routed.status["step"] == 1


def test_a_later_step_holds_at_the_current_one_keeps_analysing_and_resumes() -> None:
    spec = rollout_spec(3, [25, 90, 100])  # 25%: 3+1 pods; 90%: 3 pods cannot give 90
    st = ro.advance(spec, None, READY, None, {}, at(0)).status
    assert st is not None and st["step"] == 1
    d = ro.advance(spec, st, READY, good(), {}, at(60))
    st = d.status
    assert st is not None
    assert (st["phase"], st["reason"], st["step"]) == (ro.PAUSED, ro.SHARE_NOT_REPRESENTABLE, 1)
    assert "holding before step 2/3 (candidate int8 at 90%)" in st["message"]
    assert d.weights == {"baseline": 75, "int8": 25}  # the step it is at, not the next
    assert "RolloutStep" not in [r for _, r, _ in d.events]
    # the held step is still analysed: a failing gate rolls back (failureLimit 0)
    assert ro.analysis_due(spec, st, at(80)) is not None
    failed = ro.advance(spec, st, READY, good(p95=50.0), {}, at(80))
    assert failed.status is not None and failed.status["phase"] == ro.ROLLED_BACK
    # a passing one keeps the hold and its message
    kept = ro.advance(spec, st, READY, good(), {}, at(80))
    assert kept.status is not None and kept.status["reason"] == ro.SHARE_NOT_REPRESENTABLE
    assert kept.status["message"] == st["message"] and kept.events == []
    # a gateway routing the ModelService (or more replicas) lets it move on
    moved = ro.advance(spec, st, READY, good(), {}, at(80), routed=True)
    assert moved.status is not None
    assert (moved.status["phase"], moved.status["step"]) == (ro.PROGRESSING, 2)
    assert moved.weights == {"baseline": 10, "int8": 90}


def test_pause_and_resume_by_the_user_pass_through_the_hold() -> None:
    spec = rollout_spec(2, [10, 100])
    st = ro.advance(spec, None, READY, None, {}, at(0)).status
    paused = ro.advance(spec, st, READY, None, {ro.ANNOTATION_PAUSED: "true"}, at(5)).status
    assert paused is not None and paused["reason"] == ro.PAUSED_BY_USER
    resumed = ro.advance(spec, paused, READY, None, {}, at(10)).status
    assert resumed is not None
    assert (resumed["phase"], resumed["reason"]) == (ro.PAUSED, ro.SHARE_NOT_REPRESENTABLE)


# ---- the status: share beside weight, the condition, kstatus ---------------------------------

def dep(replicas: int) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                       "availableReplicas": replicas, "updatedReplicas": replicas}}


def traffic_90_10(**spec: Any) -> dict[str, Any]:
    return body(traffic=[{"variant": "baseline", "weight": 90},
                         {"variant": "int8", "weight": 10}], **spec)


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_status_shows_the_share_beside_the_weight_and_says_why_it_differs() -> None:
    ms = traffic_90_10(replicas=2)
    pods = [pod("baseline", 1), pod("baseline", 2), pod("int8", 1)]
    st = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)}, pods=pods,
                          now=NOW, observed_generation=1)
    assert [(v["name"], v["weight"], v["share"]) for v in st["variants"]] == [
        ("baseline", 90, 67), ("int8", 10, 33)]
    assert st["traffic"] == "baseline=90,int8=10" and st["shares"] == "baseline=67,int8=33"
    progressing = cond(st, "Progressing")
    assert (progressing["status"], progressing["reason"]) == (
        "False", shares.SHARE_NOT_REPRESENTABLE)
    assert progressing["message"].startswith("traffic baseline=90,int8=10: ")
    assert "int8 at 10% gets 33%" in progressing["message"]
    assert "raise spec.replicas to 6" in progressing["message"]
    # information only: the pods serve, kstatus says Current, Argo CD Healthy
    assert cond(st, "Ready")["status"] == "True"
    assert (cond(st, "Reconciling")["status"], cond(st, "Stalled")["status"]) == (
        "False", "False")
    ms["status"] = st
    assert kstatus([ms])[0]["status"] == "Current"
    assert argocd_health(ms)["status"] == "Healthy"
    # unchanged cluster: unchanged status (no write)
    again = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)}, pods=pods,
                             now="2026-01-01T12:05:00Z", observed_generation=1)
    assert not s.changed(st, again)
    # a pod going unready moves the share, and the status is written
    fewer = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)},
                             pods=[*pods[:1], pod("baseline", 2, ready=False), pods[2]],
                             now="2026-01-01T12:05:00Z", observed_generation=1)
    assert fewer["shares"] == "baseline=50,int8=50" and s.changed(st, fewer)


def test_routed_shares_are_the_weights_and_nothing_is_unrepresentable() -> None:
    ms = traffic_90_10(replicas=2)
    pods = [pod("baseline", 1), pod("baseline", 2), pod("int8", 1, serving=False)]
    st = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)}, pods=pods,
                          now=NOW, observed_generation=1, routed=True)
    assert st["shares"] == "baseline=90,int8=10"
    assert cond(st, "Progressing")["reason"] == "RolloutComplete"


def test_no_ready_endpoints_is_said_and_pods_still_coming_win_over_the_share() -> None:
    ms = traffic_90_10(replicas=2)
    st = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)},
                          pods=[pod("baseline", 1, ready=False)], now=NOW,
                          observed_generation=1)
    assert st["shares"] == "baseline=0,int8=0 (no ready endpoints)"
    assert [v["share"] for v in st["variants"]] == [0, 0]
    rolling = {"metadata": {"generation": 1}, "spec": {"replicas": 2},
               "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 1,
                          "availableReplicas": 1, "updatedReplicas": 2}}
    pending = s.compute_status(ms, deployments={"baseline": rolling, "int8": dep(1)},
                               pods=[], now=NOW, observed_generation=1)
    assert cond(pending, "Progressing")["reason"] == "RollingOut"


def test_a_held_rollout_is_the_progressing_message() -> None:
    ms = body(replicas=2, rollout={"candidate": "int8", "steps": [10, 100]})
    d = ro.advance(parse_spec(ms), None, READY, None, {}, at(0))
    st = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)},
                          pods=[pod("baseline", 1), pod("baseline", 2),
                                pod("int8", 1, serving=False)],
                          now=NOW, observed_generation=1, weights=d.weights, rollout=d.status)
    progressing = cond(st, "Progressing")
    assert progressing["reason"] == shares.SHARE_NOT_REPRESENTABLE
    assert progressing["message"].startswith("rollout holding before step 1/2")
    assert cond(st, "Rollout")["reason"] == shares.SHARE_NOT_REPRESENTABLE
    assert st["shares"] == "baseline=100,int8=0" and st["traffic"] == "baseline=100,int8=0"


# ---- kubectl get msv: the SHARES column names what compute_status writes ----------------------

def crd() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[3]
    return dict(yaml.safe_load((root / "crds" / f"{api.CRD_NAME}.yaml").read_text()))


def test_the_shares_column_stands_beside_traffic_and_names_a_written_field() -> None:
    version = crd()["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert names.index("Shares") == names.index("Traffic") + 1
    column = columns[names.index("Shares")]
    assert "priority" not in column  # shown by a plain `kubectl get msv`
    ms = traffic_90_10(replicas=2)
    written = s.compute_status(ms, deployments={"baseline": dep(2), "int8": dep(1)},
                               pods=[pod("baseline", 1), pod("baseline", 2), pod("int8", 1)],
                               now=NOW, observed_generation=1)
    # every column reading a plain .status.<key> names a key compute_status writes
    for c in columns:
        path = c["jsonPath"]
        key = path.removeprefix(".status.").split(".")[0]
        if path.startswith(".status.") and "[" not in path and key not in ("rollout",
                                                                          "brownout"):
            assert key in written and key in s.OWNED_KEYS, c
    assert column["jsonPath"] == ".status.shares" and written["shares"] == "baseline=67,int8=33"
    # ... and the schema declares the fields (a structural schema would prune them otherwise)
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert schema["shares"]["type"] == "string"
    assert schema["variants"]["items"]["properties"]["share"]["type"] == "integer"
