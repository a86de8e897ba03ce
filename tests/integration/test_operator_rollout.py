"""A rollout against the real local control plane (kwok's simulated pods become Ready).

What needs no model traffic: the candidate's first step moves the effective weights (status,
replica split, the running pod's serving label, no restart), the stable variant's pods get
the mirror annotation with the candidate Service's clusterIP, an unreachable Prometheus pauses
the rollout (never promotes blind), a restarted operator resumes at the same step, Events
follow, and `kubectl msv` (the real kubectl finding the plugin on PATH) shows and steers it
through annotations only.
The gates on real metrics are exercised with real pods and a real Prometheus elsewhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifests import MS_API, modelservice
from msv_operator import kube
from operator_harness import RunningOperator, condition
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def plugin_env(cluster: lc.Cluster, tmp_path: Path) -> dict[str, str]:
    """kubectl's environment with ``kubectl-msv`` (this checkout's plugin) first on PATH."""
    script = tmp_path / "kubectl-msv"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m msv_operator.kubectl_msv "$@"\n')
    script.chmod(0o755)
    env = cluster.env
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    env["PYTHONPATH"] = f"{REPO / 'operator'}:{REPO}"
    return env


def kubectl_msv(cluster: lc.Cluster, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([str(cluster.kubectl), "msv", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def rollout_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    return dict((ms.get("status") or {}).get("rollout") or {})


def in_phase(k: kube.Kube, ns: str, name: str, phase: str, reason: str | None = None,
             step: int | None = None) -> dict[str, Any] | None:
    r = rollout_of(k, ns, name)
    if r.get("phase") != phase or (reason is not None and r.get("reason") != reason):
        return None
    if step is not None and r.get("step") != step:
        return None
    return r


MIRROR = "serving.modelservice.dev/mirror"


def mirror_marks(k: kube.Kube, ns: str, name: str, variant: str) -> list[str | None]:
    """The mirror annotation of each running pod of ``variant``."""
    pods = k.list("v1", "Pod", ns, f"serving.modelservice.dev/modelservice={name},"
                  f"serving.modelservice.dev/variant={variant}")
    return [(p["metadata"].get("annotations") or {}).get(MIRROR) for p in pods
            if not p["metadata"].get("deletionTimestamp")]


def traffic(k: kube.Kube, ns: str, name: str) -> str:
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    return str((ms.get("status") or {}).get("traffic"))


def reasons(k: kube.Kube, ns: str, name: str) -> list[str]:
    events = k.list("v1", "Event", ns)
    return [e.get("reason", "") for e in sorted(events, key=lambda e: e.get("firstTimestamp")
                                                or "")
            if (e.get("involvedObject") or {}).get("name") == name]


@pytest.fixture
def prometheus_down_operator(crd: None, namespace: str) -> Iterator[list[RunningOperator]]:
    """An operator whose Prometheus address answers nothing (a closed loopback port);
    a list, so a test can replace it with a restarted one. No resync within a test: timed
    steps and analyses must come back through the work queue's requeue-after."""
    url = f"http://127.0.0.1:{closed_port()}"
    ops = [RunningOperator([namespace], prometheus_url=url, prometheus_timeout=2.0,
                           resync_seconds=600.0).start()]
    yield ops
    for op in ops:
        if op.alive:
            op.stop()


