"""The gateway in the local cluster: Gateway API's CRDs (experimental channel), the
GatewayClass and Gateway the demo and tests route through, and the data plane's pods.

Like ``localcluster.monitoring``: ``manifests`` (pure) is everything after the CRDs as one
List; ``install`` applies the CRDs, then the manifests, and waits until the Gateway is
``Programmed``; ``health`` reports for ``localcluster status``. Called by
``localcluster.cluster`` on a cluster with the real node (after ``monitoring.install``,
whose CRDs let ``manifests`` add a ServiceMonitor for the gateway's metrics).

- Gateway API ``GATEWAY_API_CHANNEL`` CRDs from the pinned Go module (``addons``): the
  experimental channel carries ``HTTPRoute.spec.rules[].retry``, and XBackendTrafficPolicy
  (the retry budget) is its one ``x-k8s.io`` kind installed;
- GatewayClass ``GATEWAY_CLASS`` (``controllerName`` ``render.CONTROLLER_NAME``), Gateway
  ``GATEWAY`` in namespace ``NAMESPACE``: one HTTP listener on port ``PORT``, routes from
  every namespace;
- Deployment ``msv-gateway`` (one replica on the real node, image ``gateway``:
  ``python -m localcluster.gateway``), ready once nginx serves a configuration rendered from
  a full list; Service ``msv-gateway`` on the fixed cluster IP ``SERVICE_IP``: ``PORT`` ->
  nginx, ``METRICS_PORT`` -> the controller's ``/metrics``;
- RBAC: read the Gateway API kinds, XBackendTrafficPolicies, Services, EndpointSlices and
  Namespaces; update the status of the four kinds the controller writes it for.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import yaml

from localcluster import addons, images
from localcluster.gateway.render import CONTROLLER_NAME, GROUP, POLICY_GROUP
from localcluster.images.recipes import UID

NAMESPACE = "msv-gateway"
NAME = "msv-gateway"
GATEWAY_CLASS = "modelservice-nginx"
GATEWAY = "msv-gateway"
LISTENER = "http"
SERVICE_IP = "10.96.0.70"
PORT = 80
METRICS_PORT = 8080
URL = f"http://{SERVICE_IP}"  # port 80
GATEWAY_API_CHANNEL = "experimental"
RUNTIME_DIR = "/run/msv-gateway"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
REAL_NODE_SELECTOR = {"type": "real"}
"""The real node's label (``localcluster.realnode.NODE_LABELS``); kwok's nodes are tainted
too, so nothing of the data plane lands on a simulated node."""

PART_OF = {"app.kubernetes.io/part-of": "localcluster"}
LABELS = {"app.kubernetes.io/name": NAME, **PART_OF}


class GatewayError(RuntimeError):
    """The gateway did not become ready."""


def parent_ref() -> dict[str, str]:
    """The ``parentRefs`` entry of an HTTPRoute (a ModelService's ``spec.gateway``) that
    routes through the local cluster's Gateway."""
    return {"name": GATEWAY, "namespace": NAMESPACE, "sectionName": LISTENER}


def _rbac() -> list[dict[str, Any]]:
    read = ["get", "list", "watch"]
    rules = [
        {"apiGroups": [GROUP], "resources": ["gatewayclasses", "gateways", "httproutes"],
         "verbs": read},
        {"apiGroups": [GROUP], "resources": ["gatewayclasses/status", "gateways/status",
                                             "httproutes/status"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": [POLICY_GROUP], "resources": ["xbackendtrafficpolicies"], "verbs": read},
        {"apiGroups": [POLICY_GROUP], "resources": ["xbackendtrafficpolicies/status"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": PART_OF}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": NAME, "labels": PART_OF}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, "labels": PART_OF},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
    ]


IMAGE_DIGEST = "modelservice.dev/image-digest"
"""Pod annotation: the gateway image's manifest digest, so an image rebuilt under the same tag
rolls the pod instead of leaving the old code running."""


def image_digest() -> str | None:
    """The built ``gateway`` image's manifest digest (None before it is built)."""
    from localcluster.images import builder

    path = builder.archive_path("gateway").with_suffix(".tar.digest")
    return path.read_text().strip() if path.is_file() else None


def _deployment(digest: str | None = None) -> dict[str, Any]:
    container = {
        "name": "gateway", "image": images.image_ref("gateway"),
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--ports={PORT}", f"--service={NAMESPACE}/{NAME}",
                 f"--metrics-port={METRICS_PORT}", f"--runtime-dir={RUNTIME_DIR}"],
        "ports": [{"name": "http", "containerPort": PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"},
                           "periodSeconds": 2, "failureThreshold": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "run", "mountPath": RUNTIME_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": LABELS},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {
                "labels": LABELS,
                **({"annotations": {IMAGE_DIGEST: digest}} if digest else {})}, "spec": {
                "serviceAccountName": NAME, "nodeSelector": dict(REAL_NODE_SELECTOR),
                # nginx finishes in-flight requests on SIGTERM (the controller's SIGQUIT)
                "terminationGracePeriodSeconds": 30,
                # the edge binds port 80 as a non-root user (a namespaced, safe sysctl)
                "securityContext": {"sysctls": [
                    {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                "containers": [container],
                "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            }}}}


def manifests(service_monitor: bool = False, digest: str | None = None) -> dict[str, Any]:
    """Everything ``install`` applies after the CRDs, as one List (``service_monitor``: add a
    ServiceMonitor for the metrics port; needs prometheus-operator's CRDs; ``digest``: the
    image's manifest digest, a pod annotation)."""
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": PART_OF}},
        *_rbac(),
        {"apiVersion": f"{GROUP}/v1", "kind": "GatewayClass",
         "metadata": {"name": GATEWAY_CLASS, "labels": PART_OF},
         "spec": {"controllerName": CONTROLLER_NAME,
                  "description": "nginx (Debian) driven by localcluster.gateway"}},
        {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY, "namespace": NAMESPACE, "labels": PART_OF},
         "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [
             {"name": LISTENER, "port": PORT, "protocol": "HTTP",
              "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
        _deployment(digest),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
         "spec": {"clusterIP": SERVICE_IP, "selector": LABELS, "ports": [
             {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
             {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics",
              "protocol": "TCP"}]}},
    ]
    if service_monitor:
        items.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": PART_OF},
            "spec": {"selector": {"matchLabels": LABELS},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "5s"}]}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


# -- Installing and checking -----------------------------------------------------------------


def crd_names() -> list[str]:
    """The names of the Gateway API CRDs ``install`` applies."""
    names = []
    for f in addons.crd_files("gateway-api"):
        for doc in yaml.load_all(f.read_text(), Loader=yaml.BaseLoader):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(str(doc["metadata"]["name"]))
    return names


def _gateway_condition(cluster: Any, type_: str) -> tuple[bool, str]:
    proc = cluster.kubectl_run("get", f"gateways.{GROUP}", GATEWAY, "-n", NAMESPACE,
                               "-o", "json", check=False)
    if proc.returncode != 0:
        return False, proc.stderr.strip() or "Gateway missing"
    conds = {c["type"]: c for c in json.loads(proc.stdout).get("status", {})
             .get("conditions", [])}
    cond = conds.get(type_, {})
    return cond.get("status") == "True", str(cond.get("message") or "no condition yet")


def _deployment_ready(cluster: Any) -> tuple[bool, str]:
    proc = cluster.kubectl_run("get", "deployment", NAME, "-n", NAMESPACE, "-o", "json",
                               check=False)
    if proc.returncode != 0:
        return False, f"deployment {NAMESPACE}/{NAME} missing"
    dep = json.loads(proc.stdout)
    st = dep.get("status", {})
    ready, want = int(st.get("readyReplicas", 0)), int(st.get("replicas", 0))
    # A re-apply that changed the template (a rebuilt image) counts once the new pod serves.
    current = st.get("observedGeneration") == dep["metadata"].get("generation") and \
        int(st.get("updatedReplicas", 0)) == want
    return want > 0 and ready == want and current, f"{ready}/{want} ready" + (
        "" if current else ", rolling out")


def install(cluster: Any, timeout: float = 180, out: Callable[[str], None] = print) -> None:
    """Apply the Gateway API CRDs and the manifests, then wait until the data plane is ready
    and the Gateway ``Programmed``. Idempotent (server-side apply)."""
    t0 = time.monotonic()
    files = addons.crd_files("gateway-api")
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts",
                        *(a for f in files for a in ("-f", str(f))), timeout=120)
    cluster.wait_established(*crd_names(), timeout=60)
    monitor = cluster.kubectl_run("get", "crd", SERVICE_MONITOR_CRD, check=False).returncode == 0
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-",
                        input=json.dumps(manifests(service_monitor=monitor,
                                                   digest=image_digest())))
    out(f"  gateway: Gateway API CRDs ({GATEWAY_API_CHANNEL}) and manifests applied "
        f"({time.monotonic() - t0:.1f} s)")
    hint = (f"see: kubectl get pods -n {NAMESPACE}; kubectl logs -n {NAMESPACE} deploy/{NAME}; "
            f"kubectl get gateway -n {NAMESPACE} {GATEWAY} -o yaml")
    deadline = t0 + timeout
    for what, check in (("the gateway's pod", lambda: _deployment_ready(cluster)),
                        (f"Gateway {NAMESPACE}/{GATEWAY} Programmed",
                         lambda: _gateway_condition(cluster, "Programmed"))):
        while True:
            ok, detail = check()
            if ok:
                break
            if time.monotonic() > deadline:
                raise GatewayError(f"{what} not ready after {timeout:.0f} s ({detail}); {hint}")
            time.sleep(0.5)
    out(f"  gateway: {URL} programmed ({time.monotonic() - t0:.1f} s)")


def retry_counters(namespace: str, service: str, timeout: float = 10) -> dict[str, float]:
    """The retries the running gateway allowed and refused so far for a backend Service
    (``{"allowed": n, "rejected": n}``), from its controller's ``/metrics`` on the Service's
    metrics port (the counters are the gateway pod's: docs/gateway.md#retry-budget)."""
    from localcluster.gateway.controller import METRICS

    with urllib.request.urlopen(f"http://{SERVICE_IP}:{METRICS_PORT}/metrics",
                                timeout=timeout) as r:
        text = r.read().decode()
    out = {"allowed": 0.0, "rejected": 0.0}
    head = METRICS["retries"] + "{"
    for line in text.splitlines():
        if not line.startswith(head):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[len(head):line.index("}")]))
        if labels.get("namespace") == namespace and labels.get("service") == service:
            out[labels["result"]] = float(line.rsplit(" ", 1)[1])
    return out


def health(cluster: Any) -> list[tuple[str, bool, str]]:
    """(name, healthy, detail) of the data plane and its Gateway, for ``localcluster status``."""
    ok, detail = _deployment_ready(cluster)
    report = [(NAME, ok, f"{detail} (deployment {NAMESPACE})")]
    ok, detail = _gateway_condition(cluster, "Programmed")
    report.append((f"gateway {GATEWAY}", ok, f"{URL} " + ("Programmed" if ok else detail)))
    return report
