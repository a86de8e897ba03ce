"""Proof tests for the local control plane: GPU scheduling, garbage collection, Pod Security
admission, versions, and the up/status/down life cycle on an isolated second instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import keda, monitoring, nodes, paths, versions
from localcluster.gateway import install as gateway_install

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_NODES = {n.name for n in nodes.DEFAULT_POOL if n.gpus}
MAX_GPUS = max(n.gpus for n in nodes.DEFAULT_POOL)


# The shared wait_for polls every 0.25 s; these checks run kubectl: every 0.5 s, as before.
POLL = 0.5


def gpu_pod_spec(gpus: int, tolerate: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{
            "name": "model",
            "image": "registry.invalid/model-server:test",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                          "requests": {"cpu": "1", "memory": "1Gi"}},
        }],
    }
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    return spec


def deployment(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def pods(cluster: lc.Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def failed_scheduling_messages(cluster: lc.Cluster, namespace: str) -> list[str]:
    events = cluster.kubectl_json("get", "events", "-n", namespace,
                                  "--field-selector", "reason=FailedScheduling")["items"]
    return [e.get("message", "") for e in events]


# ----------------------------------------------------------------------------- the node pool


def test_node_pool_advertises_gpus_with_labels_and_taint(cluster: lc.Cluster) -> None:
    items = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    assert set(items) >= {n.name for n in nodes.DEFAULT_POOL}
    for spec in nodes.DEFAULT_POOL:
        node = items[spec.name]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        taints = node["spec"].get("taints", [])
        if spec.has_gpus:
            allocatable = node["status"]["allocatable"]
            assert allocatable.get("nvidia.com/gpu") == (str(spec.gpus) if spec.gpus else None)
            for profile, count in spec.mig:  # the H100 pool's MIG devices (mixed strategy)
                assert allocatable[f"nvidia.com/mig-{profile}"] == str(count)
            assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == spec.gpu_product
            assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == str(
                spec.gpus + spec.mig_gpus)
            assert {"key": "nvidia.com/gpu", "value": "present",
                    "effect": "NoSchedule"} in taints
        else:
            assert "nvidia.com/gpu" not in node["status"]["allocatable"]
            # With the real node, simulated CPU nodes only take pods that opt in.
            assert taints == ([nodes.SIMULATED_TAINT] if cluster.real_node else [])


def test_kubectl_and_server_report_the_pinned_version(cluster: lc.Cluster) -> None:
    out = cluster.kubectl_json("version")
    assert out["clientVersion"]["gitVersion"] == versions.KUBERNETES
    assert out["serverVersion"]["gitVersion"] == versions.KUBERNETES


# ----------------------------------------------------------------------------- scheduling


def test_gpu_deployment_is_scheduled_on_a_gpu_node_and_becomes_ready(
        cluster: lc.Cluster, namespace: str) -> None:
    cluster.apply(deployment("gpu-model", gpu_pod_spec(1, tolerate=True)), namespace)

    def ready_replicas() -> int:
        d = cluster.kubectl_json("get", "deployment", "gpu-model", "-n", namespace)
        return int(d.get("status", {}).get("readyReplicas", 0))

    assert wait_for("readyReplicas == 1", ready_replicas, interval=POLL) == 1
    [pod] = pods(cluster, namespace, "app=gpu-model")
    assert pod["spec"]["nodeName"] in GPU_NODES
    assert pod["status"]["phase"] == "Running"
    node = cluster.kubectl_json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"].startswith("NVIDIA-")


def test_gpu_pod_without_toleration_stays_pending_with_the_taint_as_reason(
        cluster: lc.Cluster, namespace: str) -> None:
    cluster.apply(deployment("no-toleration", gpu_pod_spec(1, tolerate=False)), namespace)
    messages = wait_for("a FailedScheduling event",
                        lambda: failed_scheduling_messages(cluster, namespace), interval=POLL)
    assert any("untolerated taint" in m and "nvidia.com/gpu" in m for m in messages), messages
    [pod] = pods(cluster, namespace, "app=no-toleration")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
        cluster: lc.Cluster, namespace: str) -> None:
    cluster.apply(deployment("too-many-gpus", gpu_pod_spec(MAX_GPUS + 1, tolerate=True)),
                  namespace)
    messages = wait_for("a FailedScheduling event",
                        lambda: failed_scheduling_messages(cluster, namespace), interval=POLL)
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages
    [pod] = pods(cluster, namespace, "app=too-many-gpus")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


# ----------------------------------------------------------------------------- controllers


def test_deleting_an_owner_garbage_collects_its_dependents(
        cluster: lc.Cluster, namespace: str) -> None:
    cluster.kubectl_run("create", "configmap", "owner", "-n", namespace)
    owner = cluster.kubectl_json("get", "configmap", "owner", "-n", namespace)
    cluster.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner["metadata"]["uid"]}]},
        "data": {"k": "v"},
    }, namespace)
    cluster.apply(deployment("web", {"containers": [{"name": "c", "image": "x.invalid/y"}]}),
                  namespace)
    wait_for("the deployment's pod", lambda: pods(cluster, namespace, "app=web"), interval=POLL)

    cluster.kubectl_run("delete", "configmap", "owner", "-n", namespace)
    cluster.kubectl_run("delete", "deployment", "web", "-n", namespace)

    def gone() -> bool:
        cm = cluster.kubectl_run("get", "configmap", "dependent", "-n", namespace, check=False)
        rs = cluster.kubectl_json("get", "replicasets", "-n", namespace, "-l", "app=web")
        return ("NotFound" in cm.stderr and not rs["items"]
                and not pods(cluster, namespace, "app=web"))

    wait_for("dependents to be garbage-collected", gone, interval=POLL)


def test_a_job_pod_runs_to_completion(cluster: lc.Cluster, namespace: str) -> None:
    cluster.apply({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "x.invalid/y"}]}}},
    }, namespace)

    def succeeded() -> int:
        job = cluster.kubectl_json("get", "job", "once", "-n", namespace)
        return int(job.get("status", {}).get("succeeded", 0))

    assert wait_for("the Job to succeed", succeeded, interval=POLL) == 1


def test_pod_security_restricted_rejects_a_privileged_pod(
        cluster: lc.Cluster, namespace: str) -> None:
    cluster.kubectl_run("label", "namespace", namespace,
                        "pod-security.kubernetes.io/enforce=restricted")
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
           "spec": {"containers": [{"name": "c", "image": "x.invalid/y",
                                    "securityContext": {"privileged": True}}]}}
    proc = cluster.kubectl_run("apply", "-n", namespace, "-f", "-",
                               input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert 'violates PodSecurity "restricted' in proc.stderr
    assert "privileged" in proc.stderr

    good = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "good"},
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "image": "x.invalid/y", "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.apply(good, namespace)  # a compliant pod is admitted in the same namespace
    assert cluster.kubectl_json("get", "pod", "good", "-n", namespace)["metadata"]["name"]


# ----------------------------------------------------------------------------- life cycle


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localcluster", *args], capture_output=True,
                          text=True, check=False, timeout=300, env=env)


def test_up_on_a_running_cluster_reuses_it(cluster: lc.Cluster) -> None:
    again = lc.up(cluster.state_dir)
    assert again.reused
    assert again.ports == cluster.ports
    proc = run_cli("status", "--state-dir", str(cluster.state_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [p.name for p in lc.processes(cluster.real_node)]
    if cluster.real_node:  # the monitoring stack's and the gateway's parts, one line each
        names += [name for name, _ok, _detail in
                  [*monitoring.health(cluster), *keda.health(cluster),
                   *gateway_install.health(cluster)]]
    for name in names:
        assert f"{name}" in proc.stdout
    assert proc.stdout.count("healthy") == len(names)
    assert "UNHEALTHY" not in proc.stdout and "DEAD" not in proc.stdout


def _pids_using(state_dir: Path) -> list[int]:
    """Processes whose command line mentions ``state_dir`` (ours: certs, data, kubeconfigs)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(state_dir) in cmd and int(p.name) != os.getpid():
            found.append(int(p.name))
    return found


