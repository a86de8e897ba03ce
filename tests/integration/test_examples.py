"""Every manifest in examples/ applies cleanly and becomes a Ready ModelService.

The operator runs as a real process (`msv-operator run --namespace <ns>`) against the local
cluster, in a namespace that opts into simulation (the examples name models in stores that do
not exist here): kwok marks the pods Running and Ready once the scheduler placed them, so this
proves the manifests, the operator's objects and the scheduling — a GPU example becomes Ready
only if its pods land on GPU nodes — not serving, which tests/integration/test_real_pods.py
covers with pods that run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from waiting import wait_for

from localcluster import cluster as lc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "kustomization.yaml")



@pytest.fixture
def operator_process(crd: None, cluster: lc.Cluster, namespace: str,
                     tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "operator.log").open("wb")
    env = {**os.environ, **cluster.env, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msv_operator", "run", "--namespace", namespace,
         "--metrics-port", "0", "--health-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    yield proc
    assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
    proc.terminate()
    proc.wait(timeout=30)


def test_kustomization_lists_every_example() -> None:
    listed = yaml.safe_load((ROOT / "examples" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_becomes_ready(example: Path, cluster: lc.Cluster, namespace: str,
                               operator_process: subprocess.Popen[bytes]) -> None:
    body = yaml.safe_load(example.read_text())
    name = body["metadata"]["name"]
    cluster.kubectl_run("apply", "-n", namespace, "-f", str(example))

    def ready(ms: dict[str, Any]) -> bool:
        status = ms.get("status") or {}
        conds = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        return bool(conds and conds[0]["status"] == "True"
                    and status.get("observedGeneration") == ms["metadata"]["generation"])

    status = wait_for(f"{example.name} to become Ready", lambda: cluster.kubectl_json(
        "get", "modelservice", name, "-n", namespace), timeout=120, interval=0.5,
        until=ready)["status"]

    variants = [v["name"] for v in body["spec"].get("variants", [{"name": "baseline"}])]
    assert sorted(v["name"] for v in status["variants"]) == sorted(variants)
    if "gpu" in body["spec"]:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    f"serving.modelservice.dev/modelservice={name}")["items"]
        nodes = {p["spec"]["nodeName"] for p in pods}
        assert nodes and all(n.startswith("gpu-a100") for n in nodes), nodes
