"""KEDA in a cluster with the real node: event-driven autoscaling, down to zero replicas.

Like ``localcluster.monitoring``: ``manifests`` (pure apart from reading upstream's RBAC from
the pinned module) is everything after the CRDs as one List; ``install`` applies KEDA's CRDs
(``addons``), then the manifests, and waits until both pods are ready and
``external.metrics.k8s.io`` is Available; ``health`` reports for ``localcluster status``.
Both binaries are built from ``github.com/kedacore/keda/v2`` (``localcluster build keda``)
and packaged as the images ``keda`` and ``keda-adapter`` (``localcluster.images``).

- namespace ``keda`` (upstream's: its RBAC names it): the operator (Deployment
  ``keda-operator``) and the metrics adapter (Deployment ``keda-metrics-apiserver``), pods on
  the real node, where kube-proxy makes every Service IP reachable: the in-cluster
  Prometheus (``monitoring.PROMETHEUS_URL``) for ``prometheus`` triggers, and any
  ``external`` scaler by its Service's cluster IP;
- the cluster has no DNS: the adapter reaches the operator's metrics service (gRPC, mutual
  TLS) on the fixed cluster IP ``OPERATOR_IP`` and presents the Service's DNS name as the
  authority, the name the operator's self-made certificate is for;
- the operator makes and rotates the certificates (Secret ``kedaorg-certs``) and writes the
  CA into the APIService ``v1beta1.external.metrics.k8s.io``; the admission webhooks are not
  installed (``--enable-webhook-patching=false``);
- RBAC is upstream's (``config/rbac``, ``config/metrics-server``), read from the module.

prometheus-adapter serves ``custom.metrics.k8s.io`` only, so the two APIServices do not meet.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from localcluster import addons, images, monitoring, network, versions

NAMESPACE = "keda"
OPERATOR = "keda-operator"
ADAPTER = "keda-metrics-apiserver"
SERVICE_ACCOUNT = "keda-operator"
OPERATOR_IP = "10.96.0.92"
METRICS_SERVICE_PORT = 9666  # the operator's gRPC metrics service, which the adapter asks
CERT_SECRET = "kedaorg-certs"
EXTERNAL_METRICS_API = "v1beta1.external.metrics.k8s.io"

MODULE = "github.com/kedacore/keda/v2"
RBAC_FILES = ("config/rbac/role.yaml", "config/rbac/role_binding.yaml",
              "config/metrics-server/role.yaml", "config/metrics-server/role_binding.yaml")

PART_OF = monitoring.PART_OF


class KedaError(RuntimeError):
    """KEDA did not become ready."""


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, **PART_OF}


def _deployment(name: str, image: str, args: list[str], ports: Sequence[tuple[str, int]],
                probe: dict[str, Any], *, secret_optional: bool) -> dict[str, Any]:
    labels = _labels(name)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": SERVICE_ACCOUNT, "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                    "args": args,
                    "env": [{"name": "POD_NAMESPACE",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "WATCH_NAMESPACE", "value": ""}],
                    "ports": [{"name": n, "containerPort": p} for n, p in ports],
                    "readinessProbe": {**probe, "periodSeconds": 2},
                    "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                    "securityContext": monitoring.security(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                     {"name": "certificates", "mountPath": "/certs",
                                      "readOnly": True}]}],
                "volumes": [{"name": "tmp", "emptyDir": {}},
                            # The operator writes the Secret; the adapter waits for it.
                            {"name": "certificates", "secret": {
                                "secretName": CERT_SECRET, "optional": secret_optional}}]}}}}


def _service(name: str, ports: Sequence[tuple[str, int, int]], cluster_ip: str | None = None
             ) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": _labels(name),
                            "ports": [{"name": n, "port": p, "targetPort": t}
                                      for n, p, t in ports]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": _labels(name)},
            "spec": spec}


def _upstream(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream RBAC object with the local cluster's label (its names kept)."""
    meta = dict(doc["metadata"])
    meta["labels"] = {**meta.get("labels", {}), **PART_OF}
    return {**doc, "metadata": meta}


