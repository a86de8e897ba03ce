"""One reconcile pass of a ModelService: build desired -> apply what differs -> prune -> status.

No kopf here: ``handlers`` decide *when* a pass runs and turn errors into retries; this module
decides *what* a pass does. The pass is write-frugal, so a resync that finds nothing changed
sends no write at all:

* every desired object carries the annotation ``serving.modelservice.dev/applied-hash`` (a hash
  of the desired manifest). An object is re-applied only when the live object is missing,
  carries another hash (the desired state changed) or no longer contains every desired field
  (someone edited or removed it by hand — the apply repairs it);
* objects that carry our ModelService label *and* a controller ownerReference to this exact
  ModelService (uid) but are no longer desired are deleted (removed variants, switched-off
  features); nothing else is ever deleted. Deleting the ModelService itself is left to the
  garbage collector through the ownerReferences;
* the status is patched only when it differs from the stored one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from msv_operator import builders, conditions, spec, status
from msv_operator import kube as kubeapi
from msv_operator.config import PREFIX, OperatorConfig

log = logging.getLogger("msv_operator.reconcile")

HASH_ANNOTATION = f"{PREFIX}/applied-hash"
LABEL_MODELSERVICE = builders.LABEL_MODELSERVICE
LABEL_VARIANT = builders.LABEL_VARIANT

# Kinds the operator may create; the optional ones are listed only when their API is served.
CORE_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"),
              ("autoscaling/v2", "HorizontalPodAutoscaler"))
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")


@dataclass
class Observed:
    """Live objects of one ModelService (from the operator's watch caches or a LIST)."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Result:
    """What one pass did (for logs, metrics, Events and tests)."""

    applied: list[str] = field(default_factory=list)
    unchanged: int = 0
    pruned: list[str] = field(default_factory=list)
    invalid: str | None = None
    apply_error: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_written: bool = False
    transitions: list[conditions.Transition] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    """What a pass restored after someone deleted or edited it by hand (one Event each)."""

    @property
    def outcome(self) -> str:
        if self.invalid is not None:
            return "invalid"
        if self.apply_error is not None:
            return "error"
        return "applied" if self.applied or self.pruned else "unchanged"


# ---- pure helpers --------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]{0,2})$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _QUANTITY.match(value.strip())
        if m and m.group(2) in _SUFFIX:
            try:
                return float(m.group(1)) * _SUFFIX[m.group(2)]
            except ValueError:
                return None
    return None


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value is False or value == ""


def drift(live: Any, desired: Any, path: str = "") -> str | None:
    """The path of the first field of ``desired`` that ``live`` does not hold (None when it
    holds them all; API-server defaults are ignored; resource quantities compare by value, so
    ``1024Mi`` matches ``1Gi``)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return None if _empty(desired) and live is None else (path or ".")
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in live:
                if _empty(value):
                    continue
                return sub
            found = drift(live[key], value, sub)
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if live is None:
            return None if not desired else path
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for i, (lv, dv) in enumerate(zip(live, desired, strict=True)):
            found = drift(lv, dv, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if desired == live:
        return None
    if isinstance(desired, str | int | float) and isinstance(live, str | int | float):
        if str(desired) == str(live):
            return None
        dq, lq = _quantity(desired), _quantity(live)
        if dq is not None and lq is not None and abs(dq - lq) <= 1e-9 * max(1.0, abs(dq)):
            return None
    return path


def contains(live: Any, desired: Any) -> bool:
    """Whether ``live`` holds every field of ``desired`` (see ``drift``)."""
    return drift(live, desired) is None


def manifest_hash(obj: Mapping[str, Any]) -> str:
    """A stable hash of a desired manifest (without our hash annotation)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()[:20]


def with_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` annotated with its own hash."""
    digest = manifest_hash(obj)
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), HASH_ANNOTATION: digest}
    out["metadata"] = meta
    return out


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """False only when the live object was applied from the same manifest and still holds it."""
    if live is None:
        return True
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    wanted = ((desired.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
    if wanted is None or annotations.get(HASH_ANNOTATION) != wanted:
        return True
    return not contains(live, desired)


def repair_of(desired: Mapping[str, Any], live: Mapping[str, Any] | None,
              ms: Mapping[str, Any]) -> str | None:
    """What applying ``desired`` repairs, in words, or None when it is not a repair.

    Edited: the live object was applied from this very manifest (same hash) and lost a field.
    Deleted: a core object is missing although the operator already reported this generation
    (``status.observedGeneration``), so a previous pass had created it.
    """
    if live is not None:
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        wanted = ((desired.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
        path = drift(live, desired) if annotations.get(HASH_ANNOTATION) == wanted else None
        return None if path is None else \
            f"restored {describe(desired)}: {path} was changed by hand"
    generation = (ms.get("metadata") or {}).get("generation")
    observed = (ms.get("status") or {}).get("observedGeneration")
    core = (desired.get("apiVersion"), desired.get("kind")) in CORE_KINDS
    if core and generation is not None and observed == generation:
        return f"re-created {describe(desired)}: it was deleted"
    return None


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) identifying an owned object inside one namespace."""
    return str(obj.get("kind")), str((obj.get("metadata") or {}).get("name"))


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` has a controller ownerReference to the ModelService ``uid``."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("uid") == uid and ref.get("controller") and ref.get("kind") == "ModelService":
            return True
    return False


def describe(obj: Mapping[str, Any]) -> str:
    kind, name = key_of(obj)
    return f"{kind} {name}"


def _deployments_by_variant(objects: Iterable[Mapping[str, Any]], uid: str
                            ) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        if obj.get("kind") != "Deployment" or not owned_by(obj, uid):
            continue
        variant = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_VARIANT)
        if variant:
            out[str(variant)] = obj
    return out