def test_rollout_steps_pauses_without_metrics_resumes_after_restart_and_is_steered(
        prometheus_down_operator: list[RunningOperator], k: kube.Kube, namespace: str,
        cluster: lc.Cluster, plugin_env: dict[str, str]) -> None:
    ns, name = namespace, "sentiment"
    k.apply(modelservice(
        name, ns, replicas=4,
        variants=[{"name": "baseline"},
                  {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}],
        traffic=[{"variant": "baseline", "weight": 100}],
        rollout={"candidate": "int8", "steps": [25, 100], "stepDuration": "1s",
                 "minRequests": 1, "analysis": {"interval": "1s", "mirrorPercent": 20}}))

    # step 1 once the candidate's (kwok) pod is ready: the effective weights move
    wait_for("step 1", lambda: rollout_of(k, ns, name).get("step") == 1, timeout=90)
    assert wait_for("traffic 75/25", lambda: traffic(k, ns, name) == "baseline=75,int8=25")
    int8 = k.get("apps/v1", "Deployment", ns, f"{name}-int8") or {}
    base = k.get("apps/v1", "Deployment", ns, f"{name}-baseline") or {}
    assert int8["spec"]["replicas"] == 1 and base["spec"]["replicas"] == 3
    # The candidate's running pod joins the stable Service by relabelling: its template
    # keeps spec.traffic's label, so the first step restarts nothing (one ReplicaSet).
    serving = "serving.modelservice.dev/serving"
    assert int8["spec"]["template"]["metadata"]["labels"][serving] == "false"
    int8_pods = (f"serving.modelservice.dev/modelservice={name},"
                 "serving.modelservice.dev/variant=int8")

    def int8_serving() -> list[str]:
        pods = k.list("v1", "Pod", ns, int8_pods)
        assert pods and all(p["metadata"]["labels"].get(serving) == "true" for p in pods), [
            (p["metadata"]["name"], p["metadata"]["labels"].get(serving)) for p in pods]
        return [p["metadata"]["name"] for p in pods]

    wait_for("the candidate's pod relabelled into the stable Service", int8_serving)
    assert len(k.list("apps/v1", "ReplicaSet", ns, int8_pods)) == 1

    # the stable variant's running pods mirror to the candidate Service's clusterIP (a pod
    # annotation the server reads through the downward API: its template is unchanged)
    ip = (k.get("v1", "Service", ns, f"{name}-int8") or {})["spec"]["clusterIP"]
    wanted = json.dumps({"percent": 20, "url": f"http://{ip}:80", "variant": "int8"},
                        separators=(",", ":"))
    wait_for("the mirror annotation on every baseline pod",
             lambda: set(mirror_marks(k, ns, name, "baseline")) == {wanted}, timeout=30)
    assert mirror_marks(k, ns, name, "int8") == [None]
    baseline_pods = (f"serving.modelservice.dev/modelservice={name},"
                     "serving.modelservice.dev/variant=baseline")
    assert len(k.list("apps/v1", "ReplicaSet", ns, baseline_pods)) == 1

    # Prometheus unreachable: paused with the reason, weights held, never promoted
    paused = wait_for("MetricsUnavailable", lambda: in_phase(
        k, ns, name, "Paused", "MetricsUnavailable"), timeout=60)
    assert "unreachable" in paused["message"] and "never promotes blind" in paused["message"]
    assert paused["step"] == 1 and traffic(k, ns, name) == "baseline=75,int8=25"
    c = wait_for("Rollout condition", lambda: (lambda c: c if c.get("reason") ==
                                               "MetricsUnavailable" else None)(
        condition(k.get(MS_API, "ModelService", ns, name), "Rollout")))
    assert c["status"] == "False" and "unreachable" in c["message"]
    assert wait_for("events", lambda: {"RolloutStarted", "RolloutStep", "RolloutPaused"}
                    <= set(reasons(k, ns, name)))

    assert prometheus_down_operator[0].metric("msv_operator_rollout_events_total",
                                              {"reason": "RolloutStep"}) == 1
    # a restarted operator resumes at the same step from status.rollout alone
    started = paused["startedAt"]
    prometheus_down_operator[0].stop()
    restarted = RunningOperator([ns], prometheus_url=prometheus_down_operator[0]
                                .config.prometheus_url, prometheus_timeout=2.0,
                                resync_seconds=600.0).start()
    prometheus_down_operator.append(restarted)
    again = wait_for("still paused at step 1 after restart", lambda: in_phase(
        k, ns, name, "Paused", "MetricsUnavailable", step=1), timeout=30)
    assert again["startedAt"] == started
    assert traffic(k, ns, name) == "baseline=75,int8=25"
    # with nothing changing in the cluster, the next analyses come from the requeue-after
    # alone (no resync runs within the test): lastAnalysis keeps moving, 1 s apart
    wait_for("pods settled", lambda: all(
        (d.get("status") or {}).get("updatedReplicas") == (d.get("spec") or {}).get("replicas")
        == (d.get("status") or {}).get("readyReplicas") == (d.get("status") or {}).get(
            "replicas") for d in k.list("apps/v1", "Deployment", ns)), timeout=60)
    seen = {rollout_of(k, ns, name)["lastAnalysis"]["time"]}
    for _ in range(3):
        wait_for("another analysis", lambda: rollout_of(k, ns, name)["lastAnalysis"]["time"]
                 not in seen, timeout=20)
        seen.add(rollout_of(k, ns, name)["lastAnalysis"]["time"])

    # kubectl msv get shows the rollout and the gates' state
    shown = kubectl_msv(cluster, plugin_env, "get", name, "-n", ns)
    assert "candidate int8 from baseline=100" in shown
    assert "Paused (MetricsUnavailable)" in shown
    assert "steps (% to candidate): [25] 100" in shown
    assert "History:" in shown and "Variants:" in shown

    # abort through the plugin: annotations only, traffic back to the spec, mirroring off
    kubectl_msv(cluster, plugin_env, "abort", name, "-n", ns)
    aborted = wait_for("Aborted", lambda: in_phase(k, ns, name, "Aborted"), timeout=30)
    assert aborted["handledAction"].startswith("abort/")
    assert wait_for("traffic back", lambda: traffic(k, ns, name) == "baseline=100,int8=0")
    wait_for("mirror annotations removed",
             lambda: set(mirror_marks(k, ns, name, "baseline")) == {None}, timeout=30)
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    assert ms["spec"]["traffic"] == [{"variant": "baseline", "weight": 100}]  # spec untouched

    # retry starts over; promote skips the gates and moves all traffic to the candidate
    kubectl_msv(cluster, plugin_env, "retry", name, "-n", ns)
    wait_for("retried", lambda: rollout_of(k, ns, name).get("phase") in ("Progressing",
                                                                         "Paused"), timeout=30)
    kubectl_msv(cluster, plugin_env, "promote", name, "-n", ns)
    wait_for("Promoted", lambda: in_phase(k, ns, name, "Promoted"), timeout=30)
    assert wait_for("all traffic to int8",
                    lambda: traffic(k, ns, name) == "baseline=0,int8=100")
    assert wait_for("promotion event", lambda: "RolloutPromoted" in reasons(k, ns, name))
    promoted = condition(k.get(MS_API, "ModelService", ns, name), "Rollout")
    assert (promoted["status"], promoted["reason"]) == ("True", "Promoted")
    wide = cluster.kubectl_run("get", "msv", name, "-n", ns, "-o", "wide").stdout
    assert "Promoted" in wide and "baseline=0,int8=100" in wide


