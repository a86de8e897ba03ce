"""The chart's node-local model cache agents on the real node, for real-pod tests and benches.

``agents(cluster, cap=...)`` renders the chart's ``templates/model-cache.yaml`` (``helm
template`` with ``modelCache.enabled``) into a namespace of its own (Pod Security
``privileged``: the agents mount a hostPath), limited to the real node, with a cache directory
of its own under the cluster's state directory; it yields an ``Agent`` (the Service URL the
operator passes to the pulls, the real node's agent metrics, the directory) and removes all of
it afterwards. Used by tests/integration/test_model_cache_real.py and bench/model_cache.py.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from operator_harness import api
from realpods import REAL_NODE
from waiting import wait_for

from localcluster import cluster as lc
from msv_contract import modelcache as mc

CHART = Path(__file__).resolve().parents[2] / "helm" / "modelservice-operator"


@dataclass
class Agent:
    url: str
    """The agents' Service, as the pulls get it."""
    metrics_url: str
    """The real node's agent pod."""
    root: Path
    """Its cache directory on the node (this machine)."""

    def metrics(self) -> dict[str, float]:
        """Its counters and gauges, unlabelled samples by name (``_total`` included)."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(mc.PREFIX) and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out


@contextmanager
def agents(cluster: lc.Cluster, *, cap: int) -> Iterator[Agent]:
    """The agents (``cap`` bytes of cache on the node), Ready on the real node."""
    ns = f"msv-cache-{uuid.uuid4().hex[:6]}"
    root = cluster.state_dir / f"model-cache-{ns}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    rendered = subprocess.run(
        [str(cluster.helm), "template", "msv-cache", str(CHART), "-n", ns,
         "--show-only", "templates/model-cache.yaml", "--set", "modelCache.enabled=true",
         "--set", f"modelCache.maxBytes={cap}", "--set", f"modelCache.hostPath={root}",
         "--set", f"modelCache.nodeSelector.kubernetes\\.io/hostname={REAL_NODE}",
         "--set", "modelCache.tolerations=null"],
        capture_output=True, text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {d["kind"] for d in docs} == {"DaemonSet", "Service"}, docs
    k = api(cluster.kubeconfig)
    try:
        for doc in docs:
            cluster.apply(doc)
        svc = next(d for d in docs if d["kind"] == "Service")
        name = svc["metadata"]["name"]

        def agent_pod() -> dict[str, Any] | None:
            for pod in k.list("v1", "Pod", ns):
                statuses = (pod.get("status") or {}).get("containerStatuses") or []
                if pod["spec"].get("nodeName") == REAL_NODE and statuses \
                        and all(s.get("ready") for s in statuses):
                    return pod
            return None
        pod = wait_for("the model cache agent Ready on the real node", agent_pod, timeout=180,
                       interval=1)
        ip = wait_for(f"Service {ns}/{name}", lambda: (k.get("v1", "Service", ns, name) or {})
                      .get("spec", {}).get("clusterIP"), timeout=30)
        port = svc["spec"]["ports"][0]["port"]
        yield Agent(f"http://{ip}:{port}", f"http://{pod['status']['podIP']}:{port}"
                    f"{mc.METRICS_PATH}", root)
    finally:
        k.close()
        cluster.kubectl_run("delete", "namespace", ns, "--wait=true", "--timeout=120s",
                            check=False)
        shutil.rmtree(root, ignore_errors=True)
