"""The real metrics pipeline of a cluster with the real node: Prometheus, run by
prometheus-operator from the ServiceMonitors in every namespace, and metrics-server.

Owns the manifests (``manifests``, pure), installing them (``install``: the operator's CRDs,
then the objects, then waiting until Prometheus answers and ``metrics.k8s.io`` is Available),
a health report (``health``) and the helpers tests and the operator use to read Prometheus:
``PROMETHEUS_URL`` (a fixed Service IP, reached through kube-proxy like the model stores),
``query(promql)``, ``wait_for_query`` and ``wait_for_target`` (they poll; nothing sleeps and
hopes). Every binary is built from Go modules (``localcluster build``) and packaged by
``localcluster.images``; the upstream ClusterRoles are read from the same pinned modules.

- namespace ``monitoring``: the ``prometheus-operator`` Deployment and one ``Prometheus``
  (``k8s``: every ServiceMonitor and PodMonitor of every namespace, 5 s scrape and rule
  interval, 2 h retention, an emptyDir), behind the Service ``prometheus`` on
  ``10.96.0.90:9090``;
- ``prometheus-adapter`` in ``monitoring``: ``custom.metrics.k8s.io`` (v1beta1, v1beta2) from
  that Prometheus, per pod: ``model_server_inflight_requests`` (what the operator's in-flight
  HPAs ask for) and ``model_server_requests_per_second`` (rate of the requests counter);
- namespace ``kube-system``: ``metrics-server`` (APIService ``v1beta1.metrics.k8s.io``),
  scraping the real kubelet's ``/metrics/resource``. kwok's simulated nodes are not scraped
  (``--node-selector type=real``): their pods have no resource metrics.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from localcluster import addons, images, versions
from msv_contract import metrics as m

NAMESPACE = "monitoring"
METRICS_NAMESPACE = "kube-system"
PROMETHEUS_NAME = "k8s"
PROMETHEUS_IP = "10.96.0.90"
PROMETHEUS_PORT = 9090
PROMETHEUS_URL = f"http://{PROMETHEUS_IP}:{PROMETHEUS_PORT}"
SCRAPE_INTERVAL = "5s"
RETENTION = "2h"
RELOADER_INTERVAL = "5s"  # how often Prometheus's config reloader re-reads the config
METRICS_API = "v1beta1.metrics.k8s.io"
CUSTOM_METRICS_API = "v1beta1.custom.metrics.k8s.io"
METRIC_RESOLUTION = "10s"  # metrics-server's scrape period (its minimum)

PART_OF = {"app.kubernetes.io/part-of": "localcluster"}

# The upstream ClusterRoles, read from the pinned modules (the data they ship, not built).
OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
METRICS_SERVER_MODULE = "sigs.k8s.io/metrics-server"
OPERATOR_ROLE = "example/rbac/prometheus-operator/prometheus-operator-cluster-role.yaml"
PROMETHEUS_ROLE = "example/rbac/prometheus/prometheus-cluster-role.yaml"
METRICS_SERVER_RBAC = "manifests/base/rbac.yaml"
ADAPTER_MODULE = "sigs.k8s.io/prometheus-adapter"
ADAPTER_ROLE = "deploy/manifests/cluster-role.yaml"
CUSTOM_METRICS_VERSIONS = ("v1beta1", "v1beta2")

# Per-pod custom metrics from the model servers' own series (labels namespace/pod come from
# the ServiceMonitor's relabelling). Relisted every 10 s so a new pod's series appear fast.
_PER_POD = f'{{{m.LABEL_NAMESPACE}!="",{m.LABEL_POD}!=""}}'
_RESOURCES = {"overrides": {m.LABEL_NAMESPACE: {"resource": "namespace"},
                            m.LABEL_POD: {"resource": "pod"}}}
ADAPTER_CONFIG = {"rules": [
    {"seriesQuery": m.INFLIGHT + _PER_POD,
     "resources": _RESOURCES,
     "name": {"matches": f"^{m.INFLIGHT}$", "as": m.INFLIGHT},
     "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"},
    {"seriesQuery": m.total(m.REQUESTS) + _PER_POD,
     "resources": _RESOURCES,
     "name": {"matches": f"^{m.total(m.REQUESTS)}$", "as": m.REQUESTS_PER_SECOND},
     "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[30s])) by (<<.GroupBy>>)"},
]}


class MonitoringError(RuntimeError):
    """The stack did not become ready, or Prometheus did not answer as asked."""


# -- Manifests (pure: upstream documents in, objects out) ------------------------------------


def security(user: int = 65534) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": user, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def binding(name: str, role: str, sa: str, namespace: str, *, kind: str = "ClusterRoleBinding",
             role_kind: str = "ClusterRole", in_namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": PART_OF}
    if in_namespace:
        meta["namespace"] = in_namespace
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}


def service_account(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": PART_OF}}


def _deployment(name: str, namespace: str, image: str, args: list[str], port: tuple[str, int],
                probe: dict[str, Any], sa: str, config_map: str | None = None
                ) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, **PART_OF}
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if config_map:
        mounts.append({"name": "config", "mountPath": "/etc/config", "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": config_map}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"serviceAccountName": sa, "terminationGracePeriodSeconds": 1,
                     "containers": [{
                         "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                         "args": args, "ports": [{"name": port[0], "containerPort": port[1]}],
                         "readinessProbe": {**probe, "periodSeconds": 2},
                         "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                         "securityContext": security(),
                         "volumeMounts": mounts}],
                     "volumes": volumes}}}}


def prometheus_stack(operator_role: Mapping[str, Any], prometheus_role: Mapping[str, Any]
                     ) -> list[dict[str, Any]]:
    """prometheus-operator, its ``Prometheus`` and the fixed-IP Service in front of it."""
    op_image = images.image_ref("prometheus-operator")
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": PART_OF}},
        {**operator_role, "metadata": {"name": "prometheus-operator", "labels": PART_OF}},
        service_account("prometheus-operator", NAMESPACE),
        binding("prometheus-operator", "prometheus-operator", "prometheus-operator", NAMESPACE),
        {**prometheus_role, "metadata": {"name": "localcluster-prometheus", "labels": PART_OF}},
        service_account("prometheus", NAMESPACE),
        binding("localcluster-prometheus", "localcluster-prometheus", "prometheus", NAMESPACE),
        _deployment("prometheus-operator", NAMESPACE, op_image, [
            f"--prometheus-config-reloader={op_image}",
            "--web.listen-address=:8080", "--log-level=info",
        ], ("http", 8080), {"tcpSocket": {"port": "http"}}, "prometheus-operator"),
    ]
    prom_version = "v" + _prometheus_release()
    items.append({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": PROMETHEUS_NAME, "namespace": NAMESPACE, "labels": PART_OF},
        "spec": {
            "image": images.image_ref("prometheus"), "version": prom_version,
            "imagePullPolicy": "IfNotPresent", "replicas": 1,
            "serviceAccountName": "prometheus",
            "serviceMonitorSelector": {}, "serviceMonitorNamespaceSelector": {},
            "podMonitorSelector": {}, "podMonitorNamespaceSelector": {},
            "scrapeInterval": SCRAPE_INTERVAL, "evaluationInterval": SCRAPE_INTERVAL,
            "retention": RETENTION,
            "resources": {"requests": {"cpu": "10m", "memory": "128Mi"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "fsGroup": 65534,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            # The config reloader notices the Secret prometheus-operator rewrites only on its
            # 3-minute poll (the kubelet's symlink swap gives it no usable event): a new
            # ServiceMonitor took up to 3 min to become a target. The operator exposes no
            # setting for it, so patch the sidecar's arguments (the operator's own, plus the
            # interval; strategic merge by container name replaces the list).
            "containers": [{"name": "config-reloader", "args": [
                "--listen-address=:8080", f"--reload-url=http://localhost:{PROMETHEUS_PORT}/-/reload",
                "--config-file=/etc/prometheus/config/prometheus.yaml.gz",
                "--config-envsubst-file=/etc/prometheus/config_out/prometheus.env.yaml",
                f"--watched-dir=/etc/prometheus/rules/prometheus-{PROMETHEUS_NAME}-rulefiles-0",
                f"--watch-interval={RELOADER_INTERVAL}"]}],
        }})
    items.append({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "prometheus", "namespace": NAMESPACE, "labels": PART_OF},
        "spec": {"clusterIP": PROMETHEUS_IP,
                 "selector": {"app.kubernetes.io/name": "prometheus",
                              "operator.prometheus.io/name": PROMETHEUS_NAME},
                 "ports": [{"name": "web", "port": PROMETHEUS_PORT, "targetPort": "web"}]}})
    return items


def metrics_server_stack(rbac: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """metrics-server with upstream's RBAC, its Service and the metrics.k8s.io APIService."""
    items: list[dict[str, Any]] = []
    for doc in rbac:
        obj = dict(doc)
        meta = {**obj["metadata"], "labels": {**obj["metadata"].get("labels", {}), **PART_OF}}
        if obj["kind"] in ("ServiceAccount", "RoleBinding"):
            meta.setdefault("namespace", METRICS_NAMESPACE)
        if "subjects" in obj:
            obj["subjects"] = [{**s, "namespace": METRICS_NAMESPACE} for s in obj["subjects"]]
        items.append({**obj, "metadata": meta})
    items.append(_deployment("metrics-server", METRICS_NAMESPACE,
                             images.image_ref("metrics-server"), [
        "--cert-dir=/tmp", "--secure-port=10250",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port", f"--metric-resolution={METRIC_RESOLUTION}",
        "--kubelet-request-timeout=5s",  # must be below the resolution
        "--node-selector=type=real",
    ], ("https", 10250), {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}},
        "metrics-server"))
    items.append(_https_service("metrics-server", METRICS_NAMESPACE))
    items.append(_api_service("metrics.k8s.io", "v1beta1", "metrics-server", METRICS_NAMESPACE))
    return items


