"""status: the truth about a ModelService from its Deployments and Pods (pure)."""

from __future__ import annotations

from typing import Any

import pytest
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
        pods=[], now=NOW, observed_generation=1, routed=True)
    assert cond(out, "Ready")["status"] == "True"
    assert cond(out, "Progressing")["status"] == "False"
    assert cond(out, "Progressing")["reason"] == "RolloutComplete"
    assert cond(out, "Degraded")["status"] == "False"
    assert out["variants"] == [
        {"name": "baseline", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2,
         "weight": 75, "share": 0},
        {"name": "int8", "replicas": 1, "readyReplicas": 1, "desiredReplicas": 1, "weight": 25,
         "share": 0},
    ]
    assert out["shares"] == "baseline=0,int8=0 (no ready endpoints)"  # pods=[]: none
    assert out["replicaCounts"] == "baseline=2/2,int8=1/1"
    assert "AutoscalingBlind" not in [c["type"] for c in out["conditions"]]
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
                                  "desiredReplicas": 0, "weight": 100, "share": 0}


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


# Pods shaped like the kubelet and scheduler report them (kubectl get pod -o json) --------
POD = "sentiment-int8-7d9c8f6b5-x2k4q"
IMAGE = "modelservice/model-server:1.0"
LOAD_ERROR = ("model 'sentiment' (variant int8, framework transformers) failed to load from "
              "/mnt/models: ModelLoadError: /mnt/models/config.json: missing")


def pod_condition(type_: str, status: str, reason: str | None = None,
                  message: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                           "lastTransitionTime": "2026-01-01T00:00:01Z"}
    if reason is not None:
        out.update(reason=reason, message=message)
    return out


def real_pod(variant: str = "int8", *, phase: str = "Running",
             conditions: list[dict[str, Any]] | None = None,
             init: list[dict[str, Any]] | None = None,
             containers: list[dict[str, Any]] | None = None,
             volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase, "qosClass": "Burstable",
        "conditions": conditions if conditions is not None else [
            pod_condition("PodReadyToStartContainers", "True"),
            pod_condition("Initialized", "True"),
            pod_condition("Ready", "False", "ContainersNotReady",
                          "containers with unready status: [model-server]"),
            pod_condition("ContainersReady", "False", "ContainersNotReady",
                          "containers with unready status: [model-server]"),
            pod_condition("PodScheduled", "True")],
    }
    if phase != "Pending" or containers is not None:
        status.update(hostIP="10.0.0.5", hostIPs=[{"ip": "10.0.0.5"}], podIP="10.244.1.7",
                      podIPs=[{"ip": "10.244.1.7"}], startTime="2026-01-01T00:00:01Z")
    if init is not None:
        status["initContainerStatuses"] = init
    if containers is not None:
        status["containerStatuses"] = containers
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": "ml", "uid": "6f1c",
                     "labels": {s.LABEL_VARIANT: variant, "pod-template-hash": "7d9c8f6b5"}},
        "spec": {"volumes": volumes or [{"name": "model", "emptyDir": {}},
                                        {"name": "tmp", "emptyDir": {}}],
                 "containers": [{"name": "model-server", "image": IMAGE}]},
        "status": status,
    }


def container(name: str = "model-server", *, state: dict[str, Any],
              last: dict[str, Any] | None = None, restarts: int = 0,
              ready: bool = False) -> dict[str, Any]:
    return {
        "name": name, "state": state, "lastState": last or {}, "ready": ready,
        "restartCount": restarts, "image": IMAGE,
        "imageID": "" if "waiting" in state and not last else f"docker.io/{IMAGE}@sha256:ab12",
        "started": "running" in state,
        "volumeMounts": [{"name": "model", "mountPath": "/mnt/models", "readOnly": True,
                          "recursiveReadOnly": "Disabled"}],
    }


