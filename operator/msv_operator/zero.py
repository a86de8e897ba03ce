"""PURE: scale to zero, the operator's side (docs/scale-to-zero.md; the protocol with the
activator and KEDA is ``msv_contract.scaletozero``).

A variant whose autoscaling floor is 0 (``spec.autoscaling.minReplicas`` or its own
``spec.variants[].autoscaling.minReplicas``) is scaled by a KEDA ScaledObject instead of the
operator's HPA, when the cluster can do it (``Ability``: KEDA's CRD served, the activator
configured and its Service found, a Prometheus to tell idleness by). Otherwise the variant
keeps today's behaviour (an HPA with at least one pod) and ``blind`` says what is missing.

``plan`` decides per variant: whether it may be at zero now (``min_count`` 0) or must be up
(a rollout's candidate while the rollout moves traffic to it, a brownout variant while
overload builds or brownout is engaged: it is brought back before any traffic moves, and the
rollout's and brownout's readiness gates hold them until it has a ready pod), and, while KEDA
or the activator cannot act, the size KEDA is paused at (``PAUSED_REPLICAS``: the current
size, at least one pod for a variant with traffic) and the pods the operator itself restores.

``services_at_zero`` says which Services have no ready pod of their own; each gets an
EndpointSlice to the activator (``build_slice``) on a port of ``PORT_RANGE`` recorded in the
routes ConfigMap (``assign_ports``, ``build_routes``), removed once the Service has a ready pod.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msv_contract import metrics
from msv_contract import scaletozero as stz
from msv_contract.api import LABEL_MODELSERVICE, LABEL_SERVING, LABEL_VARIANT, MANAGED_BY
from msv_contract.scaletozero import Route

PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
"""KEDA: on a ScaledObject, scale to this many replicas and stop autoscaling until removed."""
POLLING_SECONDS = 5
"""KEDA asks the triggers this often (how soon a held request starts a pod, at the latest)."""
ACTIVITY_WINDOW = "1m"
"""The request-rate window of the activity trigger: a variant with a request in it is busy."""
ACTIVITY_THRESHOLD = 1_000_000
"""The activity trigger's target: so high it never asks for a second pod (the in-flight or
CPU trigger sizes the variant); it only says busy or idle."""
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_API = ("discovery.k8s.io/v1", "EndpointSlice")
SCALED_OBJECT = (stz.KEDA_API, stz.SCALED_OBJECT)
KEDA_PLURAL = "scaledobjects"

REASON = stz.REASON_SCALING_BLIND


@dataclass(frozen=True)
class Ability:
    """What the cluster and the operator offer for scale to zero (one pass's view)."""

    keda: bool
    """KEDA's ScaledObject is served."""
    activator: str | None
    """``<namespace>/<service>`` of the activator as configured; None: not configured."""
    scaler_address: str | None
    """``<cluster IP>:SCALER_PORT`` of the activator Service; None: the Service is not found."""
    activator_ips: tuple[str, ...] = ()
    """Ready activator pods' addresses (its Service's EndpointSlices)."""
    prometheus_url: str = ""

    def missing(self) -> list[str]:
        """What keeps scale to zero from acting at all, in words ([] when it can)."""
        out = []
        if not self.keda:
            out.append(f"the cluster does not serve {stz.KEDA_API} {stz.SCALED_OBJECT} "
                       "(install KEDA)")
        if self.activator is None:
            out.append("the operator has no activator configured (chart value "
                       "scaleToZero.enabled)")
        elif self.scaler_address is None:
            out.append(f"the activator Service {self.activator} is not found")
        if not self.prometheus_url:
            out.append("the operator has no Prometheus (chart value prometheus.url) to tell "
                       "an idle variant from a busy one")
        return out


@dataclass(frozen=True)
class Live:
    """One variant's ScaledObject and Deployment as the pass found them."""

    scaled_object: Mapping[str, Any] | None = None
    replicas: int | None = None
    """The Deployment's spec.replicas (None: no Deployment yet)."""


@dataclass
class Plan:
    """Scale to zero for one pass."""

    keda: dict[str, int] = field(default_factory=dict)
    """Variant -> KEDA's minReplicaCount (0: may go to zero; 1+: must be up)."""
    paused: dict[str, int] = field(default_factory=dict)
    """Variant -> replicas KEDA is paused at (it or the activator cannot act)."""
    restore: dict[str, int] = field(default_factory=dict)
    """Variant -> replicas the operator sets on the Deployment itself (at zero with traffic,
    while KEDA cannot bring it back)."""
    floor: dict[str, int] = field(default_factory=dict)
    """Variants with an operator HPA instead (scale to zero unavailable) -> its minReplicas."""
    blind: list[str] = field(default_factory=list)
    """Why autoscaling cannot act as asked, one message each (``AutoscalingBlind``)."""
    ignored: list[str] = field(default_factory=list)
    """Fields that cannot act in this cluster (``FieldsIgnored``)."""


def keda_ready(so: Mapping[str, Any] | None) -> str | None:
    """Why a ScaledObject cannot act (its ``Ready`` condition False), or None."""
    for c in ((so or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready" and c.get("status") == "False":
            return f"{c.get('reason') or 'NotReady'}: {c.get('message') or ''}".rstrip(": ")
    return None


def awake(spec: Any, rollout_status: Mapping[str, Any] | None,
          brownout_status: Mapping[str, Any] | None) -> set[str]:
    """The variants that must be up now although no traffic may reach them yet: the rollout's
    candidate while it is Pending or Progressing, a brownout's variant (or, the operator
    choosing, its candidates) while overload builds or brownout is engaged."""
    out: set[str] = set()
    r = spec.rollout
    if r is not None and (rollout_status or {}).get("phase") in ("Pending", "Progressing"):
        out.add(r.candidate)
    b = spec.autoscaling.brownout if spec.autoscaling else None
    st = brownout_status or {}
    if b is not None and (st.get("phase") == "Engaged" or st.get("pressureSince")):
        chosen = b.variant or st.get("variant")
        out |= {str(chosen)} if chosen else set(b.candidates)
    return out


def plan(spec: Any, ability: Ability, live: Mapping[str, Live], weights: Mapping[str, int],
         wake: Iterable[str], floors: Mapping[str, int]) -> Plan:
    """Scale to zero for ``spec``'s variants this pass (``weights``: the effective ones,
    ``wake``: ``awake``; ``floors``: the replicas a variant's HPA would keep at least)."""
    out = Plan()
    zero = spec.may_scale_to_zero
    if not zero:
        return out
    wake = set(wake)
    missing = ability.missing()
    if missing:
        why = "; ".join(missing)
        out.ignored.append(f"spec.autoscaling.minReplicas: 0 ({', '.join(zero)}): {why}, so "
                           "these variants keep at least one pod (an HPA scales them)")
        out.blind.append(f"scale to zero unavailable ({why}); {', '.join(zero)} keep at least "
                         "one pod")
        out.floor = {v: max(1, floors.get(v, 1)) for v in zero}
        return out
    down = [] if ability.activator_ips else [f"the activator {ability.activator} has no "
                                             "ready pod"]
    for v in zero:
        needed = v in wake
        out.keda[v] = max(1, floors.get(v, 1)) if needed else 0
        found = live.get(v, Live())
        problem = keda_ready(found.scaled_object)
        reasons = [*down, *([f"KEDA cannot scale {v} ({problem})"] if problem else [])]
        if not reasons:
            continue
        current = found.replicas or 0
        keep = max(current, 1) if (weights.get(v, 0) > 0 or needed) else current
        out.paused[v] = keep
        if current < keep:
            out.restore[v] = keep
        out.blind.append(f"variant {v}: {'; '.join(reasons)}; it keeps {keep} pod(s) and is "
                         "not scaled to zero")
    return out


def inflight_query(namespace: str, model: str, variant: str) -> str:
    sel = (f'{metrics.LABEL_NAMESPACE}="{namespace}",{metrics.LABEL_MODEL}="{model}",'
           f'{metrics.LABEL_VARIANT}="{variant}"')
    return f"sum({metrics.INFLIGHT}{{{sel}}})"


def activity_query(namespace: str, model: str, variant: str) -> str:
    sel = (f'{metrics.LABEL_NAMESPACE}="{namespace}",{metrics.LABEL_MODEL}="{model}",'
           f'{metrics.LABEL_VARIANT}="{variant}"')
    return f"sum(rate({metrics.total(metrics.REQUESTS)}{{{sel}}}[{ACTIVITY_WINDOW}]))"


def build_scaled_object(meta: Mapping[str, Any], spec: Any, variant: str, name: str,
                        ability: Ability, min_count: int, paused: int | None
                        ) -> dict[str, Any]:
    """The variant's ScaledObject (named like its Deployment): KEDA makes the HPA. Triggers:
    the request rate over ``ACTIVITY_WINDOW`` (busy or idle), the HPA's own metric (in-flight
    requests per pod from Prometheus, or CPU utilisation), and the activator's held requests
    (``external-push``: a held request starts a pod at once)."""
    a = spec.autoscaling
    ns, model = spec.namespace, spec.name
    triggers: list[dict[str, Any]] = [{"type": "prometheus", "name": "activity", "metadata": {
        "serverAddress": ability.prometheus_url, "query": activity_query(ns, model, variant),
        "threshold": str(ACTIVITY_THRESHOLD), "activationThreshold": "0"}}]
    if a.target_inflight:
        triggers.append({"type": "prometheus", "name": "inflight", "metadata": {
            "serverAddress": ability.prometheus_url, "query": inflight_query(ns, model, variant),
            "threshold": str(a.target_inflight)}})
    if a.target_cpu or not a.target_inflight:
        triggers.append({"type": "cpu", "name": "cpu", "metricType": "Utilization",
                         "metadata": {"value": str(a.target_cpu or 80)}})
    triggers.append({"type": "external-push", "name": "held", "metadata": {
        "scalerAddress": ability.scaler_address,
        **dict(zip(stz.SCALER_METADATA, (ns, model, variant), strict=True))}})
    so_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": min_count, "maxReplicaCount": a.max_replicas,
        "cooldownPeriod": int(spec.idle_seconds(variant)), "pollingInterval": POLLING_SECONDS,
        "triggers": triggers}
    if a.behavior:
        so_spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": dict(a.behavior)}}
    metadata = {k: v for k, v in meta.items()}
    if paused is not None:
        metadata["annotations"] = {**(metadata.get("annotations") or {}),
                                   PAUSED_REPLICAS: str(paused)}
    return {"apiVersion": stz.KEDA_API, "kind": stz.SCALED_OBJECT, "metadata": metadata,
            "spec": so_spec}


# ---- routing at zero -----------------------------------------------------------------------

@dataclass(frozen=True)
class HeldService:
    """A Service with no ready pod of its own that routes to a variant that may be at zero."""

    service: str
    variant: str | None
    """None: the stable Service."""


def _ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False  # draining: the Service loses it in a moment
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def services_at_zero(spec: Any, stable_service: str, variant_service: Mapping[str, str],
                     zero: Iterable[str], weights: Mapping[str, int],
                     pods: Sequence[Mapping[str, Any]],
                     replicas: Mapping[str, int | None]) -> list[HeldService]:
    """The Services that route to a variant of ``zero`` and have no ready pod of their own
    (a pod being deleted does not count; neither does a variant whose Deployment is at 0
    replicas), so their requests must be held: the stable Service when every variant with
    weight that it routes to is so, each per-variant Service (``variant_service``) of such a
    variant."""
    zero = set(zero)

    def up(v: str) -> bool:
        if (replicas.get(v) or 0) == 0:
            return False
        return any(_ready(p) and ((p.get("metadata") or {}).get("labels") or {}).get(
            LABEL_VARIANT) == v for p in pods)

    out: list[HeldService] = []
    serving = [v for v, w in weights.items() if w > 0]
    stable_up = any(_ready(p) and ((p.get("metadata") or {}).get("labels") or {}).get(
        LABEL_SERVING) == "true" and (replicas.get(str(((p.get("metadata") or {}).get(
            "labels") or {}).get(LABEL_VARIANT))) or 0) > 0 for p in pods)
    if serving and set(serving) & zero and not stable_up:
        out.append(HeldService(stable_service, None))
    for v in spec_variants(spec):
        if v in zero and v in variant_service and not up(v):
            out.append(HeldService(variant_service[v], v))
    return out


def spec_variants(spec: Any) -> list[str]:
    return [v.name for v in spec.variants]


class PortsExhausted(Exception):
    """Every port of ``PORT_RANGE`` holds a route."""


def read_routes(configmap: Mapping[str, Any] | None) -> list[Route]:
    """The routes a routes ConfigMap holds (malformed entries are dropped)."""
    raw = ((configmap or {}).get("data") or {}).get(stz.ROUTES_KEY) or "{}"
    try:
        entries = json.loads(raw).get("routes") or []
    except (ValueError, AttributeError):
        return []
    out = []
    for e in entries:
        try:
            out.append(Route(int(e["port"]), str(e["namespace"]), str(e["service"]),
                             int(e["servicePort"]), str(e["modelservice"]),
                             None if e.get("variant") is None else str(e["variant"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def assign_ports(routes: Sequence[Route], namespace: str, modelservice: str,
                 wanted: Sequence[tuple[str, int, str | None]]) -> list[Route]:
    """``routes`` with ``modelservice``'s replaced by ``wanted`` ((service, service port,
    variant)): a Service port held before keeps its port; a new one gets the lowest free port
    of ``PORT_RANGE``. Raises PortsExhausted."""
    mine = {r.key(): r for r in routes if r.namespace == namespace
            and r.modelservice == modelservice}
    others = [r for r in routes if not (r.namespace == namespace
                                        and r.modelservice == modelservice)]
    taken = {r.port for r in others}
    out: list[Route] = list(others)
    fresh: list[tuple[str, int, str | None]] = []
    for service, port, variant in wanted:
        held = mine.get((namespace, service, port))
        if held is not None and held.port not in taken:
            out.append(Route(held.port, namespace, service, port, modelservice, variant))
            taken.add(held.port)
        else:
            fresh.append((service, port, variant))
    free = (p for p in range(stz.PORT_RANGE[0], stz.PORT_RANGE[1] + 1) if p not in taken)
    for service, port, variant in fresh:
        number = next(free, None)
        if number is None:
            raise PortsExhausted(f"every activator port {stz.PORT_RANGE[0]}-"
                                 f"{stz.PORT_RANGE[1]} is held")
        out.append(Route(number, namespace, service, port, modelservice, variant))
    return sorted(out, key=lambda r: r.port)


def _route_dict(route: Route) -> dict[str, Any]:
    """A route as an entry of ``ROUTES_KEY``."""
    return {"port": route.port, "namespace": route.namespace, "service": route.service,
            "servicePort": route.service_port, "modelservice": route.modelservice,
            "variant": route.variant}


def build_routes(namespace: str, routes: Sequence[Route]) -> dict[str, Any]:
    """The routes ConfigMap (in the operator's namespace; the operator is its only writer)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": stz.ROUTES_CONFIGMAP, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
            "data": {stz.ROUTES_KEY: json.dumps({"routes": [_route_dict(r) for r in routes]},
                                                sort_keys=True)}}


def slice_name(service: str) -> str:
    name = service + stz.SLICE_SUFFIX
    return name if len(name) <= 63 else service[:63 - len(stz.SLICE_SUFFIX)] + stz.SLICE_SUFFIX


def build_slice(meta: Mapping[str, Any], held: HeldService,
                ports: Mapping[str, int], ips: Sequence[str]) -> dict[str, Any]:
    """``<service>-activator``: the Service's traffic to the activator pods ``ips``, each of its
    ports (by name) on the activator port allocated for it."""
    labels = {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: held.service,
              MANAGED_BY_LABEL: stz.SLICE_MANAGED_BY}
    if held.variant is None:
        labels.pop(LABEL_VARIANT, None)
    else:
        labels[LABEL_VARIANT] = held.variant
    six = any(":" in ip for ip in ips)
    return {"apiVersion": SLICE_API[0], "kind": SLICE_API[1],
            "metadata": {**meta, "name": slice_name(held.service), "labels": labels},
            "addressType": "IPv6" if six else "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}
                          for ip in sorted(ips)],
            "ports": [{"name": name, "port": port, "protocol": "TCP"}
                      for name, port in sorted(ports.items())]}


def owns_slice(obj: Mapping[str, Any]) -> bool:
    """Whether an EndpointSlice is one the operator writes (never touch another)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == stz.SLICE_MANAGED_BY and \
        LABEL_MODELSERVICE in labels
