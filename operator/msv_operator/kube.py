"""The only module that talks to the Kubernetes API (official ``kubernetes`` client).

* ``Kube.apply`` - server-side apply (``application/apply-patch+yaml``) with the one field
  manager ``modelservice-operator`` and ``force=true``;
* ``Kube.list`` - reads served from the API server's watch cache (``resourceVersion=0``);
* ``Kube.delete`` - deletes with a ``uid`` precondition (never a same-named stranger);
* ``Kube.patch_status`` - merge patch of ``/status`` of a ModelService;
* ``Kube.annotate`` - merge patch of annotations (the kubectl plugin's rollout steering);
* ``Kube.patch_metadata`` - merge patch of labels and annotations (a running pod joining or
  leaving the stable Service, or mirroring, without a restart);
* ``Kube.pod_metrics`` - CPU and memory per pod from metrics.k8s.io (``[]`` when not served);
* ``Kube.served`` / ``Capabilities`` - run-time discovery of optional APIs (ServiceMonitor,
  HTTPRoute, XBackendTrafficPolicy), cached for a TTL (and whether the HTTPRoute CRD has
  ``rules[].retry``: ``Kube.metadata`` of the CRD on each ask, its schema only when its
  ``resourceVersion`` changed);
* ``Kube.lease`` / ``Kube.write_lease`` - the leader-election Lease (``coordination.k8s.io``),
  the one object written with ``PUT`` (optimistic concurrency on its ``resourceVersion``).

With a ``write_gate`` (leader election), every write except the Lease's is refused with
``NotLeader`` as soon as the gate says this process no longer holds the lease.

Errors are translated into ``ApiError`` subclasses so callers never see client types:
``Conflict`` and ``Transient`` are retried by the handlers with backoff, ``Rejected`` means the
API server refused the object (a bug or an invalid spec) and is reported in the status.
Writes pass a client-side token bucket (``qps``/``burst``) like controller-runtime's.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from msv_contract import api

log = logging.getLogger("msv_operator.kube")

MODELSERVICE_GROUP = api.GROUP
MODELSERVICE_VERSION = api.VERSION
MODELSERVICE_PLURAL = api.PLURAL

# kind -> plural for every kind the operator writes or reads; others fall back to "<kind>s".
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "HTTPRoute": "httproutes",
    "XBackendTrafficPolicy": "xbackendtrafficpolicies",
    "Gateway": "gateways",
    "CustomResourceDefinition": "customresourcedefinitions",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Pod": "pods",
    "PodDisruptionBudget": "poddisruptionbudgets",
    api.KIND: MODELSERVICE_PLURAL,
    "Event": "events",
    "PodMetrics": "pods",
    "Lease": "leases",
}
POD_METRICS_API = "metrics.k8s.io/v1beta1"

LEASE_API = "coordination.k8s.io/v1"

SERVICE_MONITOR_API = ("monitoring.coreos.com/v1", "servicemonitors")
HTTPROUTE_API = ("gateway.networking.k8s.io/v1", "httproutes")
RETRY_BUDGET_API = ("gateway.networking.x-k8s.io/v1alpha1", "xbackendtrafficpolicies")
"""Gateway API's retry budget (GEP-3388, experimental channel)."""
KEDA_SCALED_OBJECTS = ("keda.sh/v1alpha1", "scaledobjects")
"""KEDA's ScaledObject (``msv_contract.scaletozero.KEDA_API``): scale to zero."""
CRD_API = "apiextensions.k8s.io/v1"
HTTPROUTE_CRD = "httproutes.gateway.networking.k8s.io"
GATEWAY_CHANNEL_ANNOTATION = "gateway.networking.k8s.io/channel"
"""``standard`` or ``experimental``: the Gateway API bundle the CRD comes from."""
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


LOG_TAIL_LINES = 200
LOG_MAX_BYTES = 1 << 20


class ApiError(Exception):
    """An API request failed; ``status`` is the HTTP status (0 when none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: a conflicting write or a failed precondition; retry."""