def terminated(code: int, message: str | None = None, reason: str = "Error") -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": code, "reason": reason,
                           "startedAt": "2026-01-01T00:00:04Z",
                           "finishedAt": "2026-01-01T00:00:09Z",
                           "containerID": "containerd://0d5e"}
    if message is not None:
        out["message"] = message
    return {"terminated": out}


def back_off(name: str) -> dict[str, Any]:
    return {"waiting": {"reason": "CrashLoopBackOff", "message": (
        f"back-off 20s restarting failed container={name} pod={POD}_ml(6f1c)")}}


def int8_status(*pods: dict[str, Any]) -> dict[str, Any]:
    return s.compute_status(ms(["baseline", "int8"], [("baseline", 90), ("int8", 10)]),
                            deployments={"baseline": deployment(1, 1), "int8": deployment(1, 1)},
                            pods=list(pods), now=NOW, observed_generation=1)


def test_crash_looping_model_server_carries_its_termination_message() -> None:
    p = real_pod(containers=[container(state=back_off("model-server"),
                                       last=terminated(4, LOAD_ERROR), restarts=2)])
    ready = cond(int8_status(p), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelLoadFailed")
    assert ready["message"] == (
        f"variant int8: pod {POD}: model server exited with code 4: {LOAD_ERROR}")


def test_restarted_server_still_loading_after_a_failure_stays_model_load_failed() -> None:
    running = {"running": {"startedAt": "2026-01-01T00:00:30Z"}}
    p = real_pod(containers=[container(state=running, last=terminated(4, LOAD_ERROR),
                                       restarts=3)])
    ready = cond(int8_status(p), "Ready")
    assert ready["reason"] == "ModelLoadFailed" and LOAD_ERROR in ready["message"]
    healthy = real_pod(containers=[container(state=running, last=terminated(4, LOAD_ERROR),
                                             restarts=3, ready=True)])
    assert s.pod_problem(healthy) is None


def test_first_exit_before_back_off_is_reported_too() -> None:
    p = real_pod(containers=[container(state=terminated(4, LOAD_ERROR))])
    assert s.pod_problem(p) == (
        "ModelLoadFailed", f"pod {POD}: model server exited with code 4: {LOAD_ERROR}")


def test_crash_without_message_falls_back_to_log_tail_trimmed_to_one_line() -> None:
    tail = "\n".join(f'{{"level": "error", "message": "line {i}"}}' for i in range(80))
    p = real_pod(containers=[container(state=back_off("model-server"),
                                       last=terminated(1, tail), restarts=1)])
    _, message = s.pod_problem(p) or ("", "")
    assert "\n" not in message and len(message) < s.MESSAGE_MAX + 100
    assert message.startswith(f'pod {POD}: model server exited with code 1: {{"level"')
    assert message.endswith("...")


def test_oom_killed_says_so() -> None:
    p = real_pod(containers=[container(state=back_off("model-server"),
                                       last=terminated(137, reason="OOMKilled"), restarts=1)])
    assert s.pod_problem(p) == (
        "ModelLoadFailed", f"pod {POD}: model server exited with code 137 (OOMKilled)")


def test_failed_model_pull_says_the_pull_failed_with_its_message() -> None:
    pull_error = ("model pull failed: checksum mismatch for https://models.example/s.tgz: "
                  "expected sha256 " + "0" * 64 + ", got " + "9" * 64)
    p = real_pod(
        phase="Pending",
        conditions=[
            pod_condition("PodReadyToStartContainers", "True"),
            pod_condition("Initialized", "False", "ContainersNotInitialized",
                          "containers with incomplete status: [model-pull]"),
            pod_condition("Ready", "False", "ContainersNotReady",
                          "containers with unready status: [model-server]"),
            pod_condition("PodScheduled", "True")],
        init=[container("model-pull", state=back_off("model-pull"),
                        last=terminated(1, pull_error), restarts=1)],
        containers=[container(state={"waiting": {"reason": "PodInitializing"}})])
    ready = cond(int8_status(p), "Ready")
    assert ready["reason"] == "ModelLoadFailed"
    assert ready["message"] == (
        f"variant int8: pod {POD}: model pull failed (init container model-pull exited with "
        f"code 1): {pull_error}")


def test_image_pull_back_off_names_the_image() -> None:
    kubelet = (f'Back-off pulling image "{IMAGE}": ErrImagePull: failed to pull and unpack '
               f'image "docker.io/{IMAGE}": not found')
    p = real_pod(phase="Pending", init=[container(
        "model-pull", state={"waiting": {"reason": "ImagePullBackOff", "message": kubelet}})],
        containers=[container(state={"waiting": {"reason": "PodInitializing"}})])
    assert s.pod_problem(p) == ("ModelLoadFailed", (
        f'pod {POD}: cannot pull image "{IMAGE}" for container model-pull (ImagePullBackOff): '
        f"{kubelet}"))


def test_missing_model_claim_is_named_as_the_cause() -> None:
    scheduler = ('0/3 nodes are available: persistentvolumeclaim "models" not found. '
                 "preemption: 0/3 nodes are available: 3 Preemption is not helpful for "
                 "scheduling.")
    p = real_pod(phase="Pending",
                 conditions=[pod_condition("PodScheduled", "False", "Unschedulable", scheduler)],
        volumes=[{"name": "model", "persistentVolumeClaim": {"claimName": "models",
                                                             "readOnly": True}},
                 {"name": "tmp", "emptyDir": {}}])
    ready = cond(int8_status(p), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert ready["message"] == (
        f'variant int8: pod {POD}: PersistentVolumeClaim "models" does not exist; create it '
        f"or fix the model volume (spec.model.uri pvc://models): {scheduler}")


def test_config_error_is_reported_with_the_kubelet_message() -> None:
    p = real_pod(containers=[container(state={"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "s3-creds" not found'}})])
    assert s.pod_problem(p) == ("ModelLoadFailed", (
        f'pod {POD}: container model-server cannot start (CreateContainerConfigError): '
        'secret "s3-creds" not found'))


def test_pod_being_deleted_is_not_a_problem() -> None:
    p = real_pod(containers=[container(state=terminated(137, reason="Error"))])
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert s.pod_problem(p) is None


def test_a_pod_that_cannot_start_never_leaves_ready_true() -> None:
    running = {"running": {"startedAt": "2026-01-01T00:00:30Z"}}
    good = real_pod("baseline", containers=[container(state=running, ready=True)])
    good["metadata"]["name"] = "sentiment-baseline-1"
    bad = real_pod(containers=[container(state=back_off("model-server"),
                                         last=terminated(4, LOAD_ERROR), restarts=5)])
    # the Deployment still counts an older ready replica of int8
    out = int8_status(good, bad)
    assert cond(out, "Ready")["status"] == "False"
    assert cond(out, "Degraded")["reason"] == "ModelLoadFailed"


def test_failed_init_container_message_falls_back_to_last_termination() -> None:
    p = pod("baseline", initContainerStatuses=[{
        "name": "pull", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}])
    problem = s.pod_problem(p)
    assert problem == ("ModelLoadFailed", "pod p-1: init container pull exited with code 3")


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
    assert cond(out, "Reconciling")["status"] == "True"
    assert cond(out, "Reconciling")["observedGeneration"] == 4


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
    assert not s.changed({**out, "someoneElses": {"phase": "Progressing"}}, out)
    # status.rollout is the operator's own (the rollout state machine's)
    assert s.changed({**out, "rollout": {"phase": "Progressing"}}, out)


def test_effective_weights_rollout_and_measurements_reach_the_status() -> None:
    body = ms(["baseline", "int8"], [("baseline", 100)])
    out = s.compute_status(
        body, deployments={"baseline": deployment(1, 1), "int8": deployment(1, 1)}, pods=[],
        now=NOW, observed_generation=1, weights={"baseline": 90, "int8": 10},
        rollout={"phase": "Progressing", "step": 1},
        measured={"int8": {"p95Ms": 12.5, "agreement": 0.995, "bogus": 1},
                  "baseline": {"p95Ms": None}})
    assert out["traffic"] == "baseline=90,int8=10"
    assert out["rollout"] == {"phase": "Progressing", "step": 1}
    variants = {v["name"]: v for v in out["variants"]}
    assert variants["int8"]["weight"] == 10
    assert variants["int8"]["p95Ms"] == 12.5 and variants["int8"]["agreement"] == 0.995
    assert "bogus" not in variants["int8"] and "p95Ms" not in variants["baseline"]
    assert s.prior_measured(out)["int8"] == {"p95Ms": 12.5, "agreement": 0.995}
    rollout_cond = cond(out, "Rollout")
    assert (rollout_cond["status"], rollout_cond["reason"]) == ("Unknown", "Progressing")


@pytest.mark.parametrize(("phase", "reason", "expected"), [
    ("Pending", "", ("Unknown", "Pending")),
    ("Promoted", "", ("True", "Promoted")),
    ("Paused", "MetricsUnavailable", ("False", "MetricsUnavailable")),
    ("Paused", "PausedByUser", ("False", "PausedByUser")),
    ("RolledBack", "AnalysisFailed", ("False", "AnalysisFailed")),
    ("Aborted", "AbortedByUser", ("False", "AbortedByUser")),
])
def test_rollout_condition_says_how_the_rollout_stands(phase: str, reason: str,
                                                        expected: tuple[str, str]) -> None:
    message = "candidate int8 rolled back to 0%: gate agreement failed 3 times: agreement 0.9"
    out = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                           observed_generation=1,
                           rollout={"phase": phase, "reason": reason, "message": message})
    c = cond(out, "Rollout")
    assert (c["status"], c["reason"]) == expected and c["message"] == message
    # the rollout removed from the spec: the condition goes too
    gone = s.compute_status(ms(["baseline"], prior=out), deployments={}, pods=[], now=NOW,
                            observed_generation=2)
    assert not [c for c in gone["conditions"] if c["type"] == "Rollout"]


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


# ---- Ready = minimum availability; Reconciling/Stalled with kstatus semantics --------------

def test_ready_needs_every_desired_replica_of_a_serving_variant() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={"baseline": deployment(3, 2)},
                           pods=[], now=NOW, observed_generation=1)
    assert cond(out, "Ready")["status"] == "False"
    assert cond(out, "Ready")["reason"] == "RollingOut"
    assert "2/3 replicas ready" in cond(out, "Ready")["message"]
    assert cond(out, "Reconciling")["status"] == "True"
    assert cond(out, "Stalled")["status"] == "False"


def test_a_weight_zero_variant_does_not_gate_ready() -> None:
    out = s.compute_status(ms(["a", "b"], [("a", 100), ("b", 0)]),
                           deployments={"a": deployment(2, 2), "b": deployment(1, 0)},
                           pods=[], now=NOW, observed_generation=1)
    assert cond(out, "Ready")["status"] == "True"
    # ...but its warm pod is still being rolled out: work is left.
    assert cond(out, "Reconciling")["status"] == "True"


def test_done_is_ready_and_neither_reconciling_nor_stalled() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={"baseline": deployment(2, 2)},
                           pods=[], now=NOW, observed_generation=1)
    assert [cond(out, t)["status"] for t in ("Ready", "Reconciling", "Stalled")] == [
        "True", "False", "False"]
    assert cond(out, "Reconciling")["reason"] == "RolloutComplete"


def test_invalid_spec_is_stalled_at_once_and_not_reconciling() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                           observed_generation=2, invalid_spec="spec.model.task: 'x' ...")
    assert cond(out, "Stalled")["status"] == "True"
    assert cond(out, "Stalled")["reason"] == "InvalidSpec"
    assert cond(out, "Stalled")["message"].startswith("spec.model.task")
    assert cond(out, "Reconciling")["status"] == "False"


def test_every_failure_reason_is_stalled() -> None:
    crash = pod("baseline", containerStatuses=[{"name": "model-server", "ready": False, "state": {
        "terminated": {"exitCode": 4, "message": "ModelLoadError: no config.json"}}}])
    out = s.compute_status(ms(["baseline"]), deployments={"baseline": deployment(1, 0)},
                           pods=[crash], now=NOW, observed_generation=1)
    assert cond(out, "Stalled")["reason"] == "ModelLoadFailed"
    assert cond(out, "Stalled")["status"] == "True"
    assert cond(out, "Reconciling")["status"] == "False"
    applied = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                               observed_generation=1, apply_error="422: spec.x invalid")
    assert cond(applied, "Stalled")["reason"] == "ApplyFailed"


def test_stalled_and_reconciling_are_never_both_true() -> None:
    samples = [
        dict(deployments={}, pods=[]),
        dict(deployments={"baseline": deployment(1, 0)}, pods=[]),
        dict(deployments={"baseline": deployment(1, 1)}, pods=[]),
        dict(deployments={"baseline": deployment(1, 0)}, pods=[pod("baseline", conditions=[
            {"type": "PodScheduled", "status": "False", "message": "0/1 nodes"}])]),
    ]
    for sample in samples:
        out = s.compute_status(ms(["baseline"]), now=NOW, observed_generation=1,
                               **sample)  # type: ignore[arg-type]
        assert not (cond(out, "Stalled")["status"] == cond(out, "Reconciling")["status"]
                    == "True"), sample


def test_ignored_fields_are_a_condition_naming_each_field() -> None:
    out = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                           observed_generation=1, ignored_fields=[
                               ("ServiceMonitorUnavailable", "spec.monitoring.serviceMonitor: x"),
                               ("GatewayAPIUnavailable", "spec.gateway: y")])
    c = cond(out, "FieldsIgnored")
    assert (c["status"], c["reason"]) == ("True", "ServiceMonitorUnavailable")
    assert c["message"] == "spec.monitoring.serviceMonitor: x; spec.gateway: y"
    clean = s.compute_status(ms(["baseline"]), deployments={}, pods=[], now=NOW,
                             observed_generation=1)
    assert cond(clean, "FieldsIgnored")["status"] == "False"