@pytest.mark.slow
def test_isolated_instance_up_twice_dead_component_status_restart_and_down_leaves_nothing(
        cluster: lc.Cluster, tmp_path: Path) -> None:
    state = tmp_path / "second"
    try:
        # The machine's one real node belongs to the shared cluster: this one is simulated.
        proc = run_cli("up", "--state-dir", str(state), "--no-real-node")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "control plane started" in proc.stdout
        second = lc.current(state)
        assert second is not None
        # It runs next to the shared cluster: every port differs (the shared ones are busy).
        assert not set(second.ports.values()) & set(cluster.ports.values())

        proc = run_cli("up", "--state-dir", str(state), "--no-real-node")
        assert proc.returncode == 0
        assert "control plane reused" in proc.stdout
        assert lc.current(state) is not None and lc.current(state).ports == second.ports  # type: ignore[union-attr]

        sched = {s.name: s for s in lc.status(state)}["kube-scheduler"]
        assert sched.pid
        os.kill(sched.pid, signal.SIGKILL)
        wait_for("the scheduler to exit", lambda: not lc._proc_alive(sched.pid), timeout=10,
                 interval=POLL)
        proc = run_cli("status", "--state-dir", str(state))
        assert proc.returncode == 1
        assert "kube-scheduler           DEAD" in proc.stdout
        assert "last lines of" in proc.stdout and "kube-scheduler.log" in proc.stdout

        # `up` on a cluster with a dead component restarts only that one and keeps the data.
        second.kubectl_run("create", "configmap", "kept", "--from-literal=k=v")
        others = {s.name: s.pid for s in lc.status(state) if s.name != "kube-scheduler"}
        proc = run_cli("up", "--state-dir", str(state), "--no-real-node")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "restarting kube-scheduler; keeping the cluster's data" in proc.stdout
        assert lc.is_healthy(state)
        assert not lc._proc_alive(sched.pid, str(paths.binary("kube-scheduler")))
        assert {s.name: s.pid for s in lc.status(state) if s.name != "kube-scheduler"} == others
        assert second.kubectl_run("get", "configmap", "kept").returncode == 0

        # A crashed API server is restarted on its own ports with the same PKI and etcd data.
        api = {s.name: s for s in lc.status(state)}["kube-apiserver"]
        os.kill(api.pid or 0, signal.SIGKILL)
        wait_for("the API server to exit", lambda: not lc._proc_alive(api.pid), timeout=10,
                 interval=POLL)
        proc = run_cli("up", "--state-dir", str(state), "--no-real-node")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "restarting kube-apiserver; keeping the cluster's data" in proc.stdout
        again = lc.current(state)
        assert again is not None and again.ports == second.ports
        assert second.kubectl_run("get", "configmap", "kept").returncode == 0

        proc = run_cli("down", "--state-dir", str(state))
        assert proc.returncode == 0, proc.stderr
        assert "stopped" in proc.stdout
        assert _pids_using(state) == []
        assert sorted(p.name for p in state.iterdir() if p.name != ".lock") == ["logs"]
        assert run_cli("status", "--state-dir", str(state)).returncode == 3
    finally:
        lc.down(state)
    # The shared cluster was not touched.
    assert lc.is_healthy(cluster.state_dir)


