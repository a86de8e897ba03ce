"""The pass's pure helpers: when an object must be re-applied (apply), what may be pruned
(owned), which transitions become Events (events), what the caches keep (cache)."""

from __future__ import annotations

import json
from typing import Any

from msv_operator import apply, builders, cache, conditions, events, owned

LABEL_SERVING = builders.LABEL_SERVING

UID = "0b6f6a2e-0000-4000-8000-000000000001"


def desired() -> dict[str, Any]:
    return apply.with_hash({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "s-baseline", "namespace": "ml", "labels": {"a": "b"},
                     "ownerReferences": [{"kind": "ModelService", "uid": UID,
                                          "controller": True}]},
        "spec": {"template": {"spec": {
            "securityContext": {},
            "containers": [{"name": "m", "image": "img:1",
                            "resources": {"requests": {"memory": "1024Mi", "cpu": "0.5"}}}]}}},
    })


def live_from(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: defaults added, quantities canonicalised, empties dropped."""
    live = cache.plain(obj)
    live["metadata"]["uid"] = "x"
    live["metadata"]["resourceVersion"] = "7"
    pod = live["spec"]["template"]["spec"]
    pod.pop("securityContext")
    pod["restartPolicy"] = "Always"
    c = pod["containers"][0]
    c["resources"]["requests"] = {"memory": "1Gi", "cpu": "500m"}
    c["terminationMessagePath"] = "/dev/termination-log"
    live["status"] = {"replicas": 1}
    return live


def test_unchanged_live_object_is_not_reapplied() -> None:
    d = desired()
    assert not apply.needs_apply(d, live_from(d))


def test_missing_object_or_other_hash_is_reapplied() -> None:
    d = desired()
    assert apply.needs_apply(d, None)
    live = live_from(d)
    live["metadata"]["annotations"][apply.HASH_ANNOTATION] = "old"
    assert apply.needs_apply(d, live)


def test_hand_edit_of_an_owned_field_is_repaired() -> None:
    d = desired()
    live = live_from(d)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    assert apply.needs_apply(d, live)
    live = live_from(d)
    del live["metadata"]["labels"]["a"]
    assert apply.needs_apply(d, live)


def test_hash_ignores_its_own_annotation_and_is_stable() -> None:
    a, b = desired(), desired()
    assert a["metadata"]["annotations"][apply.HASH_ANNOTATION] == \
        b["metadata"]["annotations"][apply.HASH_ANNOTATION]


def test_contains_compares_quantities_by_value() -> None:
    assert apply.contains({"cpu": "1000m"}, {"cpu": "1"})
    assert apply.contains({"memory": "1Gi"}, {"memory": "1024Mi"})
    assert not apply.contains({"memory": "1Gi"}, {"memory": "1000Mi"})
    assert not apply.contains({"ports": [1, 2]}, {"ports": [1]})


def test_only_controller_references_to_this_uid_count_as_owned() -> None:
    mine = {"metadata": {"ownerReferences": [{"kind": "ModelService", "uid": UID,
                                              "controller": True}]}}
    other = {"metadata": {"ownerReferences": [{"kind": "ModelService", "uid": "other",
                                               "controller": True}]}}
    not_controller = {"metadata": {"ownerReferences": [{"kind": "ModelService", "uid": UID}]}}
    assert owned.owned_by(mine, UID)
    assert not owned.owned_by(other, UID)
    assert not owned.owned_by(not_controller, UID)
    assert not owned.owned_by({"metadata": {}}, UID)


def t(status: str, reason: str, prev: str | None, prev_reason: str | None,
      type_: str = "Ready") -> conditions.Transition:
    return conditions.Transition(type=type_, status=status, reason=reason, message="m",
                                 previous_status=prev, previous_reason=prev_reason)


def test_events_only_for_meaningful_transitions() -> None:
    assert events.event_for(t("True", "AllVariantsReady", "False", "RollingOut")) == (
        "Normal", "Ready", "m")
    assert events.event_for(t("False", "Unschedulable", "False", "RollingOut")) == (
        "Warning", "Unschedulable", "m")
    assert events.event_for(t("False", "RollingOut", None, None)) is None
    assert events.event_for(t("False", "AsExpected", "True", "Unschedulable",
                                 "Degraded")) == ("Normal", "Recovered", "m")
    assert events.event_for(t("True", "RollingOut", "False", "RolloutComplete",
                                 "Progressing")) is None


def test_pod_summary_ignores_fields_the_status_does_not_read() -> None:
    pod = {"metadata": {"name": "p", "labels": {}, "resourceVersion": "1"},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "message": "no GPU"}]}}
    moved = cache.plain(pod)
    moved["metadata"]["resourceVersion"] = "2"
    moved["status"]["podIP"] = "10.0.0.1"
    assert cache.pod_summary(pod) == cache.pod_summary(moved)
    moved["status"]["conditions"][0]["message"] = "still no GPU"
    assert cache.pod_summary(pod) != cache.pod_summary(moved)
    # A serving label set by hand (or the template's, on a new pod) wakes a pass too.
    relabelled = cache.plain(pod)
    relabelled["metadata"]["labels"]["serving.modelservice.dev/serving"] = "true"
    assert cache.pod_summary(pod) != cache.pod_summary(relabelled)
    annotated = cache.plain(pod)
    annotated["metadata"]["annotations"] = {builders.MIRROR_ANNOTATION: "{}"}
    assert cache.pod_summary(pod) != cache.pod_summary(annotated)
    relabelled["metadata"]["labels"]["other"] = "x"
    assert cache.pod_summary(relabelled) == cache.pod_summary(
        {**relabelled, "metadata": {**relabelled["metadata"], "labels": {
            "serving.modelservice.dev/serving": "true"}}})


def _deployment(replicas: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "m-baseline", "namespace": "ns"}, "spec": spec}


def test_replicas_are_handed_over_only_when_an_hpa_is_about_to_take_them() -> None:
    live = {("Deployment", "m-baseline"): _deployment(3)}
    handover = apply.replicas_handover(_deployment(None), live)
    assert handover == {"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "m-baseline", "namespace": "ns"},
                        "spec": {"replicas": 3}}
    # fixed replicas: the operator sends them itself
    assert apply.replicas_handover(_deployment(2), live) is None
    # the HPA exists already: it owns the count
    with_hpa = {**live, ("HorizontalPodAutoscaler", "m-baseline"): {}}
    assert apply.replicas_handover(_deployment(None), with_hpa) is None
    # nothing runs yet: nothing to keep
    assert apply.replicas_handover(_deployment(None), {}) is None


def ms_at(generation: int, observed: int | None) -> dict[str, Any]:
    status = {} if observed is None else {"observedGeneration": observed}
    return {"metadata": {"name": "s", "generation": generation}, "status": status}


def test_a_hand_edit_is_a_repair_naming_the_field() -> None:
    d = desired()
    live = live_from(d)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    assert apply.drift(live, d) == "spec.template.spec.containers[0].image"
    assert apply.repair_of(d, live, ms_at(2, 2)) == (
        "restored Deployment s-baseline: spec.template.spec.containers[0].image was changed "
        "by hand")
    # A new desired state (other hash) is an update, not a repair.
    live["metadata"]["annotations"][apply.HASH_ANNOTATION] = "old"
    assert apply.repair_of(d, live, ms_at(3, 2)) is None
    assert apply.repair_of(d, live_from(d), ms_at(2, 2)) is None


def test_a_missing_object_is_a_repair_only_once_its_generation_was_reported() -> None:
    d = desired()
    assert apply.repair_of(d, None, ms_at(2, 2)) == (
        "re-created Deployment s-baseline: it was deleted")
    assert apply.repair_of(d, None, ms_at(1, None)) is None  # a new ModelService
    assert apply.repair_of(d, None, ms_at(3, 2)) is None  # a new variant, say


def test_stalled_and_fields_ignored_flips_are_events() -> None:
    assert events.event_for(t("True", "InvalidSpec", "False", "AsExpected", "Stalled")) == (
        "Warning", "Stalled", "InvalidSpec: m")
    assert events.event_for(t("False", "AsExpected", "True", "InvalidSpec", "Stalled")) == (
        "Normal", "StallCleared", "m")
    assert events.event_for(t("False", "AsExpected", None, None, "Stalled")) is None
    assert events.event_for(t("True", "GatewayAPIMissing", "False", "AllFieldsActing",
                                 "FieldsIgnored")) == (
        "Warning", "FieldsIgnored", "GatewayAPIMissing: m")
    assert events.event_for(t("False", "AllFieldsActing", "True", "GatewayAPIMissing",
                                 "FieldsIgnored")) == ("Normal", "FieldsActing", "m")
    # one cause, one Event: Ready and Stalled turning for the same reason post Ready's
    both = [t("False", "Unschedulable", None, None),
            t("True", "Unschedulable", None, None, "Stalled")]
    assert events.for_pass(both, []) == [
        ("Warning", "Unschedulable", "m")]
    # a Stalled flip whose cause Ready had already reported is still an Event
    assert events.for_pass(both[1:], []) == [
        ("Warning", "Stalled", "Unschedulable: m")]
    assert events.for_pass([], ["re-created Service s: it was deleted"]) == [
        ("Normal", "Repaired", "re-created Service s: it was deleted")]


def _pod(name: str, variant: str, serving: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {
        "serving.modelservice.dev/variant": variant, "serving.modelservice.dev/serving": serving}}}


MARKS = {"baseline": builders.PodMarks("true"), "int8": builders.PodMarks("false")}


def test_pods_of_a_variant_taken_out_of_traffic_leave_the_service_at_once() -> None:
    pods = [_pod("b-1", "baseline", "true"), _pod("i-2", "int8", "true"),
            _pod("i-1", "int8", "true"), _pod("i-3", "int8", "false")]
    assert apply.pods_to_mark(MARKS, pods) == [
        ("i-1", {LABEL_SERVING: "false"}, {}), ("i-2", {LABEL_SERVING: "false"}, {})]
    # A variant the spec no longer has is not marked (its Deployment is being pruned).
    assert apply.pods_to_mark({"baseline": MARKS["baseline"]}, pods) == []


def test_pods_of_a_variant_given_traffic_join_the_service_at_once_unless_deleted() -> None:
    leaving = _pod("i-2", "int8", "false")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-30T17:00:00Z"
    leaving = cache.trim_pod(leaving)  # what the operator's pod cache holds
    pods = [_pod("b-1", "baseline", "true"), _pod("i-1", "int8", "false"), leaving,
            _pod("x-1", "other", "false")]
    marks = {**MARKS, "int8": builders.PodMarks("true")}
    assert apply.pods_to_mark(marks, pods) == [("i-1", {LABEL_SERVING: "true"}, {})]


def test_stable_pods_start_and_stop_mirroring_by_annotation() -> None:
    mirroring = {**MARKS, "baseline": builders.PodMarks("true", '{"url":"u"}')}
    pods = [cache.trim_pod(_pod("b-1", "baseline", "true")), _pod("i-1", "int8", "false")]
    assert apply.pods_to_mark(mirroring, pods) == [
        ("b-1", {}, {builders.MIRROR_ANNOTATION: '{"url":"u"}'})]
    pods[0]["metadata"]["annotations"] = {builders.MIRROR_ANNOTATION: '{"url":"u"}', "x": "y"}
    # the operator's pod cache keeps the mirror annotation (and nothing else of them)
    assert cache.trim_pod(pods[0])["metadata"]["annotations"] == {
        builders.MIRROR_ANNOTATION: '{"url":"u"}'}
    assert apply.pods_to_mark(mirroring, pods) == []
    # the rollout ended: the annotation is removed (a merge patch with null)
    assert apply.pods_to_mark(MARKS, pods) == [
        ("b-1", {}, {builders.MIRROR_ANNOTATION: None})]


def test_packed_cache_entries_round_trip_as_fresh_copies() -> None:
    obj = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "m-baseline", "annotations": {apply.HASH_ANNOTATION: "x"}},
           "spec": {"replicas": 2, "template": {"spec": {"containers": [
               {"name": "s", "env": [{"name": f"MSV_SETTING_{i}", "value": "on"}
                                     for i in range(30)]}]}}}}
    packed = cache.pack(obj)
    assert isinstance(packed, bytes) and len(packed) < len(json.dumps(obj))
    first, second = cache.unpack(packed), cache.unpack(packed)
    assert first == obj and second == obj
    first["spec"]["replicas"] = 5  # a pass may mutate its copy; the cache keeps its own
    assert cache.unpack(packed)["spec"]["replicas"] == 2
    assert cache.unpack(obj) == obj  # a plain mapping is taken as it is