def test_variant_provenance_is_shown_in_status() -> None:
    body = ms(["baseline", "distilled", "int8"], [("baseline", 100)])
    body["spec"]["variants"][1]["model"] = {"uri": "s3://m/distilled",
                                            "derivedFrom": "s3://m/bert-base"}
    body["spec"]["variants"][2]["optimization"] = {
        "quantization": "dynamic-int8", "pruning": {"method": "unstructured", "amount": 0.3}}
    out = s.compute_status(body, deployments={}, pods=[], now=NOW, observed_generation=1)
    by_name = {v["name"]: v for v in out["variants"]}
    assert "derivedFrom" not in by_name["baseline"] and "optimization" not in by_name["baseline"]
    assert by_name["distilled"]["derivedFrom"] == "s3://m/bert-base"
    assert by_name["int8"]["optimization"] == "dynamic-int8+pruned-unstructured-0.3"


# ---- Secrets the server cannot use (the reason leads its termination message) --------------

NO_TOKEN_FILE = ("model-server serve: AuthSecretMissing: auth tokens path /etc/model-server/auth "
                 "holds no token: the directory has no token file (a mounted Secret that does "
                 "not exist or has no keys)")


def secured_ms(**server: Any) -> dict[str, Any]:
    body = ms(["baseline", "int8"], [("baseline", 90), ("int8", 10)])
    body["spec"]["server"] = server
    return body


