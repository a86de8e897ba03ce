"""Gateway API objects as the API returns them, for the gateway's tests
(tests/unit/test_gateway_render.py, tests/e2e/test_gateway_nginx.py): the one factory of
GatewayClass, Gateway, HTTPRoute, Service, EndpointSlice and XBackendTrafficPolicy dicts fed
to ``localcluster.gateway.render``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from localcluster.gateway.render import CONTROLLER_NAME, POLICY_GROUP, POLICY_KIND, Objects

API = "gateway.networking.k8s.io/v1"
POLICY_API = f"{POLICY_GROUP}/v1alpha1"
CLASS = "msv-test"


def gateway_class(name: str = CLASS, controller: str = CONTROLLER_NAME,
                  **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "GatewayClass",
            "metadata": {"name": name, "generation": 1},
            "spec": {"controllerName": controller, **spec}}


def listener(port: int, name: str = "http", hostname: str | None = None,
             namespaces: str = "All", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": port, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": namespaces}}, **extra}
    if hostname is not None:
        out["hostname"] = hostname
    return out


def gateway(listeners: Sequence[Mapping[str, Any]], name: str = "gw", namespace: str = "gw",
            cls: str = CLASS, generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "generation": generation},
            "spec": {"gatewayClassName": cls, "listeners": list(listeners)}}


def backend(service: str, port: int = 80, weight: int | None = None,
            **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": service, "port": port, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


def rule(backends: Sequence[Mapping[str, Any]], path: str | None = None,
         exact: bool = False, headers: Mapping[str, str] | None = None,
         **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"backendRefs": list(backends), **extra}
    match: dict[str, Any] = {}
    if path is not None:
        match["path"] = {"type": "Exact" if exact else "PathPrefix", "value": path}
    if headers:
        match["headers"] = [{"type": "Exact", "name": k, "value": v} for k, v in headers.items()]
    if match:
        out["matches"] = [match]
    return out


def route(rules: Sequence[Mapping[str, Any]], name: str = "route", namespace: str = "app",
          parent: str = "gw", parent_namespace: str | None = "gw",
          hostnames: Sequence[str] | None = None, created: str = "2026-01-01T00:00:00Z",
          generation: int = 1, **ref: Any) -> dict[str, Any]:
    parent_ref: dict[str, Any] = {"name": parent, **ref}
    if parent_namespace is not None:
        parent_ref["namespace"] = parent_namespace
    spec: dict[str, Any] = {"parentRefs": [parent_ref], "rules": list(rules)}
    if hostnames is not None:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": API, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace, "generation": generation,
                         "creationTimestamp": created},
            "spec": spec}


def service(name: str, namespace: str = "app", port: int = 80,
            port_name: str = "http") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": port_name, "port": port, "targetPort": port_name,
                                "protocol": "TCP"}]}}


def endpoint_slice(service_name: str, endpoints: Sequence[str | tuple[str, bool]],
                   target_port: int, namespace: str = "app", port_name: str = "http",
                   name: str | None = None) -> dict[str, Any]:
    """``endpoints``: addresses (ready) or (address, ready)."""
    eps = []
    for e in endpoints:
        addr, ready = (e, True) if isinstance(e, str) else e
        eps.append({"addresses": [addr], "conditions": {"ready": ready}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service_name}-abc", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": target_port, "protocol": "TCP"}],
            "endpoints": eps}


def policy(targets: Sequence[str | Mapping[str, Any]], name: str = "budget",
           namespace: str = "app", created: str = "2026-01-01T00:00:00Z", generation: int = 1,
           **spec: Any) -> dict[str, Any]:
    """An XBackendTrafficPolicy; ``targets``: Service names or whole targetRefs entries."""
    refs = [{"group": "", "kind": "Service", "name": t} if isinstance(t, str) else dict(t)
            for t in targets]
    return {"apiVersion": POLICY_API, "kind": POLICY_KIND,
            "metadata": {"name": name, "namespace": namespace, "generation": generation,
                         "creationTimestamp": created},
            "spec": {"targetRefs": refs, **spec}}


def budget(percent: int | None = None, interval: str | None = None, count: int | None = None,
           floor: str | None = None) -> dict[str, Any]:
    """A ``retryConstraint`` (what is None left out)."""
    out: dict[str, Any] = {}
    b = {k: v for k, v in (("percent", percent), ("interval", interval)) if v is not None}
    m = {k: v for k, v in (("count", count), ("interval", floor)) if v is not None}
    if b:
        out["budget"] = b
    if m:
        out["minRetryRate"] = m
    return out


def objects(*items: Mapping[str, Any], namespaces: Sequence[str] = ("app", "gw")) -> Objects:
    """Sort ``items`` by kind into ``Objects`` (plus the namespaces, labelled by name)."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for it in items:
        by.setdefault(str(it["kind"]), []).append(it)
    return Objects(
        gateway_classes=by.get("GatewayClass", []), gateways=by.get("Gateway", []),
        routes=by.get("HTTPRoute", []), services=by.get("Service", []),
        endpoint_slices=by.get("EndpointSlice", []), policies=by.get(POLICY_KIND, []),
        namespaces=[{"metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}}
                    for n in namespaces])
