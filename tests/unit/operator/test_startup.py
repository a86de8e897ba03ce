"""startup: a variant's start-up phases from its pods (pure), on recorded pod shapes; the
status carries them, the pass posts one Event per variant's first start."""

from __future__ import annotations

import copy
import json
from typing import Any

from msv_operator import builders, cache, startup, status
from msv_operator.state import VariantStatus
from test_reconcile_shares import Operator, deployment

NAMES = {"server": status.SERVER_CONTAINER, "pull": status.PULL_CONTAINER}

# A Ready pod as the API server returns it (kubelet 1.3x; fields the derivation does not read
# kept, to show the shape): pulled over HTTP by the init container, then loaded.
RECORDED: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {
        "name": "sentiment-baseline-7d9f8c6b5-x2k4q", "namespace": "ml",
        "creationTimestamp": "2026-12-06T10:00:00Z", "resourceVersion": "48213",
        "labels": {builders.LABEL_MODELSERVICE: "sentiment", builders.LABEL_VARIANT: "baseline",
                   builders.LABEL_SERVING: "true", "pod-template-hash": "7d9f8c6b5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "sentiment-baseline-7d9f8c6b5", "controller": True}]},
    "spec": {"nodeName": "node-1"},
    "status": {
        "phase": "Running", "hostIP": "10.0.0.2", "podIP": "10.244.0.17", "qosClass": "Burstable",
        "startTime": "2026-12-06T10:00:00Z",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True",
             "lastProbeTime": None, "lastTransitionTime": "2026-12-06T10:00:01Z"},
            {"type": "Initialized", "status": "True",
             "lastProbeTime": None, "lastTransitionTime": "2026-12-06T10:00:02Z"},
            {"type": "Ready", "status": "True",
             "lastProbeTime": None, "lastTransitionTime": "2026-12-06T10:00:07Z"},
            {"type": "ContainersReady", "status": "True",
             "lastProbeTime": None, "lastTransitionTime": "2026-12-06T10:00:07Z"},
            {"type": "PodScheduled", "status": "True",
             "lastProbeTime": None, "lastTransitionTime": "2026-12-06T10:00:00Z"}],
        "initContainerStatuses": [{
            "name": "model-pull", "ready": True, "restartCount": 0, "started": False,
            "image": "model-server-torch:dev", "imageID": "sha256:0f1e",
            "containerID": "containerd://a1",
            "state": {"terminated": {
                "exitCode": 0, "reason": "Completed", "containerID": "containerd://a1",
                "startedAt": "2026-12-06T10:00:01Z", "finishedAt": "2026-12-06T10:00:02Z",
                "message": '{"bytes":1183744,"seconds":0.4123,"cacheHit":false}'}},
            "lastState": {}}],
        "containerStatuses": [{
            "name": "model-server", "ready": True, "restartCount": 0, "started": True,
            "image": "model-server-torch:dev", "imageID": "sha256:0f1e",
            "containerID": "containerd://b2",
            "state": {"running": {"startedAt": "2026-12-06T10:00:03Z"}}, "lastState": {}}],
    },
}


def recorded(name: str = "p-new", created: str = "2026-12-06T10:00:00Z",
             ready_at: str | None = "2026-12-06T10:00:07Z") -> dict[str, Any]:
    pod = copy.deepcopy(RECORDED)
    pod["metadata"]["name"], pod["metadata"]["creationTimestamp"] = name, created
    for c in pod["status"]["conditions"]:
        if c["type"] == "Ready":
            c["status"] = "True" if ready_at else "False"
            c["lastTransitionTime"] = ready_at or created
    return pod


def test_phases_of_a_recorded_pod() -> None:
    assert startup.phases(RECORDED, **NAMES) == {
        "pod": "sentiment-baseline-7d9f8c6b5-x2k4q",
        "scheduledSeconds": 0,
        "imageSeconds": 2,  # scheduled 10:00:00 -> pull 10:00:01, pull done 10:00:02 -> 10:00:03
        "fetchSeconds": 0.412,  # the pull's own report, not its whole-second timestamps
        "fetchedBytes": 1183744, "cacheHit": False,
        "loadSeconds": 4,
        "totalSeconds": 7,
        "createdAt": "2026-12-06T10:00:00Z", "readyAt": "2026-12-06T10:00:07Z"}


