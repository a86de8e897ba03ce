"""The activator's routes (``ROUTES_KEY`` of ``ROUTES_CONFIGMAP``) and a Service's ready
endpoints, read from Kubernetes objects. Pure: no I/O.

A route's upstream is a ready pod of its Service, never the Service's cluster IP: while the
activator's EndpointSlice is on the Service, the cluster IP may lead back to the activator.
The port is the one the endpointslice controller resolved for the Service port (the slice's
port carries the Service port's name), so a named ``targetPort`` works too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from msv_contract import scaletozero as stz
from msv_contract.scaletozero import Route

CONTROLLER_MANAGED_BY = "endpointslice-controller.k8s.io"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DISCOVERY_API = "discovery.k8s.io/v1"


class RouteError(ValueError):
    """The routes document is malformed; the message names the field."""


def _field(entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RouteError(f"{where}.{key}: expected an integer, got {value!r}")
    if kind is str and (not isinstance(value, str) or not value):
        raise RouteError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def parse_routes(text: str | None) -> dict[int, Route]:
    """``{"routes": [...]}`` -> routes by listener port; ``None``/empty: no routes."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RouteError(f"{stz.ROUTES_KEY}: not JSON: {e}") from e
    entries = doc.get("routes") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise RouteError(f"{stz.ROUTES_KEY}.routes: expected a list")
    routes: dict[int, Route] = {}
    for i, entry in enumerate(entries):
        where = f"{stz.ROUTES_KEY}.routes[{i}]"
        if not isinstance(entry, dict):
            raise RouteError(f"{where}: expected an object")
        port = _field(entry, "port", int, where)
        if not 1 <= port <= 65535:
            raise RouteError(f"{where}.port: {port} is not a TCP port")
        service_port = _field(entry, "servicePort", int, where)
        variant = entry.get("variant")
        if variant is not None and not isinstance(variant, str):
            raise RouteError(f"{where}.variant: expected a string or null, got {variant!r}")
        if port in routes:
            raise RouteError(f"{where}.port: {port} is used by two routes")
        routes[port] = Route(
            port=port,
            namespace=_field(entry, "namespace", str, where),
            service=_field(entry, "service", str, where),
            service_port=service_port,
            modelservice=_field(entry, "modelservice", str, where),
            variant=variant or None,
        )
    return routes


def slice_selector(service: str) -> str:
    """The label selector of a Service's EndpointSlices written by the endpointslice
    controller (not the activator's own slice, not other writers')."""
    return f"{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={CONTROLLER_MANAGED_BY}"


def service_port_name(service: Mapping[str, Any] | None, port: int) -> tuple[str, int | None]:
    """(name, numeric targetPort or None) of the Service's port ``port``; ("", None) when the
    Service or the port is missing."""
    for p in ((service or {}).get("spec") or {}).get("ports") or ():
        if p.get("port") == port:
            target = p.get("targetPort", port)
            return str(p.get("name") or ""), target if isinstance(target, int) else None
    return "", None


def ready_endpoints(service: Mapping[str, Any] | None, service_port: int,
                    slices: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(pod IP, port) of every ready endpoint of the Service's port ``service_port``, sorted.
    An endpoint whose ``ready`` condition is unset counts as ready (the API's rule); the
    activator's own slice is never among ``slices`` (see ``slice_selector``)."""
    if service is None:
        return []
    name, numeric = service_port_name(service, service_port)
    out: set[tuple[str, int]] = set()
    for s in slices:
        labels = (s.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != CONTROLLER_MANAGED_BY:
            continue
        if s.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = next((p.get("port") for p in s.get("ports") or ()
                     if str(p.get("name") or "") == name and isinstance(p.get("port"), int)),
                    numeric)
        if port is None:
            continue
        for ep in s.get("endpoints") or ():
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for address in (ep.get("addresses") or ())[:1]:
                out.add((str(address), int(port)))
    return sorted(out)