def _api_service(group: str, version: str, service: str, namespace: str) -> dict[str, Any]:
    # Both servers present a self-signed serving certificate, as upstream ships them.
    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": f"{version}.{group}", "labels": PART_OF},
            "spec": {"service": {"name": service, "namespace": namespace},
                     "group": group, "version": version, "insecureSkipTLSVerify": True,
                     "groupPriorityMinimum": 100, "versionPriority": 100}}


def _https_service(name: str, namespace: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, **PART_OF}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": labels,
                     "ports": [{"name": "https", "port": 443, "targetPort": "https"}]}}


def adapter_stack(adapter_role: Mapping[str, Any]) -> list[dict[str, Any]]:
    """prometheus-adapter serving custom.metrics.k8s.io from the local Prometheus."""
    name = "prometheus-adapter"
    items: list[dict[str, Any]] = [
        {**adapter_role, "metadata": {"name": name, "labels": PART_OF}},
        service_account(name, NAMESPACE),
        binding(name, name, name, NAMESPACE),
        binding(f"{name}:system:auth-delegator", "system:auth-delegator", name, NAMESPACE),
        binding(f"{name}-auth-reader", "extension-apiserver-authentication-reader", name,
                 NAMESPACE, kind="RoleBinding", role_kind="Role",
                 in_namespace=METRICS_NAMESPACE),
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": name, "namespace": NAMESPACE, "labels": PART_OF},
         "data": {"config.yaml": yaml.safe_dump(ADAPTER_CONFIG, sort_keys=False)}},
        _deployment(name, NAMESPACE, images.image_ref(name), [
            "--cert-dir=/tmp", "--secure-port=6443", f"--prometheus-url={PROMETHEUS_URL}/",
            "--config=/etc/config/config.yaml", "--metrics-relist-interval=10s",
        ], ("https", 6443), {"httpGet": {"path": "/readyz", "port": "https",
                                         "scheme": "HTTPS"}}, name, config_map=name),
        _https_service(name, NAMESPACE),
    ]
    items += [_api_service("custom.metrics.k8s.io", v, name, NAMESPACE)
              for v in CUSTOM_METRICS_VERSIONS]
    return items


