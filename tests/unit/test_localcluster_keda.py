"""localcluster.keda: KEDA's manifests (operator, metrics adapter, RBAC, APIService) for the
local cluster, which has no DNS and already runs prometheus-adapter."""

from __future__ import annotations

import functools
import ipaddress
import shutil
from typing import Any

import pytest

from localcluster import images, keda, modelstores, monitoring, network
from localcluster.gateway import install as gateway_install

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")


def _by_kind(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in items:
        out.setdefault(obj["kind"], []).append(obj)
    return out


@functools.cache
def _manifests() -> dict[str, Any]:
    return keda.manifests()  # reads the module once per session (a go command)


def _stack() -> dict[str, list[dict[str, Any]]]:
    return _by_kind(_manifests()["items"])


@needs_go
def test_keda_owns_external_metrics_and_prometheus_adapter_keeps_custom_metrics() -> None:
    (api,) = _stack()["APIService"]
    assert api["metadata"]["name"] == keda.EXTERNAL_METRICS_API
    assert api["spec"]["service"] == {"name": keda.ADAPTER, "namespace": keda.NAMESPACE}
    # The operator writes its CA in; a skip-verify flag beside it would be rejected.
    assert "insecureSkipTLSVerify" not in api["spec"] and "caBundle" not in api["spec"]
    theirs = {a["metadata"]["name"] for a in _by_kind(monitoring.manifests()["items"])
              ["APIService"]}
    assert keda.EXTERNAL_METRICS_API not in theirs
    assert monitoring.CUSTOM_METRICS_API in theirs


@needs_go
def test_the_adapter_reaches_the_operator_by_its_fixed_ip_with_the_certificates_name() -> None:
    stack = _stack()
    services = {s["metadata"]["name"]: s["spec"] for s in stack["Service"]}
    op_svc = services[keda.OPERATOR]
    assert op_svc["clusterIP"] == keda.OPERATOR_IP
    assert {"name": "metricsservice", "port": keda.METRICS_SERVICE_PORT,
            "targetPort": keda.METRICS_SERVICE_PORT} in op_svc["ports"]
    deployments = {d["metadata"]["name"]: d for d in stack["Deployment"]}
    (adapter,) = deployments[keda.ADAPTER]["spec"]["template"]["spec"]["containers"]
    assert f"--metrics-service-address={keda.OPERATOR_IP}:{keda.METRICS_SERVICE_PORT}" \
        in adapter["args"]
    # The operator's certificate is for the Service's DNS names (it is told the service name
    # and cluster domain); the adapter presents the full one as the gRPC authority.
    (operator,) = deployments[keda.OPERATOR]["spec"]["template"]["spec"]["containers"]
    assert f"--operator-service-name={keda.OPERATOR}" in operator["args"]
    assert f"--k8s-cluster-domain={network.CLUSTER_DOMAIN}" in operator["args"]
    assert (f"--metrics-service-grpc-authority={keda.OPERATOR}.{keda.NAMESPACE}.svc."
            f"{network.CLUSTER_DOMAIN}") in adapter["args"]
    # Each Service selects its Deployment's pods.
    for name in (keda.OPERATOR, keda.ADAPTER):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert services[name]["selector"].items() <= labels.items()


@needs_go
def test_both_pods_run_the_locally_built_images_with_the_operators_certificates() -> None:
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"]
                   for d in _stack()["Deployment"]}
    for name, image in ((keda.OPERATOR, "keda"), (keda.ADAPTER, "keda-adapter")):
        (c,) = deployments[name]["containers"]
        assert c["image"] == images.image_ref(image) and image in images.NAMES
        assert {"name": "certificates", "mountPath": "/certs", "readOnly": True} \
            in c["volumeMounts"]
        assert deployments[name]["serviceAccountName"] == keda.SERVICE_ACCOUNT
        assert {e["name"] for e in c["env"]} >= {"POD_NAMESPACE", "WATCH_NAMESPACE"}
    secrets = {name: [v["secret"] for v in spec["volumes"] if "secret" in v]
               for name, spec in deployments.items()}
    # The operator starts before its Secret exists; the adapter waits for it.
    assert secrets[keda.OPERATOR] == [{"secretName": keda.CERT_SECRET, "optional": True}]
    assert secrets[keda.ADAPTER] == [{"secretName": keda.CERT_SECRET, "optional": False}]


@needs_go
def test_upstreams_rbac_binds_accounts_that_exist() -> None:
    stack = _stack()
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"])
                for a in stack["ServiceAccount"]}
    # The controller-manager's HPA controller reads external metrics as its own account.
    accounts.add(("kube-system", "horizontal-pod-autoscaler"))
    bindings = stack["ClusterRoleBinding"] + stack["RoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} >= {
        "keda-operator", "keda-external-metrics-reader", "system:auth-delegator",
        "extension-apiserver-authentication-reader"}
    for b in bindings:
        for subject in b["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
    namespaced = [o for kind in ("Role", "RoleBinding", "Deployment", "Service")
                  for o in stack[kind]]
    assert {o["metadata"]["namespace"] for o in namespaced} <= {keda.NAMESPACE, "kube-system"}
    (role,) = [r for r in stack["ClusterRole"] if r["metadata"]["name"] == "keda-operator"]
    assert any("scaledobjects" in rule.get("resources", []) for rule in role["rules"])


def test_the_operators_ip_is_a_free_service_ip() -> None:
    fixed = [monitoring.PROMETHEUS_IP, gateway_install.SERVICE_IP, modelstores.HTTP_IP,
             modelstores.S3_IP]
    assert keda.OPERATOR_IP not in fixed
    assert ipaddress.ip_address(keda.OPERATOR_IP) in ipaddress.ip_network(network.SERVICE_CIDR)