DEFAULT_SCRAPE_INTERVAL = "15s"


def ignored_fields(parsed: spec.ModelServiceSpec, opts: builders.BuildOptions
                   ) -> list[tuple[str, str]]:
    """(reason, message) for each field the spec sets that cannot act in this cluster."""
    out: list[tuple[str, str]] = []
    if parsed.service_monitor == "enabled" and not opts.service_monitor:
        out.append(("ServiceMonitorUnavailable",
                    "spec.monitoring.serviceMonitor: enabled, but the cluster does not serve "
                    "monitoring.coreos.com/v1 ServiceMonitor (install the Prometheus Operator "
                    "CRDs), so prometheus.io/* scrape annotations are set instead"))
    annotations = parsed.service_monitor != "disabled" and not opts.service_monitor
    if annotations and parsed.scrape_interval != DEFAULT_SCRAPE_INTERVAL:
        out.append(("ScrapeIntervalIgnored",
                    f"spec.monitoring.interval: {parsed.scrape_interval} needs a ServiceMonitor "
                    "(prometheus.io/* scrape annotations cannot carry an interval), so the "
                    "Prometheus scrape configuration's own interval applies"))
    if parsed.gateway_parents and not opts.gateway_api:
        out.append(("GatewayAPIUnavailable",
                    "spec.gateway: the cluster does not serve gateway.networking.k8s.io/v1 "
                    "HTTPRoute (install Gateway API), so traffic is split by the stable Service's "
                    "ready pods instead (approximate)"))
    return out


# ---- the pass ------------------------------------------------------------------------------

@dataclass
class Context:
    """What a pass needs besides the ModelService (one per operator process)."""

    config: OperatorConfig
    kube: kubeapi.Kube
    capabilities: kubeapi.Capabilities


def build_options(cfg: OperatorConfig, caps: kubeapi.CapabilityAnswer) -> builders.BuildOptions:
    return builders.BuildOptions(
        default_image=cfg.default_image,
        default_gpu_image=cfg.default_gpu_image,
        service_monitor=caps.service_monitor,
        gateway_api=caps.gateway_api,
    )