def test_the_watch_cache_keeps_what_the_phases_need() -> None:
    assert startup.phases(cache.trim_pod(RECORDED), **NAMES) == startup.phases(RECORDED, **NAMES)


def test_without_the_pull_report_the_fetch_comes_from_the_timestamps() -> None:
    pod = copy.deepcopy(RECORDED)  # a pull of an older image: no report in its message
    del pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["message"]
    out = startup.phases(pod, **NAMES)
    assert out is not None
    assert (out["fetchSeconds"], "fetchedBytes" in out, "cacheHit" in out) == (1, False, False)


def test_a_model_on_a_volume_has_no_fetch_phase() -> None:
    pod = copy.deepcopy(RECORDED)  # pvc:// or file://: no init container
    del pod["status"]["initContainerStatuses"]
    out = startup.phases(pod, **NAMES)
    assert out is not None
    assert "fetchSeconds" not in out
    assert (out["imageSeconds"], out["loadSeconds"], out["totalSeconds"]) == (3, 4, 7)


def test_restarts_before_ready_are_counted() -> None:
    pod = copy.deepcopy(RECORDED)
    pod["status"]["containerStatuses"][0]["restartCount"] = 2
    assert startup.phases(pod, **NAMES)["restarts"] == 2  # type: ignore[index]


def test_no_phases_until_ready_or_without_timestamps() -> None:
    assert startup.phases(recorded(ready_at=None), **NAMES) is None
    pod = copy.deepcopy(RECORDED)
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert startup.phases(pod, **NAMES) is None
    assert startup.phases({"metadata": {"name": "x"}}, **NAMES) is None


def test_latest_is_the_newest_ready_pod_and_stays_put() -> None:
    old = recorded("p-old", "2026-12-06T09:00:00Z", "2026-12-06T09:00:05Z")
    new = recorded("p-new", "2026-12-06T10:00:00Z", "2026-12-06T10:00:07Z")
    starting = recorded("p-starting", "2026-12-06T10:30:00Z", None)
    first = startup.latest([old, new, starting], None, **NAMES)
    assert first is not None and first["pod"] == "p-new" and first["totalSeconds"] == 7
    # the same pod's readiness blips later: the entry is not rewritten
    blipped = recorded("p-new", "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z")
    assert startup.latest([old, blipped], first, **NAMES) == first
    # a scale-down removed the newest pod and the old one blipped: an older pod never wins
    old_blipped = recorded("p-old", "2026-12-06T09:00:00Z", "2026-12-06T11:00:00Z")
    assert startup.latest([old_blipped], first, **NAMES) == first
    assert startup.latest([], first, **NAMES) == first  # no Ready pod: kept
    assert startup.latest([starting], None, **NAMES) is None
    newer = recorded("p-newer", "2026-12-06T12:00:00Z", "2026-12-06T12:00:03Z")
    assert startup.latest([new, newer], first, **NAMES)["pod"] == "p-newer"  # type: ignore[index]
    deleting = copy.deepcopy(newer)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-06T12:01:00Z"
    assert startup.latest([new, deleting], None, **NAMES)["pod"] == "p-new"  # type: ignore[index]


def test_message() -> None:
    entry = startup.phases(RECORDED, **NAMES)
    assert entry is not None
    assert startup.message(entry) == (
        "started in 7 s: scheduled 0 s, image 2 s, fetch 0.412 s (1.2 MB), load 4 s "
        "(pod sentiment-baseline-7d9f8c6b5-x2k4q)")
    assert startup.message({**entry, "cacheHit": True, "restarts": 1}) == (
        "started in 7 s: scheduled 0 s, image 2 s, fetch 0.412 s (cache hit), load 4 s, "
        "after 1 restart(s) (pod sentiment-baseline-7d9f8c6b5-x2k4q)")