def test_missing_token_secret_is_its_own_reason_naming_the_secret() -> None:
    p = real_pod(containers=[container(state=back_off("model-server"),
                                       last=terminated(2, NO_TOKEN_FILE), restarts=1)])
    out = s.compute_status(secured_ms(auth={"tokenSecret": "sentiment-tokens"}),
                           deployments={"baseline": deployment(1, 1), "int8": deployment(1, 0)},
                           pods=[p], now=NOW, observed_generation=1)
    ready = cond(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AuthSecretMissing")
    assert ready["message"] == (
        'Secret "sentiment-tokens" (spec.server.auth.tokenSecret) does not exist or has no '
        "keys; create it with one accepted token per key; the pods serve nothing until it is "
        f"fixed. variant int8: pod {POD}: model server exited with code 2: {NO_TOKEN_FILE}")
    assert cond(out, "Stalled")["reason"] == "AuthSecretMissing"
    assert cond(out, "Degraded")["status"] == "True"


def test_secret_reason_is_found_on_the_first_exit_and_while_restarting() -> None:
    first = real_pod(containers=[container(state=terminated(2, NO_TOKEN_FILE))])
    running = {"running": {"startedAt": "2026-01-01T00:00:30Z"}}
    again = real_pod(containers=[container(state=running, last=terminated(2, NO_TOKEN_FILE),
                                           restarts=4)])
    for p in (first, again):
        reason, message = s.pod_problem(p) or ("", "")
        assert reason == "AuthSecretMissing" and NO_TOKEN_FILE in message


def test_secret_problems_win_over_load_failures_and_count_for_a_rollout() -> None:
    secret = real_pod("baseline", containers=[container(
        state=back_off("model-server"), restarts=1, last=terminated(
            2, "model-server serve: TLSSecretInvalid: TLS certificate /etc/model-server/tls/"
               "tls.crt and key /etc/model-server/tls/tls.key do not load as a pair: [SSL] PEM "
               "lib (_ssl.c:3926)"))])
    load = real_pod(containers=[container(state=back_off("model-server"),
                                          last=terminated(4, LOAD_ERROR), restarts=1)])
    load["metadata"]["name"] = "sentiment-int8-2"
    deployments = {"baseline": deployment(1, 0), "int8": deployment(1, 0)}
    out = s.compute_status(secured_ms(tls={"secretName": "web-tls"}), deployments=deployments,
                           pods=[secret, load], now=NOW, observed_generation=1)
    ready = cond(out, "Ready")
    assert ready["reason"] == "TLSSecretInvalid"
    assert ready["message"].startswith('Secret "web-tls" (spec.server.tls.secretName) does not '
                                       "hold a PEM certificate (tls.crt)")
    failing = s.readiness(deployments, [secret, load])
    assert failing["baseline"][1] is not None and "TLSSecretInvalid" in failing["baseline"][1]
    assert failing["int8"][1] is not None


def test_secret_reason_without_the_field_in_the_spec_still_names_the_field() -> None:
    p = real_pod(containers=[container(state=terminated(2, NO_TOKEN_FILE))])
    ready = cond(int8_status(p), "Ready")
    assert ready["reason"] == "AuthSecretMissing"
    assert ready["message"].startswith("the Secret of spec.server.auth.tokenSecret does not "
                                       "exist")


@pytest.mark.parametrize("problem", [
    {"init": True, "code": 2, "message": NO_TOKEN_FILE},  # the pull container is not the server
    {"init": False, "code": 4, "message": NO_TOKEN_FILE},  # a load failure quoting the words
    {"init": False, "code": 2, "message": "model-server serve: invalid settings: x"},
])
def test_only_the_servers_exit_2_with_a_reason_is_a_secret_problem(
        problem: dict[str, Any]) -> None:
    state = terminated(problem["code"], problem["message"])
    if problem["init"]:
        p = real_pod(phase="Pending", init=[container("model-pull", state=state)],
                     containers=[container(state={"waiting": {"reason": "PodInitializing"}})])
    else:
        p = real_pod(containers=[container(state=state)])
    assert (s.pod_problem(p) or ("",))[0] == "ModelLoadFailed"


def test_url_says_https_when_the_pods_serve_tls() -> None:
    body = secured_ms(tls={"secretName": "web-tls"})
    out = s.compute_status(body, deployments={}, pods=[], now=NOW, observed_generation=1)
    assert out["url"] == "https://sentiment.ml.svc.cluster.local:80"