def observe_optional(ctx: Context, ms: Mapping[str, Any], caps: kubeapi.CapabilityAnswer
                     ) -> list[dict[str, Any]]:
    """Owned ServiceMonitors/HTTPRoutes (LIST, only for APIs the cluster serves)."""
    meta = ms["metadata"]
    selector = f"{LABEL_MODELSERVICE}={meta['name']}"
    found: list[dict[str, Any]] = []
    for served, (api_version, kind) in ((caps.service_monitor, SERVICE_MONITOR),
                                        (caps.gateway_api, HTTPROUTE)):
        if served:
            found.extend(ctx.kube.list(api_version, kind, meta["namespace"], selector))
    return found


def reconcile(ctx: Context, ms: Mapping[str, Any], observed: Observed, now: str) -> Result:
    """Apply, prune and write status for ``ms``. Raises ``kubeapi.Conflict``/``kubeapi.Transient``
    for the caller to retry; every other problem ends up in the status."""
    meta = ms["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    generation = meta.get("generation")
    result = Result()
    if meta.get("deletionTimestamp"):
        return result  # the garbage collector removes the children

    caps = ctx.capabilities.get()
    live = {key_of(o): o for o in [*observed.objects, *observe_optional(ctx, ms, caps)]}

    desired: list[dict[str, Any]] = []
    ignored: list[tuple[str, str]] = []
    try:
        opts = build_options(ctx.config, caps)
        ignored = ignored_fields(spec.parse_spec(ms), opts)
        desired = [with_hash(o) for o in builders.build_all(ms, opts)]
    except spec.InvalidSpecError as e:
        result.invalid = str(e)

    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    if result.invalid is None:
        for obj in desired:
            current = live.get(key_of(obj))
            if not needs_apply(obj, current):
                result.unchanged += 1
                continue
            try:
                # Only a Deployment's answer is read (its status); the others are not decoded.
                live_answer = ctx.kube.apply(obj, answer=obj["kind"] == "Deployment")
                if live_answer:
                    fresh[key_of(obj)] = live_answer
            except kubeapi.Rejected as e:
                result.apply_error = str(e)
                log.warning("Could not apply %s: %s", describe(obj), e,
                            extra={"namespace": ns, "modelservice": name})
                continue
            result.applied.append(describe(obj))
            repair = repair_of(obj, current, ms)
            if repair:
                result.repaired.append(repair)
                log.info("Repaired: %s", repair, extra={"namespace": ns, "modelservice": name})
            else:
                log.info("Applied %s", describe(obj),
                         extra={"namespace": ns, "modelservice": name})

        wanted = {key_of(o) for o in desired}
        for key, obj in sorted(live.items()):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if key in wanted or labels.get(LABEL_MODELSERVICE) != name or not owned_by(obj, uid):
                continue
            ctx.kube.delete(str(obj.get("apiVersion")), key[0], ns, key[1],
                            (obj.get("metadata") or {}).get("uid"))
            result.pruned.append(describe(obj))
            log.info("Deleted %s", describe(obj), extra={"namespace": ns, "modelservice": name})

    latest = {**live, **fresh}
    deployments: dict[str, Mapping[str, Any] | None] = dict(
        _deployments_by_variant(latest.values(), uid))
    pods = [p for p in observed.pods if owned_by_name(p, name)]
    result.status = status.compute_status(
        ms, deployments=deployments, pods=pods, now=now,
        observed_generation=int(generation) if generation is not None else None,
        invalid_spec=result.invalid, apply_error=result.apply_error, ignored_fields=ignored,
    )
    write_status(ctx, ms, result)
    return result


def owned_by_name(pod: Mapping[str, Any], name: str) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MODELSERVICE) == name


