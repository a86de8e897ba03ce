"""The Helm chart on a real cluster: running ``helm``, KEDA's readiness, and the chart installed
with scale to zero on, as the integration tests (test_helm*.py, test_scale_to_zero_real.py) and
bench/scale_from_zero.py install it.

    wait_for_keda(cluster)
    install_scale_to_zero(cluster, "msv-zero-1a2b3c", watched="my-namespace")
    ...
    uninstall(cluster, "msv-zero-1a2b3c")
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from waiting import wait_for

from localcluster import cluster as lc
from localcluster import keda as lk
from localcluster import monitoring

CHART = Path(__file__).resolve().parents[2] / "helm" / "modelservice-operator"
HELM_TIMEOUT_S = 330.0
"""How long one ``helm`` process may run: beyond the longest ``--timeout`` given to it here."""
INSTALL_TIMEOUT = "300s"
"""``helm --timeout`` of the scale-to-zero install (its pods ready, ``--wait``)."""
HOLD_SECONDS = 150
"""The activator's ``holdSeconds`` in the scale-to-zero install: a request to a ModelService
at zero waits that long for a pod (a client's timeout for a cold request)."""
MEASURE_SECONDS = 5
"""``prometheus.measureSeconds``: the operator's measurement window, short for tests."""


class HelmError(RuntimeError):
    """A ``helm`` command failed."""


def helm(cluster: lc.Cluster, *args: str, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    """``helm <args>`` against ``cluster``; with ``check``, a non-zero exit raises
    ``HelmError`` with helm's stderr."""
    proc = subprocess.run([str(cluster.helm), f"--kubeconfig={cluster.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc


def keda_unhealthy(cluster: lc.Cluster) -> list[tuple[str, bool, str]]:
    """KEDA's parts that are not healthy (``localcluster.keda.health``'s rows, as
    ``localcluster status`` shows them); empty when KEDA answers."""
    return [row for row in lk.health(cluster) if not row[1]]


def wait_for_keda(cluster: lc.Cluster, timeout: float = 180) -> None:
    """Until KEDA's operator and metrics adapter are ready and the external metrics API is
    Available (the local cluster installs KEDA when it is built)."""
    wait_for("KEDA healthy (operator, metrics adapter, external.metrics.k8s.io)",
             lambda: keda_unhealthy(cluster), timeout=timeout, interval=2,
             until=lambda bad: not bad)


def install_scale_to_zero(cluster: lc.Cluster, release: str, watched: str) -> None:
    """The chart as release ``release`` in a namespace of the same name, watching namespace
    ``watched``, with scale to zero on (the operator and the activator as pods); KEDA and the
    operator ask the cluster's Prometheus by its IP (the cluster has no DNS). The CRD is the
    caller's (``crds.install=false``)."""
    helm(cluster, "upgrade", "--install", release, str(CHART), "-n", release,
         "--create-namespace",
         "--set", f"watchNamespaces={{{watched}}}", "--set", "crds.install=false",
         "--set", f"prometheus.url={monitoring.PROMETHEUS_URL}",
         "--set", f"prometheus.measureSeconds={MEASURE_SECONDS}",
         "--set", "scaleToZero.enabled=true",
         "--set", f"scaleToZero.kedaPrometheusUrl={monitoring.PROMETHEUS_URL}",
         "--set", f"scaleToZero.activator.holdSeconds={HOLD_SECONDS}",
         "--wait", f"--timeout={INSTALL_TIMEOUT}")


def uninstall(cluster: lc.Cluster, release: str) -> None:
    """Release ``release`` and its namespace gone (best effort: the namespace is deleted
    without waiting)."""
    helm(cluster, "uninstall", release, "-n", release, check=False)
    cluster.kubectl_run("delete", "namespace", release, "--wait=false", check=False)