def stack(rbac: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The namespace, upstream's RBAC, both Deployments, their Services and the APIService."""
    authority = f"{OPERATOR}.{NAMESPACE}.svc.{network.CLUSTER_DOMAIN}"
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": PART_OF}},
        monitoring.service_account(SERVICE_ACCOUNT, NAMESPACE),
        *(_upstream(d) for d in rbac),
        _deployment(OPERATOR, images.image_ref("keda"), [
            "--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339",
            "--enable-cert-rotation=true", f"--cert-secret-name={CERT_SECRET}",
            "--cert-dir=/certs", f"--k8s-cluster-domain={network.CLUSTER_DOMAIN}",
            f"--operator-service-name={OPERATOR}", f"--metrics-server-service-name={ADAPTER}",
            "--enable-webhook-patching=false",
            "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081",
            f"--metrics-service-bind-address=:{METRICS_SERVICE_PORT}",
        ], (("http", 8080), ("probes", 8081), ("metricsservice", METRICS_SERVICE_PORT)),
            {"httpGet": {"path": "/readyz", "port": "probes"}}, secret_optional=True),
        _service(OPERATOR, (("metricsservice", METRICS_SERVICE_PORT, METRICS_SERVICE_PORT),
                            ("metrics", 8080, 8080)), cluster_ip=OPERATOR_IP),
        _deployment(ADAPTER, images.image_ref("keda-adapter"), [
            "--secure-port=6443", "--zap-log-level=error", "--cert-dir=/certs",
            "--client-ca-file=/certs/ca.crt", "--tls-cert-file=/certs/tls.crt",
            "--tls-private-key-file=/certs/tls.key",
            f"--metrics-service-address={OPERATOR_IP}:{METRICS_SERVICE_PORT}",
            f"--metrics-service-grpc-authority={authority}",
        ], (("https", 6443), ("metrics", 8080)),
            {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}},
            secret_optional=False),
        _service(ADAPTER, (("https", 443, 6443), ("metrics", 8080, 8080))),
        # No caBundle and no insecureSkipTLSVerify: the operator writes its CA in (a field
        # this apply does not own, so applying again keeps it).
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": EXTERNAL_METRICS_API, "labels": PART_OF},
         "spec": {"service": {"name": ADAPTER, "namespace": NAMESPACE},
                  "group": "external.metrics.k8s.io", "version": "v1beta1",
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]
    return items


def manifests() -> dict[str, Any]:
    """Everything ``install`` applies after the CRDs, as one List."""
    root = addons.module_dir(MODULE, versions.KEDA)
    rbac = [d for rel in RBAC_FILES for d in yaml.safe_load_all((root / rel).read_text()) if d]
    return {"apiVersion": "v1", "kind": "List", "items": stack(rbac)}


def install(cluster: Any, timeout: float = 180, out: Callable[[str], None] = print) -> None:
    """Apply KEDA's CRDs and the stack, then wait until both Deployments are ready and the
    external metrics API is Available. Idempotent (server-side apply)."""
    t0 = time.monotonic()
    crds = addons.crd_files("keda")
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts",
                        *(a for f in crds for a in ("-f", str(f))))
    cluster.wait_established(*(yaml.safe_load(f.read_text())["metadata"]["name"]
                               for f in crds), timeout=60)
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-",
                        input=json.dumps(manifests()))
    out(f"  keda: CRDs and manifests applied ({time.monotonic() - t0:.1f} s)")

    def hint() -> str:
        return (f"pods now: {monitoring.pod_summary(cluster, NAMESPACE)}; see: kubectl get "
                f"pods -n {NAMESPACE}; kubectl logs -n {NAMESPACE} deploy/{OPERATOR}; "
                f"kubectl logs -n {NAMESPACE} deploy/{ADAPTER}")

    for name in (OPERATOR, ADAPTER):
        ready = functools.partial(monitoring.workload_ready, cluster, "deployment", name,
                                  NAMESPACE)
        monitoring.poll(f"the Deployment {NAMESPACE}/{name}", ready, timeout, hint)
    monitoring.poll(f"the APIService {EXTERNAL_METRICS_API}",
                    lambda: monitoring.api_available(cluster, EXTERNAL_METRICS_API), timeout,
                    hint)
    out(f"  keda: external.metrics.k8s.io Available ({time.monotonic() - t0:.1f} s)")


def health(cluster: Any) -> list[tuple[str, bool, str]]:
    """(name, healthy, detail) for each part, for ``localcluster status``."""
    report = [(name, *monitoring.workload_ready(cluster, "deployment", name, NAMESPACE))
              for name in (OPERATOR, ADAPTER)]
    ok, detail = monitoring.api_available(cluster, EXTERNAL_METRICS_API)
    report.append(("external.metrics.k8s.io", ok, detail or "Available"))
    return report
