"""The chart's activator (scaleToZero): off by default; a restricted Deployment of the
operator's image with the contract's scaler port, its Service, PDB and the read-only RBAC of
both namespace modes; the schema's bounds."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import build, paths
from msv_contract import scaletozero as stz

CHART = Path(__file__).resolve().parents[2] / "helm" / "modelservice-operator"
NAME = "rel-modelservice-operator-activator"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if "helm" in build.missing_binaries():
        pytest.fail("helm is not built; run: python -m localcluster build", pytrace=False)
    return subprocess.run([str(paths.helm()), *args], capture_output=True, text=True,
                          check=check)


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "-n", "msv-system"]
    for s in sets:
        args += ["--set-json", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def named(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == NAME]


def rules_of(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r, v) for rule in doc["rules"] for r in rule["resources"] for v in rule["verbs"]}


READS = {(r, v) for r in ("services", "endpointslices") for v in ("get", "list", "watch")}


def test_the_activator_is_off_by_default() -> None:
    assert not [d for d in render() if "activator" in d["metadata"]["name"]]


def test_the_activator_renders_restricted_replicas_a_scaler_service_and_a_pdb() -> None:
    docs = render("scaleToZero.enabled=true", "scaleToZero.activator.holdSeconds=30",
                  "scaleToZero.activator.queue=7")
    (dep,) = named(docs, "Deployment")
    (svc,) = named(docs, "Service")
    (pdb,) = named(docs, "PodDisruptionBudget")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    (c,) = pod["containers"]
    assert c["command"] == ["python3", "-m", "msv_operator.activator"]
    assert {"--queue=7", "--hold-seconds=30", f"--peers-service={NAME}"} <= set(c["args"])
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 30  # held requests may finish
    assert pod["serviceAccountName"] == NAME
    assert {p["port"] for p in svc["spec"]["ports"]} == {stz.SCALER_PORT, 9091}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == labels == pdb["spec"]["selector"]["matchLabels"]
    # the operator's Service does not select the activator
    op = next(d for d in docs if d["metadata"]["name"] == "rel-modelservice-operator-metrics")
    assert op["spec"]["selector"] != svc["spec"]["selector"]
    one = render("scaleToZero.enabled=true", "scaleToZero.activator.replicas=1")
    assert not named(one, "PodDisruptionBudget")


def test_the_activator_reads_only_where_it_must_in_both_namespace_modes() -> None:
    docs = render("scaleToZero.enabled=true")
    (own,) = named(docs, "Role")
    assert own["metadata"]["namespace"] == "msv-system"
    assert rules_of(own) == READS | {("configmaps", v) for v in ("get", "list", "watch")}
    (cluster,) = named(docs, "ClusterRole")
    assert rules_of(cluster) == READS
    namespaced = render("scaleToZero.enabled=true", 'watchNamespaces=["team","msv-system"]')
    assert not named(namespaced, "ClusterRole")
    roles = {d["metadata"]["namespace"]: rules_of(d) for d in named(namespaced, "Role")}
    assert set(roles) == {"msv-system", "team"} and roles["team"] == READS
    bindings = named(namespaced, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"msv-system", "team"}


@pytest.mark.parametrize(("value", "message"), [
    ("scaleToZero.activator.holdSeconds=0", "/scaleToZero/activator/holdSeconds"),
    ("scaleToZero.activator.queue=0", "/scaleToZero/activator/queue"),
    ("scaleToZero.activator.metricsPort=9090", "/scaleToZero/activator/metricsPort"),
    ("scaleToZero.activator.replica=2", "replica"),
])
def test_the_schema_refuses_bad_activator_values(value: str, message: str) -> None:
    out = helm("template", "rel", str(CHART), "--set-json", value, check=False)
    assert out.returncode != 0
    assert message in out.stderr


def test_helm_lint_is_clean_with_the_activator() -> None:
    out = helm("lint", "--strict", str(CHART), "--set", "scaleToZero.enabled=true")
    assert "0 chart(s) failed" in out.stdout


def test_the_operator_is_told_the_activator_service_it_renders() -> None:
    docs = render('scaleToZero={"enabled": true, "kedaPrometheusUrl": "http://prom:9090"}')
    operator = next(d for d in docs if d["kind"] == "Deployment"
                    and d["metadata"]["name"] == "rel-modelservice-operator")
    env = {e["name"]: e.get("value") for c in operator["spec"]["template"]["spec"]["containers"]
           for e in c.get("env") or ()}
    assert env["MSV_ACTIVATOR_SERVICE"] == NAME
    assert env["MSV_KEDA_PROMETHEUS_URL"] == "http://prom:9090"
    service = named(docs, "Service")[0]
    assert stz.SCALER_PORT in [p["port"] for p in service["spec"]["ports"]]
    role = next(d for d in docs if d["kind"] == "Role"
                and d["metadata"]["name"] == "rel-modelservice-operator-scale-to-zero")
    assert ("configmaps", "patch") in rules_of(role)


def test_without_scale_to_zero_the_operator_gets_no_activator() -> None:
    operator = next(d for d in render() if d["kind"] == "Deployment"
                    and d["metadata"]["name"] == "rel-modelservice-operator")
    names = {e["name"] for c in operator["spec"]["template"]["spec"]["containers"]
             for e in c.get("env") or ()}
    assert "MSV_ACTIVATOR_SERVICE" not in names
