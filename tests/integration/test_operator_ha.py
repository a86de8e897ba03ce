"""High availability against the real API server: two ``msv-operator run --leader-election``
processes share one Lease; only the holder writes; kill -9 of the holder hands over after the
lease duration, a graceful stop hands over at once (the Lease is released); a replica whose
Lease was taken stops writing at once."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from manifests import MS_API, modelservice
from msv_operator import kube, leader
from msv_operator.config import OperatorConfig
from operator_harness import OperatorProcess, condition, free_port
from waiting import wait_for

# serial: two operator processes race for a 15 s Lease and the test reads which one wrote;
# the other worker's load on the 2-core machine once let a hand-over outrun the test's view
# (a flake seen once in three parallel runs), so it runs alone after the parallel session.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

LEASE = "msv-test-leader"
REPLICAS = ("replica-a", "replica-b")


def ha_args(namespace: str, identity: str, duration: float = 6.0) -> list[str]:
    return ["--leader-election", "--lease-name", LEASE, "--lease-namespace", namespace,
            "--identity", identity, "--lease-duration", str(duration),
            "--renew-deadline", str(duration * 2 / 3), "--retry-period", "0.5"]


def holder(k: kube.Kube, namespace: str) -> str:
    return leader.lease_holder(k.lease(namespace, LEASE, 10))


def reconciled(k: kube.Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelService once an operator wrote its status for the current generation."""
    ms = k.get(MS_API, "ModelService", namespace, name)
    status = (ms or {}).get("status") or {}
    if ms and status.get("observedGeneration") == ms["metadata"]["generation"] \
            and condition(ms, "Ready"):
        return ms
    return None


@pytest.fixture
def replicas(crd: None, namespace: str) -> Iterator[dict[str, OperatorProcess]]:
    # The chart's lease timing: a leader starved of CPU for a few seconds on this busy
    # 2-core machine must not lose the Lease in the middle of the test (a 6 s lease did).
    procs = {name: OperatorProcess(namespace, *ha_args(namespace, name, duration=15.0),
                                   name=name)
             for name in REPLICAS}
    try:
        for p in procs.values():
            p.wait_up()
        yield procs
    finally:
        for p in procs.values():
            p.close()


def writes(p: OperatorProcess) -> float:
    """Every write the operator counted: applies, status patches, prunes, errors."""
    return (p.total("msv_operator_applies_total") + p.total("msv_operator_status_writes_total")
            + p.total("msv_operator_prunes_total") + p.total("msv_operator_reconciles_total"))


def test_only_the_leader_writes_and_kill_9_hands_over(
        replicas: dict[str, OperatorProcess], k: kube.Kube, namespace: str) -> None:
    assert wait_for("a holder of the Lease", lambda: holder(k, namespace), timeout=30) in REPLICAS
    k.apply(modelservice("one", namespace))
    wait_for("one reconciled", lambda: reconciled(k, namespace, "one"), timeout=60)
    # Whoever held the Lease when the pass ran (on a loaded machine it may have changed hands
    # since the first look) applied it; the other wrote nothing, not even a reconcile pass.
    applied = {n: p.total("msv_operator_applies_total") for n, p in replicas.items()}
    writers = [n for n, count in applied.items() if count >= 2]  # Deployment + Service
    assert len(writers) == 1, applied
    first = writers[0]
    other = next(n for n in REPLICAS if n != first)
    assert writes(replicas[other]) == 0, replicas[other].scrape()
    assert holder(k, namespace) == first

    replicas[first].kill()
    k.apply(modelservice("two", namespace))
    wait_for(f"{other} to take the Lease", lambda: holder(k, namespace) == other, timeout=60)
    ms = wait_for("two reconciled by the new leader",
                  lambda: reconciled(k, namespace, "two"), timeout=60)
    assert k.get("apps/v1", "Deployment", namespace, "two-baseline") is not None
    assert replicas[other].total("msv_operator_applies_total") >= 2
    assert ms["status"]["observedGeneration"] == 1
    lease = k.lease(namespace, LEASE, 10)
    assert lease is not None and lease["spec"]["leaseTransitions"] >= 1
    assert replicas[other].alive


