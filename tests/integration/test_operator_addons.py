"""Run-time capability discovery: scrape annotations without the Prometheus Operator CRDs, a
ServiceMonitor once they are installed; an HTTPRoute with weighted backends once Gateway API is.

The add-on CRDs are cluster-wide and other test sessions share the control plane, so these tests
install them (from their Go modules, via ``localcluster crds``) and never remove them. The
"without" half of each test runs only when the CRDs are not installed yet; the "with" half then
proves that the running operator notices the new API on its own and converts existing
ModelServices (no restart).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from manifests import modelservice
from msv_operator import kube
from operator_harness import LABEL_MODELSERVICE, RunningOperator
from waiting import wait_for

from localcluster import addons
from localcluster import cluster as lc

# serial: installing the add-on CRDs changes what every running operator discovers (other
# tests expect what the cluster served when they started: test_operator_gitops_status.py).
pytestmark = [pytest.mark.slow, pytest.mark.serial]

SCRAPE = "prometheus.io/scrape"


@pytest.fixture
def operator(crd: None, namespace: str) -> Iterator[RunningOperator]:
    op = RunningOperator([namespace], discovery_seconds=1.0).start()
    yield op
    assert op.alive
    op.stop()


def install(cluster: lc.Cluster, addon: str, crd_names: list[str]) -> None:
    wanted = {"{1}_{0}.yaml".format(*name.split(".", 1)) for name in crd_names}
    for path in addons.crd_files(addon):
        if path.name in wanted:
            cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(path),
                                timeout=120)
    cluster.wait_established(*crd_names)


def template_annotations(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    dep = k.get("apps/v1", "Deployment", ns, name)
    assert dep is not None
    return dict(dep["spec"]["template"]["metadata"].get("annotations") or {})


def test_scrape_annotations_then_servicemonitor_when_the_crds_appear(
        operator: RunningOperator, k: kube.Kube, namespace: str, cluster: lc.Cluster) -> None:
    already = k.served("monitoring.coreos.com/v1", "servicemonitors")
    k.apply(modelservice("mon", namespace, monitoring={"serviceMonitor": "auto"}))
    wait_for("the Deployment", lambda: k.get("apps/v1", "Deployment", namespace,
                                             "mon-baseline"), timeout=60)
    if not already:
        annotations = template_annotations(k, namespace, "mon-baseline")
        assert annotations.get(SCRAPE) == "true", annotations
        assert annotations.get("prometheus.io/port") == "8080"
        install(cluster, "prometheus-operator", ["servicemonitors.monitoring.coreos.com"])

    def monitor() -> list[dict[str, Any]]:
        return k.list("monitoring.coreos.com/v1", "ServiceMonitor", namespace,
                      f"{LABEL_MODELSERVICE}=mon")

    monitors = wait_for("a ServiceMonitor", monitor, timeout=60)
    assert [m["metadata"]["name"] for m in monitors] == ["mon"]
    spec = monitors[0]["spec"]
    # The selector picks the Services with a variant label (each pod scraped once): with one
    # variant that is the stable Service, its only Service.
    terms = [f"{k_}={v}" for k_, v in (spec["selector"].get("matchLabels") or {}).items()]
    for e in spec["selector"].get("matchExpressions") or []:
        if e["operator"] == "In":
            terms.append(f"{e['key']} in ({','.join(e['values'])})")
        elif e["operator"] == "Exists":
            terms.append(e["key"])
    selected = k.list("v1", "Service", namespace, ",".join(terms))
    assert sorted(svc["metadata"]["name"] for svc in selected) == ["mon"]
    assert any(e.get("path", "/metrics") == "/metrics" for e in spec["endpoints"])
    wait_for("the scrape annotations removed",
             lambda: SCRAPE not in template_annotations(k, namespace, "mon-baseline"),
             timeout=60)


def test_httproute_with_weighted_backends_when_gateway_api_is_served(
        operator: RunningOperator, k: kube.Kube, namespace: str, cluster: lc.Cluster) -> None:
    install(cluster, "gateway-api", ["httproutes.gateway.networking.k8s.io"])
    k.apply(modelservice(
        "route", namespace,
        variants=[{"name": "baseline"}, {"name": "int8",
                                         "optimization": {"quantization": "dynamic-int8"}}],
        traffic=[{"variant": "baseline", "weight": 80}, {"variant": "int8", "weight": 20}],
        gateway={"parentRefs": [{"name": "inference", "namespace": namespace}]}))

    def route() -> dict[str, Any] | None:
        return k.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "route")

    found = wait_for("the HTTPRoute", route, timeout=60)
    backends = [b for rule in found["spec"]["rules"] for b in rule.get("backendRefs", [])]
    assert {(b["name"], b["weight"]) for b in backends} == {("route-baseline", 80),
                                                             ("route-int8", 20)}
    assert found["spec"]["parentRefs"][0]["name"] == "inference"
    refs = found["metadata"]["ownerReferences"]
    assert refs[0]["kind"] == "ModelService" and refs[0]["controller"] is True

    # Shift traffic: the route follows.
    body = modelservice(
        "route", namespace,
        variants=[{"name": "baseline"}, {"name": "int8",
                                         "optimization": {"quantization": "dynamic-int8"}}],
        traffic=[{"variant": "baseline", "weight": 50}, {"variant": "int8", "weight": 50}],
        gateway={"parentRefs": [{"name": "inference", "namespace": namespace}]})
    k.apply(body)

    def shifted() -> bool:
        r = route() or {"spec": {"rules": []}}
        return {b["weight"] for rule in r["spec"]["rules"]
                for b in rule.get("backendRefs", [])} == {50}

    wait_for("weights 50/50 in the HTTPRoute", shifted, timeout=60)
