"""Shared set-up for the benchmarks that run real pods: the local cluster with its real node,
the in-cluster model store, a private namespace with the CRD, and the operator as a process.

    with real_cluster("rb", prometheus=True) as (c, ns):
        ...

Used by bench/real_pods.py, bench/rollout_rollback.py, bench/autoscale_brownout.py and
bench/scale_from_zero.py (which installs the chart instead: ``operator=False``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from msv_operator import kube

from localcluster import cluster as lc
from localcluster import modelstores, monitoring
from msv_contract.api import LABEL_MODELSERVICE

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "modelservices.serving.modelservice.dev.yaml"
# The tests' helpers: tests/ (modelfactory, waiting, manifests) and tests/integration (the
# cluster-side ones, e.g. helmchart and service_load), importable by their module names as the
# tests import them.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]


def log(line: str) -> None:
    print(line, flush=True)


def stamp(text: str) -> float:
    """An RFC 3339 time from the API (``...Z``) as a Unix timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def get(c: lc.Cluster, *args: str) -> Any:
    """``kubectl get ... -o json``, or None when the object does not exist (yet)."""
    proc = c.kubectl_run("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def api(c: lc.Cluster) -> kube.Kube:
    """A client of the cluster's API on a kept-alive connection, for polling while something
    is timed: a ``kubectl`` process every 0.1 s (``get``) takes most of a core of a 2-core
    machine from the pods being timed; a request on this client costs milliseconds."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(c.kubeconfig),
                                       client_configuration=configuration)
    return kube.Kube("msv-bench", configuration=configuration)


@dataclass
class Timed:
    """A ModelService applied and timed to its first Ready pod (``apply_until_ready``)."""

    seen: dict[str, float]
    """Seconds after the apply: ``deployment`` (the operator made it), ``scheduled``,
    ``pulled`` (the pull init container ended), ``started``, ``ready``."""
    startup: dict[str, Any]
    """``status.variants[0].startup``: the operator's account (whole seconds, but the pull's
    report: ``fetchSeconds``, ``fetchedBytes``, ``cacheHit``)."""
    pod: dict[str, Any] = field(default_factory=dict)
    """The first Ready pod."""

    def phases(self) -> dict[str, float]:
        s = self.seen
        return {"operator": s["deployment"], "scheduling": s["scheduled"] - s["deployment"],
                "sandbox_and_pull": s["pulled"] - s["scheduled"],
                "start_load_ready": s["ready"] - s["pulled"], "total": s["ready"],
                **{f"status_{k.removesuffix('Seconds')}": float(self.startup[k])
                   for k in ("scheduledSeconds", "imageSeconds", "fetchSeconds", "loadSeconds",
                             "totalSeconds")}}


def apply_until_ready(c: lc.Cluster, ms: dict[str, Any], timeout: float = 300) -> Timed:
    """Apply the one-variant ModelService ``ms`` (server-side apply on an open connection:
    the clock starts with the request, not with a ``kubectl`` process) and time its first pod
    to Ready, polling every 0.1 s on that connection; then wait for the operator's
    ``status.variants[0].startup``."""
    ns, name = ms["metadata"]["namespace"], ms["metadata"]["name"]
    variant = ms["spec"]["variants"][0]["name"]
    k = api(c)
    try:
        seen: dict[str, float] = {}
        ready_pod: dict[str, Any] = {}
        k.get("v1", "Namespace", None, ns)  # the connection is set up before the clock starts
        t0 = time.monotonic()
        k.apply(ms)  # one request, as kubectl makes once it has started
        while "ready" not in seen:
            now = time.monotonic() - t0
            if now > timeout:
                raise RuntimeError(f"{name} not Ready after {timeout} s: {seen}")
            if "deployment" not in seen and k.get("apps/v1", "Deployment", ns,
                                                  f"{name}-{variant}"):
                seen["deployment"] = now
            for pod in k.list("v1", "Pod", ns, f"{LABEL_MODELSERVICE}={name}"):
                st = pod.get("status", {})
                if pod["spec"].get("nodeName"):
                    seen.setdefault("scheduled", now)
                init = (st.get("initContainerStatuses") or [{}])[0].get("state", {})
                if "terminated" in init:
                    seen.setdefault("pulled", now)
                main = (st.get("containerStatuses") or [{}])[0].get("state", {})
                if "running" in main:
                    seen.setdefault("started", now)
                if any(x["type"] == "Ready" and x["status"] == "True"
                       for x in st.get("conditions", [])):
                    seen.setdefault("ready", now)
                    ready_pod = ready_pod or pod
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while True:
            got = k.get(ms["apiVersion"], ms["kind"], ns, name) or {}
            startup = ((got.get("status") or {}).get("variants") or [{}])[0].get("startup")
            if startup:
                return Timed(seen, dict(startup), ready_pod)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the operator wrote no status.variants[].startup")
            time.sleep(0.2)
    finally:
        k.close()


def get_ms(c: lc.Cluster, ns: str, name: str) -> dict[str, Any]:
    return get(c, "modelservice", name, "-n", ns) or {}


@contextmanager
def real_cluster(prefix: str, *, prometheus: bool = False, operator: bool = True
                 ) -> Iterator[tuple[lc.Cluster, str]]:
    """Start (or join) the local cluster, which must have its real node; yield it and a new
    namespace watched by an operator process (with the in-cluster Prometheus if asked; no
    process with ``operator=False``: the caller brings its own, e.g. the chart's, or starts
    ``operator_process`` itself). The namespace is deleted and the cluster released
    afterwards."""
    # SIGTERM (timeout, kill) ends the benchmark through its cleanups, like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    c = lc.up(out=log, owner="bench", user=os.getpid())
    if not c.real_node:
        lc.release(c.state_dir)
        raise SystemExit("error: the running cluster has no real node "
                         "(`python -m localcluster down`, then run this benchmark as root)")
    modelstores.deploy(c)
    ns = f"{prefix}-{uuid.uuid4().hex[:5]}"
    c.kubectl_run("create", "namespace", ns)
    c.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    c.wait_established("modelservices.serving.modelservice.dev")
    try:
        if operator:
            with operator_process(c, ns, prometheus=prometheus):
                yield c, ns
        else:
            yield c, ns
    finally:
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
        lc.release(c.state_dir)


@contextmanager
def operator_process(c: lc.Cluster, ns: str, *, prometheus: bool = False,
                     args: Sequence[str] = ()) -> Iterator[None]:
    """The operator as a process on this machine watching ``ns`` (with ``args``)."""
    cmd = [sys.executable, "-m", "msv_operator", "run", "--namespace", ns,
           "--metrics-port", "0", "--health-port", "0", *args]
    if prometheus:
        cmd += ["--prometheus-url", monitoring.PROMETHEUS_URL]
    process = subprocess.Popen(cmd, env=c.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.terminate()
        process.wait(30)