def test_graceful_stop_releases_the_lease(
        crd: None, k: kube.Kube, namespace: str) -> None:
    # A long lease: only a released Lease lets the standby in before the old one expires.
    procs = [OperatorProcess(namespace, *ha_args(namespace, name, duration=120.0), name=name)
             for name in REPLICAS]
    try:
        for p in procs:
            p.wait_up()
        first = wait_for("a holder of the Lease", lambda: holder(k, namespace), timeout=30)
        leader_proc = next(p for p in procs if p.name == first)
        standby = next(p for p in procs if p.name != first)
        assert leader_proc.terminate() == 0, leader_proc.tail()
        assert "Released the Lease" in leader_proc.tail()
        # Right after the exit the Lease no longer names the stopped replica.
        assert holder(k, namespace) in ("", standby.name)
        wait_for("the standby to take the Lease",
                 lambda: holder(k, namespace) == standby.name, timeout=30)
        k.apply(modelservice("after", namespace))
        wait_for("after reconciled", lambda: reconciled(k, namespace, "after"), timeout=60)
        assert standby.total("msv_operator_applies_total") >= 2
    finally:
        for p in procs:
            p.close()


def test_a_replica_whose_lease_is_taken_stops_writing_at_once(
        cluster: Any, k: kube.Kube, namespace: str) -> None:
    config = OperatorConfig(namespaces=(namespace,), leader_election=True, lease_name=LEASE,
                            lease_namespace=namespace, identity="in-process",
                            lease_duration=60.0, renew_deadline=40.0, retry_period=0.2)
    changes: list[bool] = []
    flipped = threading.Event()

    def on_change(leading: bool) -> None:
        changes.append(leading)
        flipped.set()

    elector = leader.Elector(config, on_change=on_change).start()
    gated = kube.Kube("msv-tests-gated", write_gate=elector.leading)
    try:
        wait_for("the Lease", elector.leading, timeout=30)
        probe = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "probe", "namespace": namespace}}
        gated.apply(probe)  # the leader may write
        lease = k.lease(namespace, LEASE, 10)
        assert lease is not None
        lease["spec"]["holderIdentity"] = "thief"
        k.write_lease(lease, 10)
        # Well before the renew deadline (40 s): the next renewal sees the thief.
        wait_for("the elector to give up", lambda: not elector.leading(), timeout=30)
        with pytest.raises(kube.NotLeader):
            gated.apply(probe)
        wait_for("the change reported", flipped.is_set, timeout=10)
        assert changes == [True, False]
        assert holder(k, namespace) == "thief"
    finally:
        elector.stop()
        gated.close()
    assert holder(k, namespace) == "thief", "a replica that lost must not release the thief's Lease"


def test_a_standby_answers_healthz_and_runs_no_operator(
        crd: None, k: kube.Kube, namespace: str) -> None:
    k.write_lease({"apiVersion": kube.LEASE_API, "kind": "Lease",
                   "metadata": {"name": LEASE, "namespace": namespace},
                   "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600}}, 10)
    port = free_port()
    p = OperatorProcess(namespace, *ha_args(namespace, "standby", duration=60.0),
                        "--health-port", str(port), name="standby")
    try:
        p.wait_up()
        k.apply(modelservice("waits", namespace))
        def healthz() -> Any:
            try:
                return json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=2).read())
            except OSError as e:  # the health endpoint may start after /metrics
                raise AssertionError(f"/healthz not answering yet: {e}") from e

        answer = wait_for("the standby's /healthz", healthz, timeout=30)
        assert answer == {"leader": False, "state": "standby"}
        assert "Started the ModelService operator" not in p.tail()
        assert writes(p) == 0
        ms = k.get(MS_API, "ModelService", namespace, "waits")
        assert ms is not None and not (ms.get("status") or {}).get("conditions")
        assert holder(k, namespace) == "elsewhere"
    finally:
        p.close()
