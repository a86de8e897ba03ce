"""Fault campaign: the operator killed -9 at random moments during a burst of creates, updates
and deletes; kube-apiserver and etcd restarted under 200 ModelServices. After each fault the
operator converges on its own: no orphan, no duplicate, no lost ModelService, nothing left of
deleted ones; while the API server is away it does not spin (its CPU is measured).

The random moments come from a seeded generator (the seed is printed, ``MSV_FAULT_SEED``
replays a run). Component restarts use the private control plane (``private_cluster``):
restarting the shared one would disturb other tests.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from manifests import MS_API, modelservice
from msv_operator import kube, leader
from operator_harness import LABEL_MODELSERVICE, OperatorProcess, api, condition
from waiting import wait_for

from localcluster import cluster as lc

# serial: 200 ModelServices and restarts of a control plane load the 2-core machine, and the
# operator's CPU is measured while the API server is away; nothing else runs meanwhile.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

OWNED_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"),
               ("autoscaling/v2", "HorizontalPodAutoscaler"))


def seed() -> int:
    value = int(os.environ.get("MSV_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"fault campaign seed: {value} (replay with MSV_FAULT_SEED={value})")
    return value


def variants_spec(variants: list[str], autoscale: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"variants": [{"name": v} for v in variants]}
    if len(variants) > 1:
        weights = [100 // len(variants)] * len(variants)
        weights[0] += 100 - sum(weights)
        spec["traffic"] = [{"variant": v, "weight": w} for v, w in zip(variants, weights,
                                                                       strict=True)]
    if autoscale:
        spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2}
    return spec


def expected_objects(name: str, spec: dict[str, Any]) -> set[tuple[str, str]]:
    variants = [v["name"] for v in spec["variants"]]
    out = {("Service", name)}
    for v in variants:
        out.add(("Deployment", f"{name}-{v}"))
        if len(variants) > 1:
            out.add(("Service", f"{name}-{v}"))
        if "autoscaling" in spec:
            out.add(("HorizontalPodAutoscaler", f"{name}-{v}"))
    return out


def owned_objects(k: kube.Kube, ns: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for api_version, kind in OWNED_KINDS:
        for obj in k.list(api_version, kind, ns):
            if LABEL_MODELSERVICE in (obj["metadata"].get("labels") or {}):
                out.append(obj)
    return out


def converged(k: kube.Kube, ns: str, wanted: dict[str, dict[str, Any]],
              ready: bool = True) -> str | None:
    """None when the namespace holds exactly what ``wanted`` says, every ModelService's status
    is written for its generation (and, with ``ready``, says Ready); else what differs."""
    items = k.list(MS_API, "ModelService", ns)
    live = {ms["metadata"]["name"]: ms for ms in items}
    if set(live) != set(wanted):
        return f"ModelServices {sorted(live)} != {sorted(wanted)}"
    for name, ms in live.items():
        status = ms.get("status") or {}
        is_ready = condition(ms, "Ready").get("status") == "True"
        if status.get("observedGeneration") != ms["metadata"]["generation"] or (
                ready and not is_ready):
            return f"{name} not Ready at its generation: {status.get('conditions')}"
    found: dict[str, set[tuple[str, str]]] = {}
    for obj in owned_objects(k, ns):
        meta = obj["metadata"]
        owner = meta["labels"][LABEL_MODELSERVICE]
        refs = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
        if meta.get("deletionTimestamp"):
            return f"{obj['kind']} {meta['name']} still being deleted"
        if owner not in live:
            return f"orphan: {obj['kind']} {meta['name']} of deleted {owner}"
        if [r["uid"] for r in refs] != [live[owner]["metadata"]["uid"]]:
            return f"{obj['kind']} {meta['name']} owned by {refs}, not the live {owner}"
        found.setdefault(owner, set()).add((obj["kind"], meta["name"]))
    for name in wanted:
        want = expected_objects(name, live[name]["spec"])
        if found.get(name, set()) != want:
            return f"{name}: objects {sorted(found.get(name, set()))} != {sorted(want)}"
    return None


def all_ready(k: kube.Kube, ns: str, wanted: dict[str, dict[str, Any]],
              ready: bool = True) -> bool:
    diff = converged(k, ns, wanted, ready)
    if diff is not None:
        raise AssertionError(diff)
    return True


class Burst(threading.Thread):
    """Random creates, updates and deletes of ``names`` until ``stop``; ``wanted`` is the
    end state the user asked for (name -> spec)."""

    def __init__(self, k: kube.Kube, ns: str, rng: random.Random, names: list[str]) -> None:
        super().__init__(name="burst", daemon=True)
        self.k, self.ns, self.rng, self.names = k, ns, rng, names
        self.wanted: dict[str, dict[str, Any]] = {}
        self.ops = {"create": 0, "update": 0, "delete": 0}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
                time.sleep(self.rng.uniform(0.01, 0.08))
        except BaseException as e:  # surfaced by the test
            self.error = e

    def step(self) -> None:
        name = self.rng.choice(self.names)
        if name in self.wanted and self.rng.random() < 0.3:
            self.k.delete(MS_API, "ModelService", self.ns, name, None)
            del self.wanted[name]
            self.ops["delete"] += 1
            return
        variants = self.rng.choice([["baseline"], ["baseline", "int8"], ["a", "b", "c"]])
        spec = variants_spec(variants, autoscale=self.rng.random() < 0.3)
        self.ops["update" if name in self.wanted else "create"] += 1
        # Server-side apply: a field this manager applied before and leaves out now is removed.
        self.k.apply(modelservice(name, self.ns, **spec))
        self.wanted[name] = spec


def test_kill_9_at_random_moments_during_a_burst_loses_and_leaves_nothing(
        crd: None, k: kube.Kube, namespace: str) -> None:
    rng = random.Random(seed())
    burst = Burst(k, namespace, rng, [f"ms-{i}" for i in range(24)])
    burst.start()
    kills: list[float] = []
    try:
        for _ in range(10):
            op = OperatorProcess(namespace, "--log-level", "WARNING", name="victim")
            moment = rng.uniform(0.3, 4.0)  # from before its first list to mid-burst
            time.sleep(moment)
            op.kill()
            kills.append(round(moment, 2))
    finally:
        burst.stop.set()
        burst.join(30)
    assert burst.error is None, burst.error
    print(f"killed at {kills} s after start; burst {burst.ops}")
    assert sum(burst.ops.values()) >= 50 and burst.ops["delete"] >= 5, burst.ops

    final = OperatorProcess(namespace, "--log-level", "WARNING", name="survivor")
    try:
        final.wait_up()
        wait_for("the namespace to converge", lambda: all_ready(k, namespace, burst.wanted),
                 timeout=180, interval=1.0)
        assert final.alive, final.tail()
    finally:
        final.close()


# ---------------------------------------------------------------------- control-plane faults

MANY = 200


@pytest.fixture
def populated(private_cluster: lc.Cluster) -> Iterator[tuple[lc.Cluster, kube.Kube, str]]:
    c = private_cluster
    ns = f"fault-{random.randrange(1 << 20):05x}"
    c.kubectl_run("create", "namespace", ns)
    k = api(c.kubeconfig)
    try:
        for i in range(MANY):
            k.apply(modelservice(f"m-{i:03d}", ns))
        yield c, k, ns
    finally:
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
        k.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def component_pid(c: lc.Cluster, name: str) -> int:
    pid = {s.name: s.pid for s in lc.status(c.state_dir)}[name]
    assert pid, f"{name} is not running"
    return pid


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_the_operator_rides_out_a_control_plane_restart_without_spinning(
        populated: tuple[lc.Cluster, kube.Kube, str], component: str) -> None:
    c, k, ns = populated
    wanted = {f"m-{i:03d}": variants_spec(["baseline"], False) for i in range(MANY)}
    env = dict(os.environ, KUBECONFIG=str(c.kubeconfig))
    op = OperatorProcess(ns, "--log-level", "WARNING", "--resync-seconds", "30",
                         name="operator", env=env)
    try:
        op.wait_up()
        # 200 pods do not all fit on the two simulated CPU nodes: reconciled, not Ready.
        wait_for(f"{MANY} ModelServices reconciled", lambda: all_ready(k, ns, wanted, False),
                 timeout=300, interval=2.0)
        log_before = len(op.tail(10_000_000))

        os.kill(component_pid(c, component), signal.SIGKILL)
        wait_for(f"{component} down", lambda: not lc.is_healthy(c.state_dir), timeout=30)
        cpu0, t0 = cpu_seconds(op.proc.pid), time.monotonic()
        time.sleep(15)  # the outage itself: what the operator does meanwhile is measured
        outage_cpu = cpu_seconds(op.proc.pid) - cpu0
        outage = time.monotonic() - t0
        assert op.alive, op.tail()
        lc.up(c.state_dir, timeout=180, real_node=False)  # restarts only the dead component
        share = outage_cpu / outage
        print(f"{component} outage {outage:.1f} s: operator CPU {outage_cpu:.2f} s "
              f"({100 * share:.1f}% of one core)")
        assert share < 0.25, "the operator spins while the API server is away"

        # It resumes on its own: changes made after the restart are reconciled.
        for i in range(0, MANY, 40):
            spec = variants_spec(["baseline", "int8"], False)
            k.apply(modelservice(f"m-{i:03d}", ns, **spec))
            wanted[f"m-{i:03d}"] = spec
        k.delete(MS_API, "ModelService", ns, "m-199", None)
        del wanted["m-199"]
        wait_for("convergence after the restart", lambda: all_ready(k, ns, wanted, False),
                 timeout=300, interval=2.0)
        assert op.alive, op.tail()
        during = op.tail(10_000_000)[log_before:]
        errors = [line for line in during.splitlines() if " ERROR " in line]
        print(f"{len(errors)} ERROR lines during and after the outage")
    finally:
        op.close()


def test_an_elected_pair_rides_out_an_api_server_restart(
        private_cluster: lc.Cluster, tmp_path: Any) -> None:
    """The leader cannot renew while the API server is away: it stops writing and exits 1
    (its Deployment would restart it as a standby); the standby takes the stale Lease when
    the API server is back and reconciles."""
    c = private_cluster
    ns = f"fault-ha-{random.randrange(1 << 20):05x}"
    c.kubectl_run("create", "namespace", ns)
    k = api(c.kubeconfig)
    env = dict(os.environ, KUBECONFIG=str(c.kubeconfig))
    args = ["--leader-election", "--lease-name", "ha", "--lease-namespace", ns,
            "--lease-duration", "6", "--renew-deadline", "4", "--retry-period", "0.5"]
    procs = {name: OperatorProcess(ns, *args, "--identity", name, name=name, env=env)
             for name in ("a", "b")}
    try:
        for p in procs.values():
            p.wait_up()
        wanted = {f"m-{i}": variants_spec(["baseline"], False) for i in range(5)}
        for name in wanted:
            k.apply(modelservice(name, ns))
        wait_for("5 reconciled", lambda: all_ready(k, ns, wanted, False), timeout=120)
        first = leader_of(k, ns)
        os.kill(component_pid(c, "kube-apiserver"), signal.SIGKILL)
        wait_for("the leader to step down", lambda: procs[first].proc.poll() is not None,
                 timeout=60)
        assert procs[first].proc.returncode == 1, procs[first].tail()
        assert "lost the Lease" in procs[first].tail()
        lc.up(c.state_dir, timeout=180, real_node=False)
        other = next(n for n in procs if n != first)
        wait_for("the standby to lead", lambda: leader_of(k, ns) == other, timeout=60)
        wanted["m-new"] = variants_spec(["baseline"], False)
        k.apply(modelservice("m-new", ns))
        wait_for("converged under the new leader", lambda: all_ready(k, ns, wanted, False),
                 timeout=120)
        assert procs[other].alive, procs[other].tail()
    finally:
        for p in procs.values():
            p.close()
        k.close()
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)


def leader_of(k: kube.Kube, ns: str) -> str:
    return leader.lease_holder(k.lease(ns, "ha", 10))