class Transient(ApiError):
    """429, 5xx, timeouts and connection errors; retry with backoff."""


class Rejected(ApiError):
    """400/403/422: the API server refused the request; retrying the same body will not help."""


class NamespaceTerminating(Rejected):
    """403 because the namespace is being deleted: nothing new can be created in it. Not an
    error of the spec or of RBAC; the namespace's deletion removes the ModelService too."""


class NotLeader(Transient):
    """A write refused locally: this process does not (or no longer) hold the leader lease."""


def _terminating(exc: ApiException) -> bool:
    """The API server's cause for a create refused in a namespace being deleted."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return False
    causes = ((body.get("details") or {}).get("causes") or []) if isinstance(body, dict) else []
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating"
               for c in causes)


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason or exc)


def translate(exc: BaseException, what: str) -> ApiError:
    """Map a client exception to the operator's error vocabulary."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        text = f"{what}: {_message(exc)}"
        if status == 404:
            return NotFound(text, status)
        if status == 409:
            return Conflict(text, status)
        if status == 403 and _terminating(exc):
            return NamespaceTerminating(text, status)
        if status in (400, 403, 422):
            return Rejected(text, status)
        if status == 500 and "failed to create typed patch object" in text:
            # Server-side apply could not merge the object (e.g. duplicate list-map keys):
            # the request itself is wrong, retrying cannot help.
            return Rejected(text, status)
        return Transient(text, status)
    return Transient(f"{what}: {exc}", 0)


def api_path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def plural_of(kind: str) -> str:
    return PLURALS.get(kind, kind.lower() + "s")