def test_up_without_binaries_names_the_build_command(tmp_path: Path) -> None:
    env = dict(os.environ, MSV_CACHE=str(tmp_path / "empty-cache"))
    proc = run_cli("up", "--state-dir", str(tmp_path / "state"), env=env)
    assert proc.returncode == 1
    assert "python -m localcluster build" in proc.stderr
    assert paths.binary("kube-apiserver").is_file()  # the real cache is untouched


@pytest.mark.slow
def test_up_moves_to_other_ports_when_a_chosen_port_is_busy(
        cluster: lc.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    real = lc._free_ports
    calls: list[dict[str, int]] = []

    def first_pick_is_busy(names: list[str]) -> dict[str, int]:
        ports = real(names)
        if not calls:
            ports["kube-apiserver"] = busy_port  # as if someone grabbed it after we looked
        calls.append(ports)
        return ports

    monkeypatch.setattr(lc, "_free_ports", first_pick_is_busy)
    lines: list[str] = []
    state = tmp_path / "busy"
    try:
        c = lc.up(state, out=lines.append, real_node=False)
        assert len(calls) == 2
        assert c.ports["kube-apiserver"] != busy_port
        assert any("retrying on new ports" in line for line in lines), lines
        assert lc.is_healthy(state)
    finally:
        lc.down(state)
        busy.close()
    assert _pids_using(state) == []


def test_simulated_pods_become_ready_again_after_the_node_controller_marked_them_not_ready(
        cluster: lc.Cluster, namespace: str) -> None:
    # After an API-server outage the node-lifecycle controller sets Ready=False (reason
    # NodeNotReady) on the pods of nodes it heard nothing from; kwok must set them back.
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "sim", "namespace": namespace},
                   "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]}})

    def ready() -> bool:
        pod = cluster.kubectl_json("get", "pod", "sim", "-n", namespace)
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in pod.get("status", {}).get("conditions", []))
    wait_for("the simulated pod to be Ready", ready, timeout=60, interval=POLL)
    pod = cluster.kubectl_json("get", "pod", "sim", "-n", namespace)
    conds = [dict(c, status="False", reason="NodeNotReady") if c["type"] == "Ready" else c
             for c in pod["status"]["conditions"]]
    patched = json.loads(cluster.kubectl_run(
        "patch", "pod", "sim", "-n", namespace, "--subresource=status", "--type=merge",
        "-o", "json", "-p", json.dumps({"status": {"conditions": conds}})).stdout)
    assert {c["type"]: c["status"] for c in patched["status"]["conditions"]}["Ready"] == "False"
    wait_for("kwok to set the pod Ready again", ready, timeout=60, interval=POLL)