def _prometheus_release() -> str:
    minor, patch = versions.PROMETHEUS.lstrip("v").split(".")[1:]
    return f"3.{int(minor) - 300}.{patch}"


def module_yaml(module: str, version: str, rel: str) -> list[dict[str, Any]]:
    path: Path = addons.module_dir(module, version) / rel
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, Any]:
    """Everything ``install`` applies after the CRDs, as one List."""
    (op_role,) = module_yaml(OPERATOR_MODULE, versions.PROMETHEUS_OPERATOR, OPERATOR_ROLE)
    (prom_role,) = module_yaml(OPERATOR_MODULE, versions.PROMETHEUS_OPERATOR, PROMETHEUS_ROLE)
    ms_rbac = module_yaml(METRICS_SERVER_MODULE, versions.METRICS_SERVER, METRICS_SERVER_RBAC)
    (adapter_role,) = module_yaml(ADAPTER_MODULE, versions.PROMETHEUS_ADAPTER, ADAPTER_ROLE)
    items = (prometheus_stack(op_role, prom_role) + metrics_server_stack(ms_rbac)
             + adapter_stack(adapter_role))
    return {"apiVersion": "v1", "kind": "List", "items": items}


# -- Installing and checking -----------------------------------------------------------------


def poll(what: str, check: Callable[[], tuple[bool, str]], timeout: float,
          hint: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while True:
        ok, detail = check()
        if ok:
            return
        if time.monotonic() > deadline:
            raise MonitoringError(f"{what} not ready after {timeout:.0f} s ({detail}); {hint()}")
        time.sleep(0.5)


def _http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200, f"HTTP {r.status}"
    except (OSError, urllib.error.HTTPError) as e:
        return False, str(e)


def api_available(cluster: Any, name: str = METRICS_API) -> tuple[bool, str]:
    proc = cluster.kubectl_run("get", "apiservice", name, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, proc.stderr.strip()
    conds = {c["type"]: c for c in json.loads(proc.stdout).get("status", {}).get("conditions", [])}
    avail = conds.get("Available", {})
    return avail.get("status") == "True", str(avail.get("message", "no condition yet"))


def pod_summary(cluster: Any, *namespaces: str) -> str:
    """One line per pod of ``namespaces``: phase, node and why a container waits or died, so
    a stack that does not come up says what its pods are doing."""
    parts = []
    for ns in namespaces:
        proc = cluster.kubectl_run("get", "pods", "-n", ns, "-o", "json", check=False)
        if proc.returncode != 0:
            parts.append(f"{ns}: {proc.stderr.strip()[-200:]}")
            continue
        for pod in json.loads(proc.stdout).get("items", []):
            st = pod.get("status") or {}
            why = [f"{c.get('name')} {k} {v.get('reason', '')} {v.get('message', '')}".strip()
                   for c in (st.get("initContainerStatuses") or [])
                   + (st.get("containerStatuses") or [])
                   for k, v in (c.get("state") or {}).items()
                   if k in ("waiting", "terminated")]
            unscheduled = [c.get("message", "") for c in st.get("conditions") or []
                           if c.get("type") == "PodScheduled" and c.get("status") == "False"]
            parts.append(f"{ns}/{pod['metadata']['name']} {st.get('phase')} on "
                         f"{(pod.get('spec') or {}).get('nodeName') or '-'}"
                         + "".join(f" [{w[:160]}]" for w in why + unscheduled))
    return "; ".join(parts) or "none"


def install(cluster: Any, timeout: float = 180, out: Callable[[str], None] = print) -> None:
    """Apply the operator's CRDs and the stack, then wait until Prometheus answers on its
    Service and both metrics APIs are Available. Idempotent (server-side apply)."""
    t0 = time.monotonic()
    crds = addons.crd_files("prometheus-operator")
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts",
                        *(a for f in crds for a in ("-f", str(f))))
    # BaseLoader: these CRDs hold a bare `=` scalar that the safe loader rejects.
    cluster.wait_established(*(yaml.load(f.read_text(), Loader=yaml.BaseLoader)
                               ["metadata"]["name"] for f in crds), timeout=60)
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-",
                        input=json.dumps(manifests()))
    out(f"  monitoring: CRDs and manifests applied ({time.monotonic() - t0:.1f} s)")
    def hint() -> str:
        return (f"pods now: {pod_summary(cluster, NAMESPACE, METRICS_NAMESPACE)}; see: kubectl "
                f"get pods -n {NAMESPACE}; kubectl get pods -n {METRICS_NAMESPACE}; "
                f"kubectl logs -n {NAMESPACE} deploy/prometheus-operator")
    poll(f"Prometheus at {PROMETHEUS_URL}", lambda: _http_ok(PROMETHEUS_URL + "/-/ready"),
          timeout, hint)
    out(f"  monitoring: Prometheus answers on {PROMETHEUS_URL} ({time.monotonic() - t0:.1f} s)")
    poll(f"the APIService {METRICS_API}", lambda: api_available(cluster), timeout, hint)
    out(f"  monitoring: metrics.k8s.io Available ({time.monotonic() - t0:.1f} s)")
    poll(f"the APIService {CUSTOM_METRICS_API}",
          lambda: api_available(cluster, CUSTOM_METRICS_API), timeout, hint)
    out(f"  monitoring: custom.metrics.k8s.io Available ({time.monotonic() - t0:.1f} s)")


