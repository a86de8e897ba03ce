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
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from msv_operator import kube

from localcluster import cluster as lc
from localcluster import modelstores, monitoring

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


def get_ms(c: lc.Cluster, ns: str, name: str) -> dict[str, Any]:
    return get(c, "modelservice", name, "-n", ns) or {}


@contextmanager
def real_cluster(prefix: str, *, prometheus: bool = False, operator: bool = True
                 ) -> Iterator[tuple[lc.Cluster, str]]:
    """Start (or join) the local cluster, which must have its real node; yield it and a new
    namespace watched by an operator process (with the in-cluster Prometheus if asked; no
    process with ``operator=False``: the caller brings its own, e.g. the chart's).
    The namespace is deleted and the cluster released afterwards."""
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
    cmd = [sys.executable, "-m", "msv_operator", "run", "--namespace", ns,
           "--metrics-port", "0", "--health-port", "0"]
    if prometheus:
        cmd += ["--prometheus-url", monitoring.PROMETHEUS_URL]
    process = subprocess.Popen(cmd, env=c.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) if operator else None
    try:
        yield c, ns
    finally:
        if process:
            process.terminate()
            process.wait(30)
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
        lc.release(c.state_dir)