def test_an_event_only_for_a_variants_first_start() -> None:
    entry = {"pod": "p", "scheduledSeconds": 0, "loadSeconds": 3, "totalSeconds": 4}
    before = [{"name": "baseline"}, {"name": "int8", "startup": entry}]
    after = [{"name": "baseline", "startup": entry}, {"name": "int8", "startup": {**entry,
                                                                               "pod": "q"}}]
    assert startup.started_events(before, after) == [
        ("Normal", "VariantStarted", "variant baseline started in 4 s: scheduled 0 s, "
                                     "load 3 s (pod p)")]
    assert startup.started_events(after, after) == []


def test_status_variants_carry_the_startup_and_keep_it() -> None:
    ms = {"metadata": {"name": "sentiment", "namespace": "ml"},
          "spec": {"variants": [{"name": "baseline"}, {"name": "int8"}]}}
    deployments = {"baseline": deployment("baseline", 1, 1), "int8": deployment("int8", 1, 0)}
    out = status.compute_status(ms, deployments=deployments, pods=[recorded()],
                                now="2026-12-06T10:00:08Z", observed_generation=1)
    base, int8 = out["variants"]
    assert base["startup"]["pod"] == "p-new" and base["startup"]["totalSeconds"] == 7
    assert "startup" not in int8
    assert VariantStatus.from_dict(base).startup == base["startup"]
    # the pod is gone (scaled to zero): the entry stays until a newer pod is Ready
    again = status.compute_status({**ms, "status": out}, deployments=deployments, pods=[],
                                  now="2026-12-06T11:00:00Z", observed_generation=1)
    assert again["variants"][0]["startup"] == base["startup"]


def test_a_pass_posts_one_started_event_per_variant() -> None:
    def labelled(variant: str, ready_at: str | None) -> dict[str, Any]:
        pod = recorded(f"sentiment-{variant}-1", ready_at=ready_at)
        pod["metadata"]["labels"][builders.LABEL_VARIANT] = variant
        return pod

    op = Operator([labelled("baseline", None)])
    deployments = [deployment("baseline", 1, 0), deployment("int8", 1, 0)]
    assert op.run(deployments).started == []
    op.add(labelled("baseline", "2026-12-06T10:00:07Z"))
    result = op.run([deployment("baseline", 1, 1), deployment("int8", 1, 0)])
    assert [(t, r) for t, r, _ in result.started] == [("Normal", "VariantStarted")]
    assert result.started[0][2].startswith("variant baseline started in 7 s:")
    assert op.variant("baseline")["startup"]["fetchedBytes"] == 1183744
    assert op.run([deployment("baseline", 1, 1), deployment("int8", 1, 0)]).started == []


def test_pull_report_parsing() -> None:
    assert startup.pull_report('{"bytes":1,"seconds":0.5,"cacheHit":true}') == {
        "bytes": 1, "seconds": 0.5, "cacheHit": True}
    for message in (None, "", "model pull failed: boom", "{not json", json.dumps({"bytes": 1}),
                    json.dumps({"seconds": True})):
        assert startup.pull_report(message) is None


def test_a_pull_that_bypassed_the_node_cache_is_recorded_and_warned_once_per_pod() -> None:
    pod = copy.deepcopy(RECORDED)
    init = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
    init["message"] = json.dumps({"bytes": 1183744, "seconds": 0.5, "cacheHit": False,
                                  "source": "bypassed", "cacheBytes": 1183744,
                                  "cacheBypass": "the cache's disk is full"})
    entry = startup.phases(pod, **NAMES)
    assert entry is not None and entry["cacheBypass"] == "the cache's disk is full"
    first = startup.started_events([{"name": "baseline"}], [{"name": "baseline",
                                                              "startup": entry}])
    assert [(t, r) for t, r, _ in first] == [("Normal", "VariantStarted"),
                                              ("Warning", "ModelCacheBypassed")]
    assert "the cache's disk is full" in first[1][2] and entry["pod"] in first[1][2]
    same = [{"name": "baseline", "startup": entry}]
    assert startup.started_events(same, same) == []  # the same pod: warned once
    newer = [{"name": "baseline", "startup": {**entry, "pod": "newer"}}]
    assert [r for _, r, _ in startup.started_events(same, newer)] == ["ModelCacheBypassed"]
