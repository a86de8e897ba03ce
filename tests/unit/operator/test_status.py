"""status: the truth about a ModelService from its Deployments and Pods (pure)."""

from __future__ import annotations

from typing import Any

from msv_operator import status as s

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def ms(variants: list[str], traffic: list[tuple[str, int]] | None = None,
       prior: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"variants": [{"name": v} for v in variants]}
    if traffic is not None:
        spec["traffic"] = [{"variant": v, "weight": w} for v, w in traffic]
    body: dict[str, Any] = {"metadata": {"name": "sentiment", "namespace": "ml",
                                         "generation": generation}, "spec": spec}
    if prior is not None:
        body["status"] = prior
    return body


def deployment(replicas: int = 1, ready: int = 0, generation: int = 1, observed: int = 1,
               updated: int | None = None, conditions: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                   "availableReplicas": ready,
                   "updatedReplicas": replicas if updated is None else updated,
                   "conditions": conditions or []},
    }


def pod(variant: str, name: str = "p-1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {s.LABEL_VARIANT: variant}}, "status": status}


def cond(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in body["conditions"] if c["type"] == type_)


def test_ready_when_every_variant_has_ready_replicas() -> None:
    out = s.compute_status(
        ms(["baseline", "int8"], [("baseline", 75), ("int8", 25)]),
        deployments={"baseline": deployment(2, 2), "int8": deployment(1, 1)},
        pods=[], now=NOW, observed_generation=1)
    assert cond(out, "Ready")["status"] == "True"
    assert cond(out, "Progressing")["status"] == "False"
    assert cond(out, "Progressing")["reason"] == "RolloutComplete"
    assert cond(out, "Degraded")["status"] == "False"
    assert out["variants"] == [
        {"name": "baseline", "replicas": 2, "readyReplicas": 2, "weight": 75},
        {"name": "int8", "replicas": 1, "readyReplicas": 1, "weight": 25},
    ]
    assert out["observedGeneration"] == 1
    assert out["url"] == "http://sentiment.ml.svc.cluster.local"


def test_missing_deployment_is_progressing_not_ready() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                           observed_generation=1)
    assert cond(out, "Ready")["status"] == "False"
    assert cond(out, "Ready")["reason"] == "RollingOut"
    assert cond(out, "Progressing")["status"] == "True"
    assert "baseline" in cond(out, "Progressing")["message"]
    assert out["variants"][0] == {"name": "baseline", "replicas": 0, "readyReplicas": 0,
                                  "weight": 100}


def test_unschedulable_carries_the_scheduler_message() -> None:
    message = ("0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, "
               "3 Insufficient nvidia.com/gpu.")
    p = pod("baseline", conditions=[{"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": message}])
    out = s.compute_status(ms(["baseline"]), deployments={"baseline": deployment(1, 0)},
                           pods=[p], now=NOW, observed_generation=1)
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert message in ready["message"] and "variant baseline" in ready["message"]
    assert cond(out, "Degraded")["status"] == "True"
    assert cond(out, "Progressing")["status"] == "False"


def test_crash_looping_model_server_is_model_load_failed() -> None:
    p = pod("int8", containerStatuses=[{
        "name": "model-server", "ready": False,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "model dir is empty"}}}])
    out = s.compute_status(ms(["baseline", "int8"], [("baseline", 100)]),
                           deployments={"baseline": deployment(1, 1), "int8": deployment(1, 0)},
                           pods=[p], now=NOW, observed_generation=1)
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelLoadFailed")
    assert "CrashLoopBackOff" in ready["message"] and "variant int8" in ready["message"]


def test_failed_init_container_message_falls_back_to_last_termination() -> None:
    p = pod("baseline", initContainerStatuses=[{
        "name": "pull", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}])
    problem = s.pod_problem(p)
    assert problem == ("ModelLoadFailed",
                       "pod p-1: container pull: CrashLoopBackOff: exit code 3 (Error)")