def test_pause_annotation_holds_a_rollout(
        prometheus_down_operator: list[RunningOperator], k: kube.Kube, namespace: str,
        cluster: lc.Cluster, plugin_env: dict[str, str]) -> None:
    ns, name = namespace, "paused"
    # 50%: one pod each serves it exactly without a gateway (10% on replicas 1 would hold,
    # ShareNotRepresentable: test_the_share_the_pods_deliver_is_reported_and_a_step_holds)
    k.apply(modelservice(
        name, ns, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 100}],
        rollout={"candidate": "int8", "steps": [50, 100]}))
    wait_for("step 1", lambda: rollout_of(k, ns, name).get("step") == 1, timeout=90)
    kubectl_msv(cluster, plugin_env, "pause", name, "-n", ns)
    held = wait_for("PausedByUser", lambda: in_phase(k, ns, name, "Paused", "PausedByUser"),
                    timeout=30)
    assert held["step"] == 1
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    assert ms["metadata"]["annotations"]["serving.modelservice.dev/rollout-paused"] == "true"
    kubectl_msv(cluster, plugin_env, "resume", name, "-n", ns)
    wait_for("resumed", lambda: rollout_of(k, ns, name).get("reason") != "PausedByUser",
             timeout=30)
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    assert "serving.modelservice.dev/rollout-paused" not in (
        ms["metadata"].get("annotations") or {})