class TokenBucket:
    """Client-side write rate limit (thread-safe)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.qps)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.qps
            time.sleep(wait)


def load_client_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account when present, else ``$KUBECONFIG``/``~/.kube/config``."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # Read $KUBECONFIG now: the client library only reads it once, at import time.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                           client_configuration=configuration)
    return configuration


def current_namespace(default: str = "default") -> str:
    """The namespace of the kubeconfig's current context (in a pod: the pod's namespace)."""
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or default
    except OSError:
        pass
    try:
        _contexts, active = kubernetes.config.list_kube_config_contexts(
            config_file=os.environ.get("KUBECONFIG"))
    except (kubernetes.config.ConfigException, OSError, TypeError):
        return default
    return str(((active or {}).get("context") or {}).get("namespace") or default)


class Kube:
    """A thin, thread-safe API facade over one ``ApiClient``."""

    def __init__(self, field_manager: str, *, qps: float = 50.0, burst: int = 100,
                 pool_size: int = 32,
                 configuration: kubernetes.client.Configuration | None = None,
                 write_gate: Callable[[], bool] | None = None) -> None:
        configuration = configuration or load_client_configuration()
        configuration.connection_pool_maxsize = pool_size
        self.api = kubernetes.client.ApiClient(configuration)
        self.field_manager = field_manager
        self.bucket = TokenBucket(qps, burst)
        self.write_gate = write_gate

    def close(self) -> None:
        self.api.close()

    def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
              body: Any = None, content_type: str | None = None, what: str,
              timeout: float = 30.0, decode: bool = True,
              accept: str = "application/json", raw: bool = False) -> Any:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        if method != "GET":
            self.bucket.take()
            # Checked after the rate limit's wait: the lease may have been lost meanwhile.
            if self.write_gate is not None and not self.write_gate():
                raise NotLeader(f"{what}: not sent, this operator is not the leader")
        try:
            method_, url, hdrs, payload, _post = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"])
            response = self.api.call_api(method_, url, header_params=hdrs, body=payload,
                                         _request_timeout=timeout)
            data = response.read()
        except ApiException as e:
            raise translate(e, what) from e
        except Exception as e:  # urllib3 connection errors and timeouts
            raise translate(e, what) from e
        if response.status >= 400:
            raise translate(ApiException(status=response.status, reason=response.reason,
                                         body=data.decode("utf-8", "replace")), what)
        if raw:
            return data
        return json.loads(data) if data and decode else {}

    # ---- writes -----------------------------------------------------------------------
    def apply(self, obj: Mapping[str, Any], *, answer: bool = True,
              field_manager: str | None = None) -> dict[str, Any]:
        """Server-side apply of ``obj`` (force; the operator's field manager unless another
        is named); returns the live object (``{}`` with ``answer=False``: not decoded)."""
        meta = obj["metadata"]
        kind = str(obj["kind"])
        path = api_path(str(obj["apiVersion"]), plural_of(kind), meta.get("namespace"),
                        meta["name"])
        return dict(self._call(
            "PATCH", path, body=dict(obj), content_type="application/apply-patch+yaml",
            query=[("fieldManager", field_manager or self.field_manager), ("force", "true")],
            what=f"apply {kind} {meta['name']}", decode=answer))

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               uid: str | None) -> None:
        """Delete one object; with ``uid`` only that exact object (404 is not an error)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", api_path(api_version, plural_of(kind), namespace, name),
                       body=body, content_type="application/json",
                       what=f"delete {kind} {name}")
        except NotFound:
            return

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the ModelService's ``/status``."""
        path = api_path(f"{MODELSERVICE_GROUP}/{MODELSERVICE_VERSION}", MODELSERVICE_PLURAL,
                        namespace, name, "status")
        self._call("PATCH", path, body={"status": dict(status)},
                   content_type="application/merge-patch+json",
                   what=f"patch status of ModelService {name}")

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: Mapping[str, str | None]) -> dict[str, Any]:
        """Merge-patch ``metadata.annotations`` (None removes one); returns the object."""
        path = api_path(api_version, plural_of(kind), namespace, name)
        return dict(self._call("PATCH", path,
                               body={"metadata": {"annotations": dict(annotations)}},
                               content_type="application/merge-patch+json",
                               what=f"annotate {kind} {name}"))

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str,
                    body: Mapping[str, Any]) -> None:
        """Merge-patch the object (``kubectl msv rollout``: the user's spec change)."""
        path = api_path(api_version, plural_of(kind), namespace, name)
        self._call("PATCH", path, body=dict(body), content_type="application/merge-patch+json",
                   what=f"patch {kind} {name}", decode=False)

    def patch_metadata(self, api_version: str, kind: str, namespace: str, name: str,
                       labels: Mapping[str, str | None] | None = None,
                       annotations: Mapping[str, str | None] | None = None) -> None:
        """Merge-patch ``metadata.labels`` and ``metadata.annotations`` (None removes one)."""
        meta: dict[str, Any] = {}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        path = api_path(api_version, plural_of(kind), namespace, name)
        self._call("PATCH", path, body={"metadata": meta},
                   content_type="application/merge-patch+json", what=f"patch {kind} {name}",
                   decode=False)

    def write_lease(self, lease: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Create the Lease (no ``resourceVersion``) or replace it (``PUT``, guarded by its
        ``resourceVersion``: a concurrent writer gets ``Conflict``). The elector uses a
        client of its own without a write gate."""
        meta = lease["metadata"]
        if meta.get("resourceVersion"):
            return dict(self._call(
                "PUT", api_path(LEASE_API, "leases", meta["namespace"], meta["name"]),
                body=dict(lease), content_type="application/json",
                what=f"update Lease {meta['name']}", timeout=timeout))
        return dict(self._call("POST", api_path(LEASE_API, "leases", meta["namespace"]),
                               body=dict(lease), content_type="application/json",
                               what=f"create Lease {meta['name']}", timeout=timeout))

    # ---- reads ------------------------------------------------------------------------
    def lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        """The Lease, read from etcd (not the watch cache: the newest ``resourceVersion``)."""
        try:
            return dict(self._call("GET", api_path(LEASE_API, "leases", namespace, name),
                                   what=f"get Lease {name}", timeout=timeout))
        except NotFound:
            return None

    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", api_path(api_version, plural_of(kind), namespace,
                                                   name), what=f"get {kind} {name}"))
        except NotFound:
            return None

    def metadata(self, api_version: str, kind: str, namespace: str | None, name: str
                 ) -> dict[str, Any] | None:
        """Only the object's ``metadata`` (``PartialObjectMetadata``: a small answer for a
        large object such as a CRD); None when it does not exist."""
        try:
            return dict(self._call("GET", api_path(api_version, plural_of(kind), namespace,
                                                   name), what=f"get {kind} {name} metadata",
                                   accept=PARTIAL_METADATA))
        except NotFound:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects from the watch cache (``resourceVersion=0``); [] when the API is absent."""
        query = [("resourceVersion", "0")]
        if label_selector:
            query.append(("labelSelector", label_selector))
        try:
            result = self._call("GET", api_path(api_version, plural_of(kind), namespace),
                                query=query, what=f"list {kind}")
        except NotFound:
            return []
        items = list(result.get("items") or ())
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def pod_log(self, namespace: str, name: str, container: str, limit_bytes: int) -> str:
        """The last ``limit_bytes`` of a container's last ``LOG_TAIL_LINES`` log lines: the
        newest lines are what the optimization pipeline reads (progress, a failure's cause).
        The server sends at most ``LOG_MAX_BYTES`` (``limitBytes`` counts from the tail's
        start, so it only bounds a log of huge lines)."""
        path = api_path("v1", "pods", namespace, name, "log")
        query = [("container", container), ("tailLines", str(LOG_TAIL_LINES)),
                 ("limitBytes", str(LOG_MAX_BYTES))]
        # the log is plain text, but the API server refuses ``Accept: text/plain`` (406: it
        # lists only its serializers); ``*/*`` is what kubectl sends
        data = self._call("GET", path, query=query, what=f"read the log of Pod {name}",
                          accept="*/*", decode=False, raw=True)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
        return text[-limit_bytes:]

    def pod_metrics(self, namespace: str, label_selector: str
                    ) -> builtins.list[dict[str, Any]]:
        """PodMetrics (``containers[].usage.cpu/memory``) of the selected pods; ``[]`` when
        the cluster does not serve metrics.k8s.io or it cannot answer (fields are omitted,
        never an error)."""
        try:
            return self.list(POD_METRICS_API, "PodMetrics", namespace, label_selector)
        except ApiError as e:
            log.debug("No pod metrics for %s: %s", namespace, e)
            return []

    def served(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``api_version`` (one discovery GET)."""
        try:
            result = self._call("GET", api_path(api_version, "", None).rstrip("/"),
                                what=f"discover {api_version}", timeout=10)
        except NotFound:
            return False
        return any(r.get("name") == plural for r in result.get("resources") or ())


@dataclass(frozen=True)
class CapabilityAnswer:
    service_monitor: bool
    gateway_api: bool
    gateway_retry: bool = False
    """The HTTPRoute CRD's schema has ``rules[].retry`` (Gateway API experimental channel)."""
    gateway_channel: str | None = None
    """The HTTPRoute CRD's channel annotation ("" when it has none); None when the CRD could
    not be read (Gateway API not served, or no ``get`` on it)."""
    retry_budget: bool = False
    """The cluster serves ``RETRY_BUDGET_API`` (XBackendTrafficPolicy)."""
    keda: bool = False
    """The cluster serves ``KEDA_API`` ScaledObject (scale to zero)."""


def http_route_retry(crd: Mapping[str, Any]) -> bool:
    """Whether the HTTPRoute CRD's ``v1`` schema has ``spec.rules[].retry`` (the operator
    writes v1 HTTPRoutes; a field the schema lacks would be dropped by the API server)."""
    for version in (crd.get("spec") or {}).get("versions") or ():
        if version.get("name") != HTTPROUTE_API[0].rsplit("/", 1)[1]:
            continue
        node: Any = ((version.get("schema") or {}).get("openAPIV3Schema") or {})
        for step in ("properties", "spec", "properties", "rules", "items", "properties"):
            node = node.get(step) if isinstance(node, Mapping) else None
        return isinstance(node, Mapping) and "retry" in node
    return False


class Capabilities:
    """Cached answers to "is ServiceMonitor / HTTPRoute / XBackendTrafficPolicy served?" and
    "does the HTTPRoute CRD have retries?" (re-asked after ``ttl`` s)."""

    def __init__(self, kube: Kube, ttl: float) -> None:
        self.kube = kube
        self.ttl = ttl
        self.lock = threading.Lock()
        self.answer: CapabilityAnswer | None = None
        self.stamp = 0.0
        self.route_crd: tuple[str, bool] | None = None
        """(resourceVersion, has retry) of the HTTPRoute CRD last read whole."""

    def _route_crd(self) -> tuple[bool, str | None]:
        """(has retry, channel) of the HTTPRoute CRD: its metadata on every ask, its schema
        (some 400 kB) only when its resourceVersion changed. (False, None) when it cannot be
        read: the chart grants get on CRDs; without it no retry is written."""
        try:
            meta = self.kube.metadata(CRD_API, "CustomResourceDefinition", None, HTTPROUTE_CRD)
        except Rejected as e:
            log.warning("Cannot read the CRD %s, so no HTTPRoute retry is written: %s",
                        HTTPROUTE_CRD, e)
            return False, None
        if meta is None:
            return False, None
        m = meta.get("metadata") or {}
        version = str(m.get("resourceVersion") or "")
        channel = str((m.get("annotations") or {}).get(GATEWAY_CHANNEL_ANNOTATION) or "")
        if self.route_crd is not None and version and self.route_crd[0] == version:
            return self.route_crd[1], channel
        try:
            crd = self.kube.get(CRD_API, "CustomResourceDefinition", None, HTTPROUTE_CRD)
        except Rejected as e:
            log.warning("Cannot read the CRD %s, so no HTTPRoute retry is written: %s",
                        HTTPROUTE_CRD, e)
            return False, None
        if crd is None:
            return False, None
        retry = http_route_retry(crd)
        self.route_crd = (version, retry)
        return retry, channel

    def get(self) -> CapabilityAnswer:
        with self.lock:
            if self.answer is not None and time.monotonic() - self.stamp < self.ttl:
                return self.answer
            previous = self.answer
            try:
                gateway_api = self.kube.served(*HTTPROUTE_API)
                retry, channel = self._route_crd() if gateway_api else (False, None)
                answer = CapabilityAnswer(
                    service_monitor=self.kube.served(*SERVICE_MONITOR_API),
                    gateway_api=gateway_api, gateway_retry=retry, gateway_channel=channel,
                    # asked whatever HTTPRoute's answer: a policy left from before is pruned
                    retry_budget=self.kube.served(*RETRY_BUDGET_API),
                    keda=self.kube.served(*KEDA_SCALED_OBJECTS),
                )
            except ApiError as e:
                if previous is None:
                    raise
                log.warning("Kept the previous capability answer: %s", e)
                answer = previous
            if answer != previous:
                log.info("Discovered capabilities: ServiceMonitor %s, HTTPRoute %s, "
                         "XBackendTrafficPolicy %s, ScaledObject %s",
                         "served" if answer.service_monitor else "not served",
                         ("not served" if not answer.gateway_api else
                          f"served ({answer.gateway_channel or 'unknown'} channel, "
                          f"{'with' if answer.gateway_retry else 'without'} rules[].retry)"),
                         "served" if answer.retry_budget else "not served",
                         "served" if answer.keda else "not served")
            self.answer = answer
            self.stamp = time.monotonic()
            return answer


def post_event(client: Kube, involved: Mapping[str, Any], type_: str, reason: str,
               message: str, now: str) -> None:
    """Create a core/v1 Event about ``involved`` (used only for condition transitions)."""
    meta = involved.get("metadata") or {}
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": client.field_manager},
        "reportingComponent": client.field_manager,
    }
    client._call("POST", api_path("v1", "events", str(meta.get("namespace"))), body=body,
                 content_type="application/json", what=f"post event {reason}")