def workload_ready(cluster: Any, kind: str, name: str, namespace: str) -> tuple[bool, str]:
    """Whether a Deployment or StatefulSet has all its replicas ready, and a detail."""
    proc = cluster.kubectl_run("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, f"{kind} {namespace}/{name} missing"
    st = json.loads(proc.stdout).get("status", {})
    ready, want = int(st.get("readyReplicas", 0)), int(st.get("replicas", 0))
    return want > 0 and ready == want, f"{ready}/{want} ready ({kind} {namespace})"


def health(cluster: Any) -> list[tuple[str, bool, str]]:
    """(name, healthy, detail) for each part of the stack, for ``localcluster status``."""
    report = [(name, *workload_ready(cluster, kind, name, ns)) for name, ns, kind in (
        ("prometheus-operator", NAMESPACE, "deployment"),
        (f"prometheus-{PROMETHEUS_NAME}", NAMESPACE, "statefulset"),
        ("metrics-server", METRICS_NAMESPACE, "deployment"),
        ("prometheus-adapter", NAMESPACE, "deployment"))]
    ok, detail = _http_ok(PROMETHEUS_URL + "/-/ready")
    report.append(("prometheus-api", ok, f"{PROMETHEUS_URL} {detail}"))
    for name, api in (("metrics.k8s.io", METRICS_API),
                      ("custom.metrics.k8s.io", CUSTOM_METRICS_API)):
        ok, detail = api_available(cluster, api)
        report.append((name, ok, detail or "Available"))
    return report


# -- Reading Prometheus ---------------------------------------------------------------------


def _get(path: str, params: Mapping[str, str], url: str) -> Any:
    full = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=10) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise MonitoringError(f"GET {full}: HTTP {e.code} {e.read()[:300]!r}") from e
    if body.get("status") != "success":
        raise MonitoringError(f"GET {full}: {body.get('error', body)}")
    return body["data"]