def write_status(ctx: Context, ms: Mapping[str, Any], result: Result) -> None:
    """Patch the status when (and only when) it changed; record condition transitions."""
    prior = ms.get("status") or {}
    if not status.changed(prior, result.status):
        return
    meta = ms["metadata"]
    try:
        ctx.kube.patch_status(meta["namespace"], meta["name"], result.status)
    except kubeapi.NotFound:
        # Deleted while the pass ran (the watch cache lags behind): nothing left to report;
        # the garbage collector removes what the pass applied.
        log.info("ModelService %s/%s is gone; status not written", meta["namespace"],
                 meta["name"], extra={"namespace": meta["namespace"],
                                      "modelservice": meta["name"]})
        return
    result.status_written = True
    result.transitions = conditions.transitions(prior.get("conditions"),
                                                result.status.get("conditions"))


# Conditions whose flips are worth an Event: (type) -> (reason when True, when cleared).
FLIP_EVENTS = {status.STALLED: ("Stalled", "StallCleared"),
               status.FIELDS_IGNORED: ("FieldsIgnored", "FieldsActing")}


def event_for(transition: conditions.Transition) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Kubernetes Event for a condition transition, if any."""
    if transition.type == status.READY:
        if transition.status == conditions.TRUE:
            return "Normal", "Ready", transition.message or "every variant is ready"
        if transition.previous_status is None and transition.reason == "RollingOut":
            return None  # a new ModelService starting up is not news
        kind = "Normal" if transition.reason == "RollingOut" else "Warning"
        return kind, transition.reason, transition.message
    if transition.type == status.DEGRADED and transition.status == conditions.FALSE \
            and transition.previous_status == conditions.TRUE:
        return "Normal", "Recovered", transition.message
    if transition.type in FLIP_EVENTS and transition.status != transition.previous_status:
        on, off = FLIP_EVENTS[transition.type]
        if transition.status == conditions.TRUE:
            return "Warning", on, f"{transition.reason}: {transition.message}"
        if transition.previous_status == conditions.TRUE:
            return "Normal", off, transition.message
    return None


def events(result: Result) -> list[tuple[str, str, str]]:
    """Every Event one pass has to post: condition transitions, then repairs."""
    out = [e for e in (event_for(t) for t in result.transitions) if e is not None]
    out += [("Normal", "Repaired", message) for message in result.repaired]
    return out


def plain(obj: Any) -> Any:
    """A deep plain-dict/list copy of a kopf ``Body``/mapping (safe to keep and mutate).

    Keys and short strings are interned: the thousands of cached objects then share one copy
    of every field name and repeated value instead of one per decoded watch event."""
    if isinstance(obj, Mapping):
        return {sys.intern(str(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if type(obj) is str and len(obj) <= 64:
        return sys.intern(obj)
    return obj


def trim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of a Pod that the status needs (keeps the watch cache small)."""
    meta = pod.get("metadata") or {}
    st = pod.get("status") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        return [{"name": c.get("name"), "ready": c.get("ready"), "state": plain(c.get("state")),
                 "lastState": plain(c.get("lastState"))} for c in st.get(key) or ()]

    return {
        "metadata": {"name": meta.get("name"), "labels": plain(meta.get("labels") or {}),
                     "ownerReferences": plain(meta.get("ownerReferences") or [])},
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": st.get("phase"),
            "conditions": [plain(c) for c in st.get("conditions") or ()
                           if c.get("type") in ("PodScheduled", "Ready")],
            "containerStatuses": containers("containerStatuses"),
            "initContainerStatuses": containers("initContainerStatuses"),
        },
    }


def pod_summary(pod: Mapping[str, Any]) -> str:
    """A compact fingerprint of what the status reads from a Pod."""
    return json.dumps(trim_pod(pod)["status"], sort_keys=True, default=str)


# Metadata a pass never reads: dropped from cached objects (smaller caches).
UNREAD_METADATA = ("managedFields", "resourceVersion", "creationTimestamp", "selfLink")


def strip_live(obj: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """A plain copy of a watched object without the metadata a pass never reads."""
    meta = obj.get("metadata") or {}
    out = plain({**obj, "metadata": {k: v for k, v in meta.items() if k not in UNREAD_METADATA}})
    out.setdefault("apiVersion", api_version)
    out.setdefault("kind", kind)
    return out
