"""Live ModelServices as Flux (the real kstatus library) and Argo CD (the health Lua) read them.

Every version of each ModelService the API server stores is captured with a watch (``kubectl
get -w``), so the test sees each status the operator wrote, not only the ones a poll happens
to catch: an ``InvalidSpec`` one is ``Failed``/``Degraded`` from its first status on; a good one
is ``InProgress``/``Progressing`` first and ``Current``/``Healthy`` once every replica is ready.
Pods are simulated by kwok.

Also: every accepted field acts or says why not (``FieldsIgnored``), and a variant's
``model.derivedFrom`` shows in its status.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest
from gitops_status import argocd_health, kstatus
from manifests import MS_API, modelservice
from msv_operator import kube
from operator_harness import RunningOperator, condition
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow

# Admitted by the CRD, refused by the operator (TorchScript has compiled layer shapes).
INVALID = {"model": {"uri": "s3://models/ts", "framework": "torchscript"},
           "variants": [{"name": "int8", "optimization": {"quantization": "dynamic-int8"}}]}


class Versions:
    """Every stored version of the ModelServices of one namespace, in order (a kubectl watch)."""

    def __init__(self, cluster: lc.Cluster, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "get",
             "modelservices", "-n", namespace, "-w", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.objects: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buf = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buf += line
            while True:
                stripped = buf.lstrip()
                try:
                    obj, end = decoder.raw_decode(stripped)
                except json.JSONDecodeError:
                    break
                buf = stripped[end:]
                with self.lock:
                    self.objects.append(obj)

    def of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [o for o in self.objects if o["metadata"]["name"] == name]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _compress(seq: list[str]) -> list[str]:
    return [s for i, s in enumerate(seq) if i == 0 or seq[i - 1] != s]


def test_flux_and_argocd_read_live_modelservices_right(
        operator: RunningOperator, k: kube.Kube, namespace: str, cluster: lc.Cluster) -> None:
    versions = Versions(cluster, namespace)
    try:
        k.apply(modelservice("broken", namespace, **INVALID))
        # Once the watch has delivered the first object it is established: nothing after
        # this point can be missed.
        wait_for("the watch to deliver", lambda: versions.of("broken"), timeout=30)
        k.apply(modelservice("good", namespace, replicas=2))

        def stalled() -> bool:
            c = condition(k.get(MS_API, "ModelService", namespace, "broken"), "Stalled")
            return c.get("status") == "True"

        def ready() -> bool:
            ms = k.get(MS_API, "ModelService", namespace, "good") or {}
            return (condition(ms, "Ready").get("status") == "True"
                    and condition(ms, "Reconciling").get("status") == "False"
                    and ms["status"].get("observedGeneration") == ms["metadata"]["generation"])

        wait_for("broken: Stalled=True", stalled, timeout=60)
        wait_for("good: Ready=True, Reconciling=False", ready, timeout=120)
        wait_for("the watch to deliver the final versions", lambda: (
            condition(versions.of("good")[-1], "Ready").get("status") == "True"
            and condition(versions.of("broken")[-1], "Stalled").get("status") == "True"),
            timeout=30)
    finally:
        versions.stop()

    broken, good = versions.of("broken"), versions.of("good")
    # Flux: the first status the operator wrote already fails; nothing after it says otherwise.
    written = [o for o in broken if condition(o, "Ready")]
    assert written, broken
    assert {r["status"] for r in kstatus(written)} == {"Failed"}
    assert "spec.variants[0].optimization" in kstatus(written[-1:])[0]["message"]
    assert {argocd_health(o)["status"] for o in written} == {"Degraded"}

    # The version the watch saw first may already carry a status; never a non-failed one.
    assert _compress([r["status"] for r in kstatus(broken)]) in (
        ["InProgress", "Failed"], ["Failed"])
    # From creation on (the CRD defaults status.observedGeneration to 0 until the operator
    # writes: kstatus reads a status-less object as Current) in progress, then current.
    assert good[0].get("status") == {"observedGeneration": 0}, good[0].get("status")
    assert _compress([r["status"] for r in kstatus(good)]) == ["InProgress", "Current"]
    assert _compress([argocd_health(o)["status"] for o in good]) == ["Progressing", "Healthy"]
    # Ready=True only ever with both replicas ready (Deployment-style minimum availability).
    for o in good:
        if condition(o, "Ready").get("status") == "True":
            assert [v["readyReplicas"] for v in o["status"]["variants"]] == [2], o["status"]


def test_fields_that_cannot_act_are_reported_and_provenance_is_shown(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    monitors = k.served("monitoring.coreos.com/v1", "servicemonitors")
    routes = k.served("gateway.networking.k8s.io/v1", "httproutes")
    k.apply(modelservice(
        "fields", namespace,
        variants=[{"name": "baseline"},
                  {"name": "distilled", "model": {"uri": "s3://models/distilled",
                                                  "derivedFrom": "s3://models/sentiment"},
                   "optimization": {"quantization": "dynamic-int8"}}],
        traffic=[{"variant": "baseline", "weight": 100}, {"variant": "distilled", "weight": 0}],
        monitoring={"serviceMonitor": "enabled", "interval": "30s"},
        gateway={"parentRefs": [{"name": "gw"}]}))
    # spec.gateway is named either way: without Gateway API it cannot act; with it, its parent
    # Gateway "gw" does not exist (GatewayNotReady).
    expected = ([] if monitors else ["spec.monitoring.serviceMonitor", "spec.monitoring.interval"]
                ) + ["spec.gateway"]
    want_reason = "GatewayNotReady" if routes and monitors else None

    def named(c: dict[str, Any]) -> list[str]:
        return [part.split(":", 1)[0] for part in c["message"].split("; ")]

    def reported() -> dict[str, Any] | None:
        ms = k.get(MS_API, "ModelService", namespace, "fields") or {}
        c = condition(ms, "FieldsIgnored")
        return ms if c and c.get("status") == "True" and named(c) == expected else None

    ms = wait_for(f"FieldsIgnored naming {expected}", reported, timeout=60)
    c = condition(ms, "FieldsIgnored")
    if want_reason:
        assert c["reason"] == want_reason, c
    assert ms["status"].get("observedGeneration") == 1
    by_name = {v["name"]: v for v in ms["status"]["variants"]}
    assert by_name["distilled"]["derivedFrom"] == "s3://models/sentiment"
    assert by_name["distilled"]["optimization"] == "dynamic-int8"
    assert "derivedFrom" not in by_name["baseline"]
    # Ignored fields are information, not a failure: Flux and Argo CD still see it progress.
    assert condition(ms, "Stalled").get("status") == "False"