def query(promql: str, url: str = PROMETHEUS_URL) -> list[dict[str, Any]]:
    """An instant query; the vector's samples (``{"metric": {...}, "value": [t, "v"]}``)."""
    data = _get("/api/v1/query", {"query": promql}, url)
    if data.get("resultType") != "vector":
        raise MonitoringError(f"{promql!r} is a {data.get('resultType')}, not a vector")
    result: list[dict[str, Any]] = data["result"]
    return result


def wait_for_query(promql: str, timeout: float = 120, url: str = PROMETHEUS_URL,
                   accept: Callable[[list[dict[str, Any]]], bool] = bool
                   ) -> list[dict[str, Any]]:
    """Poll ``query(promql)`` until ``accept(result)`` (default: non-empty); return it."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while True:
        last = query(promql, url)
        if accept(last):
            return last
        if time.monotonic() > deadline:
            raise MonitoringError(f"{promql!r}: no accepted result after {timeout:.0f} s "
                                  f"(last: {last!r})")
        time.sleep(1)


def targets(url: str = PROMETHEUS_URL) -> list[dict[str, Any]]:
    """Prometheus's active targets (``labels``, ``scrapePool``, ``health``, ``lastError``)."""
    data = _get("/api/v1/targets", {"state": "active"}, url)
    active: list[dict[str, Any]] = data["activeTargets"]
    return active


def wait_for_target(labels: Mapping[str, str], timeout: float = 120, url: str = PROMETHEUS_URL,
                    health: str = "up") -> list[dict[str, Any]]:
    """Poll until at least one active target whose labels include ``labels`` is ``health``
    (e.g. ``{"namespace": ns, "service": "web"}``); return the matching targets."""
    deadline = time.monotonic() + timeout
    while True:
        found = [t for t in targets(url)
                 if all(t.get("labels", {}).get(k) == v for k, v in labels.items())]
        if any(t.get("health") == health for t in found):
            return found
        if time.monotonic() > deadline:
            seen = [(t.get("scrapePool"), t.get("health"), t.get("lastError")) for t in found]
            raise MonitoringError(f"no target with labels {dict(labels)} is {health!r} after "
                                  f"{timeout:.0f} s (matching targets: {seen or 'none'})")
        time.sleep(1)