def test_unschedulable_wins_over_model_load_failed() -> None:
    sched = pod("a", "p-a", conditions=[{"type": "PodScheduled", "status": "False",
                                          "reason": "Unschedulable", "message": "no GPU"}])
    crash = pod("b", "p-b", containerStatuses=[{"name": "c", "state": {
        "waiting": {"reason": "ImagePullBackOff"}}}])
    out = s.compute_status(ms(["a", "b"]), deployments={"a": deployment(), "b": deployment()},
                           pods=[crash, sched], now=NOW, observed_generation=1)
    assert cond(out, "Ready")["reason"] == "Unschedulable"


def test_rolling_update_in_flight_is_progressing_but_still_ready() -> None:
    out = s.compute_status(ms(["baseline"]),
                           deployments={"baseline": deployment(2, 2, generation=3, observed=2)},
                           pods=[], now=NOW, observed_generation=4)
    assert cond(out, "Ready")["status"] == "True"
    assert cond(out, "Progressing")["status"] == "True"
    assert cond(out, "Ready")["observedGeneration"] == 4


def test_progress_deadline_exceeded_is_degraded() -> None:
    dep = deployment(1, 0, conditions=[{"type": "Progressing", "status": "False",
                                        "reason": "ProgressDeadlineExceeded",
                                        "message": "ReplicaSet x has timed out progressing."}])
    out = s.compute_status(ms(["baseline"]), deployments={"baseline": dep}, pods=[], now=NOW,
                           observed_generation=1)
    assert cond(out, "Degraded")["reason"] == "ProgressDeadlineExceeded"


def test_invalid_spec_is_reported_with_the_message() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                           observed_generation=2,
                           invalid_spec="spec.traffic: weights sum to 90, expected 100")
    for type_, status in (("Ready", "False"), ("Progressing", "False"), ("Degraded", "True")):
        assert cond(out, type_)["status"] == status
        assert cond(out, type_)["reason"] == "InvalidSpec"
    assert "weights sum to 90" in cond(out, "Ready")["message"]
    assert out["observedGeneration"] == 2


def test_transition_time_is_kept_across_passes_and_moves_on_flip() -> None:
    first = s.compute_status(ms(["v"]), deployments={"v": deployment(1, 0)}, pods=[], now=NOW,
                             observed_generation=1)
    again = s.compute_status(ms(["v"], prior=first), deployments={"v": deployment(1, 0)},
                             pods=[], now=LATER, observed_generation=1)
    assert not s.changed(first, again), "an unchanged cluster must not cause a status write"
    ready = s.compute_status(ms(["v"], prior=first), deployments={"v": deployment(1, 1)},
                             pods=[], now=LATER, observed_generation=1)
    assert s.changed(first, ready)
    assert cond(ready, "Ready")["lastTransitionTime"] == LATER
    assert cond(ready, "Degraded")["lastTransitionTime"] == NOW


def test_changed_ignores_keys_owned_by_others() -> None:
    out = s.compute_status(ms(["v"]), deployments={}, pods=[], now=NOW, observed_generation=1)
    assert not s.changed({**out, "rollout": {"phase": "Progressing"}}, out)


def test_weights_default_to_first_variant_and_ignore_unknown_names() -> None:
    assert s.variant_weights(ms(["a", "b"])) == {"a": 100, "b": 0}
    assert s.variant_weights(ms(["a", "b"], [("a", 60), ("b", 40), ("zzz", 5)])) == {
        "a": 60, "b": 40}
    assert s.variant_weights({"spec": {"variants": "nonsense"}}) == {}


def test_zero_replicas_variant_counts_as_ready() -> None:
    out = s.compute_status(ms(["a", "b"], [("a", 100)]),
                           deployments={"a": deployment(1, 1), "b": deployment(0, 0)},
                           pods=[], now=NOW, observed_generation=1)
    assert cond(out, "Ready")["status"] == "True"