def test_the_share_the_pods_deliver_is_reported_and_a_step_holds(
        prometheus_down_operator: list[RunningOperator], k: kube.Kube, namespace: str,
        cluster: lc.Cluster, plugin_env: dict[str, str]) -> None:
    """No gateway, replicas 2, weight 10 (issue 22, item 5): the stable Service's 3 ready pods
    give int8 33%, which the status reports beside the 10% asked; a rollout step of 10% on
    the same replicas holds before the step (never claimed), saying why."""
    ns = namespace
    k.apply(modelservice(
        "split", ns, replicas=2, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 90}, {"variant": "int8", "weight": 10}]))

    def split_status() -> tuple[dict[str, Any], dict[str, Any]]:
        # The shares follow the EndpointSlices, Progressing the Deployments' status, which
        # may lag them by a pass: both settled. A timeout reports what it saw.
        ms = k.get(MS_API, "ModelService", ns, "split") or {}
        st = ms.get("status") or {}
        progressing = condition(ms, "Progressing")
        assert st.get("shares") == "baseline=67,int8=33" and \
            progressing.get("reason") == "ShareNotRepresentable", (st, progressing)
        return st, progressing

    st, progressing = wait_for("shares 67/33, Progressing ShareNotRepresentable",
                               split_status, timeout=180)
    assert st["traffic"] == "baseline=90,int8=10"
    assert {v["name"]: (v["weight"], v["share"]) for v in st["variants"]} == {
        "baseline": (90, 67), "int8": (10, 33)}
    assert "int8 at 10% gets 33%" in progressing["message"]
    assert "raise spec.replicas to 6" in progressing["message"]
    shown = kubectl_msv(cluster, plugin_env, "get", "split", "-n", ns)
    assert "shares baseline=67,int8=33" in shown
    get = subprocess.run([str(cluster.kubectl), "get", "msv", "split", "-n", ns],
                         env=cluster.env, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "SHARES" in get.splitlines()[0] and "baseline=67,int8=33" in get

    k.apply(modelservice(
        "held", ns, replicas=2, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 100}],
        rollout={"candidate": "int8", "steps": [10, 100]}))
    held = wait_for("held before step 1", lambda: in_phase(
        k, ns, "held", "Paused", "ShareNotRepresentable", step=0), timeout=180)
    assert "candidate int8 at 10%" in held["message"] and "33%" in held["message"]
    assert traffic(k, ns, "held") == "baseline=100,int8=0"
    ms = k.get(MS_API, "ModelService", ns, "held")
    assert condition(ms, "Rollout")["reason"] == "ShareNotRepresentable"
    # replicas that can represent 10% (6 stable + 1): the step is taken, the stable side grows
    k.apply(modelservice(
        "held", ns, replicas=6, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 100}],
        rollout={"candidate": "int8", "steps": [10, 100]}))
    wait_for("step 1", lambda: rollout_of(k, ns, "held").get("step") == 1, timeout=180)
    assert traffic(k, ns, "held") == "baseline=90,int8=10"
    base = k.get("apps/v1", "Deployment", ns, "held-baseline") or {}
    assert base["spec"]["replicas"] == 6

    def delivered() -> str:
        st = (k.get(MS_API, "ModelService", ns, "held") or {}).get("status") or {}
        assert st.get("shares") == "baseline=86,int8=14", st
        return str(st["shares"])

    wait_for("shares 86/14 once the stable pods are ready", delivered, timeout=240)
