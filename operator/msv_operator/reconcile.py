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

The spec is parsed once per pass. ``rollout.advance`` turns it, the stored ``status.rollout``,
the variants' readiness and (when one is due) an analysis sample into the *effective weights*
that the builders and the status both take, and the mirror target of the stable variants;
``brownout.advance`` then may shift part of them to a cheaper variant (never during a
rollout), from the stored ``status.brownout``, the stable variant's HPA and the measurement.
Per-variant measurements (Prometheus, metrics.k8s.io) are refreshed on the analysis interval
(``measure``), not on every pass, and carried over in the status between refreshes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from msv_operator import brownout, builders, conditions, prom, rollout, spec, status
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
    events: list[rollout.Event] = field(default_factory=list)
    """Rollout Events of this pass (posted once the status that records them is written)."""
    requeue_after: float | None = None
    """Seconds until a timed step or the next analysis/measurement needs another pass."""
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
_SUFFIX = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3,
           "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
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


def _by_variant(objects: Iterable[Mapping[str, Any]], uid: str, kind: str
                ) -> dict[str, Mapping[str, Any]]:
    """The owned objects of ``kind``, by variant."""
    out: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        if obj.get("kind") != kind or not owned_by(obj, uid):
            continue
        variant = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_VARIANT)
        if variant:
            out[str(variant)] = obj
    return out


def _deployments_by_variant(objects: Iterable[Mapping[str, Any]], uid: str
                            ) -> dict[str, Mapping[str, Any]]:
    return _by_variant(objects, uid, "Deployment")


def hpas_by_variant(objects: Iterable[Mapping[str, Any]], uid: str
                    ) -> dict[str, brownout.HpaState]:
    """What each owned HPA says, by variant."""
    return {v: brownout.hpa_state(o)
            for v, o in _by_variant(objects, uid, "HorizontalPodAutoscaler").items()}


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
    analyzer: rollout.Analyzer | None = None
    """Where analysis samples come from (None: no Prometheus configured)."""
    measured_at: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """When each ModelService was last measured (in memory: a restart measures at once)."""


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
    prior = ms.get("status") or {}
    moment = datetime.fromisoformat(now.replace("Z", "+00:00"))
    pods = [p for p in observed.pods if owned_by_name(p, name)]
    decision: rollout.Decision | None = None
    shed: brownout.Decision | None = None
    marks: dict[str, builders.PodMarks] = {}  # what each variant's running pods carry
    hpas = hpas_by_variant(live.values(), uid)
    measured = status.prior_measured(prior)
    try:
        opts = build_options(ctx.config, caps)
        parsed = spec.parse_spec(ms)
        ignored = ignored_fields(parsed, opts)
        readiness = {v: rollout.Readiness(ready, failure) for v, (ready, failure) in
                     status.readiness(_deployments_by_variant(live.values(), uid), pods).items()}
        taken = measure(ctx, parsed, prior, moment, measured)
        result.requeue_after = taken.wait
        decision = rollout.advance(parsed, prior.get("rollout"), readiness, taken.for_rollout,
                                   meta.get("annotations") or {}, moment)
        shed = brownout.advance(parsed, prior.get("brownout"), decision.weights,
                                decision.status, hpas.get(parsed.stable), readiness,
                                taken.taken, moment)
        result.events = [*decision.events, *shed.events]
        result.requeue_after = _sooner(result.requeue_after, decision.requeue_after)
        serving = builders.Serving(shed.weights, mirror_for(parsed, decision, live))
        marks = builders.pod_marks(parsed, serving)
        desired = [with_hash(o) for o in builders.build_all(ms, opts, parsed, serving)]
    except spec.InvalidSpecError as e:
        result.invalid = str(e)

    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    if result.invalid is None:
        for obj in desired:
            handover = replicas_handover(obj, live)
            if handover is not None:
                ctx.kube.apply(handover, answer=False, field_manager=handover_manager(ctx))
                log.info("Handed %s's replicas (%s) over to its HPA", describe(obj),
                         handover["spec"]["replicas"],
                         extra={"namespace": ns, "modelservice": name})
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

        for pod_name, labels, annotations in pods_to_mark(marks, pods):
            # Pod templates carry spec.traffic's label and no mirror (builders): weights and
            # mirroring the operator moves (rollout steps, rollback, promotion, brownout)
            # restart no pod; the running pods join or leave the stable Service, and start or
            # stop mirroring, at once. A pod started meanwhile (a restart, a scale-up) is
            # marked by the pass its first event wakes.
            try:
                ctx.kube.patch_metadata("v1", "Pod", ns, pod_name, labels, annotations)
            except kubeapi.NotFound:
                continue
            log.info("Marked Pod %s: %s", pod_name, ", ".join(
                [f"{'into' if v == 'true' else 'out of'} the stable Service"
                 for v in labels.values()]
                + [f"mirroring {'stopped' if v is None else 'to ' + v}"
                   for v in annotations.values()]),
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
    result.status = status.compute_status(
        ms, deployments=deployments, pods=pods, now=now,
        observed_generation=int(generation) if generation is not None else None,
        invalid_spec=result.invalid, apply_error=result.apply_error, ignored_fields=ignored,
        weights=shed.weights if shed is not None else None,
        # an invalid spec keeps the rollout and the brownout where they were
        rollout=decision.status if decision is not None else prior.get("rollout"),
        brownout=shed.status if shed is not None else prior.get("brownout"),
        hpas=hpas, measured=measured,
    )
    write_status(ctx, ms, result)
    return result


def pods_to_mark(marks: Mapping[str, builders.PodMarks], pods: Iterable[Mapping[str, Any]]
                 ) -> list[tuple[str, dict[str, str], dict[str, str | None]]]:
    """(pod, label patch, annotation patch) for each pod whose serving label or mirror
    annotation differs from its variant's ``marks`` (pods of variants not in ``marks`` and
    pods being deleted are left alone; a None annotation value removes it)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        want = marks.get(str((meta.get("labels") or {}).get(builders.LABEL_VARIANT)))
        if want is None or meta.get("deletionTimestamp"):
            continue
        labels: dict[str, str] = {}
        annotations: dict[str, str | None] = {}
        if (meta.get("labels") or {}).get(builders.LABEL_SERVING) != want.serving:
            labels[builders.LABEL_SERVING] = want.serving
        if (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION) != want.mirror:
            annotations[builders.MIRROR_ANNOTATION] = want.mirror
        if labels or annotations:
            out.append((str(meta["name"]), labels, annotations))
    return sorted(out, key=lambda t: t[0])


def handover_manager(ctx: Context) -> str:
    return f"{ctx.config.field_manager}-handover"


def replicas_handover(desired: Mapping[str, Any], live: Mapping[tuple[str, str], Mapping[str, Any]]
                      ) -> dict[str, Any] | None:
    """The apply that keeps a Deployment's replica count when an HPA is about to own it.

    With server-side apply, a field the operator stops sending is removed when the operator
    was its only owner: switching a variant from fixed replicas to autoscaling would drop the
    running Deployment to 1 replica before the HPA acts. So, before the first apply without
    ``replicas`` (the HPA does not exist yet), a second field manager applies the live value,
    which then stays (owned by that manager) until the HPA controller scales it.
    """
    if desired.get("kind") != "Deployment" or "replicas" in (desired.get("spec") or {}):
        return None
    current = live.get(key_of(desired))
    replicas = ((current or {}).get("spec") or {}).get("replicas")
    name = (desired.get("metadata") or {}).get("name")
    if replicas is None or ("HorizontalPodAutoscaler", str(name)) in live:
        return None
    meta = desired["metadata"]
    return {"apiVersion": desired["apiVersion"], "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": int(replicas)}}


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


NO_PROMETHEUS = ("no Prometheus address is configured (operator setting MSV_PROMETHEUS_URL, "
                 "chart value prometheus.url)")


@dataclass
class Measurement:
    """What ``measure`` took in one pass."""

    for_rollout: rollout.Sample | None = None
    """The sample for the rollout (only when its analysis is due)."""
    taken: rollout.Sample | None = None
    """Any sample taken in this pass (the brownout reads the stable variant's p95 from it)."""
    wait: float | None = None
    """Seconds until the next refresh."""


def _cadence(ctx: Context, parsed: spec.ModelServiceSpec, prior: Mapping[str, Any]
             ) -> tuple[float, float]:
    """(interval, window) of the measurements: the rollout's analysis while it is active
    or configured, else the brownout's, else the operator's MSV_MEASURE_SECONDS."""
    phase = (prior.get("rollout") or {}).get("phase")
    b = parsed.autoscaling.brownout if parsed.autoscaling else None
    if parsed.rollout and (b is None or phase in rollout.ACTIVE):
        return parsed.rollout.analysis.interval_seconds, parsed.rollout.analysis.window_seconds
    if b is not None:
        return b.interval_seconds, b.window_seconds
    return ctx.config.measure_seconds, ctx.config.measure_seconds


def measure(ctx: Context, parsed: spec.ModelServiceSpec, prior: Mapping[str, Any],
            moment: datetime, measured: dict[str, dict[str, Any]]) -> Measurement:
    """Refresh ``measured`` (per-variant fields) when due; returns the samples for the
    rollout (only when its analysis is due) and the brownout, and the seconds until the next
    refresh. A sample that reads Prometheus replaces its fields (a value it no longer has is
    dropped, not kept stale); one that cannot read it keeps the last ones."""
    key = (parsed.namespace, parsed.name)
    step_seconds = rollout.analysis_due(parsed, prior.get("rollout"), moment)
    brownout = parsed.autoscaling is not None and parsed.autoscaling.brownout is not None
    if ctx.analyzer is None:
        blind = rollout.Sample(error=NO_PROMETHEUS)
        return Measurement(for_rollout=None if step_seconds is None else blind,
                           taken=blind if brownout or step_seconds is not None else None)
    interval, window = _cadence(ctx, parsed, prior)
    last = ctx.measured_at.get(key)
    since = None if last is None else (moment - last).total_seconds()
    if step_seconds is None and since is not None and since < interval:
        return Measurement(wait=interval - since)
    ctx.measured_at[key] = moment
    variants = [v.name for v in parsed.variants]
    sample = ctx.analyzer.sample(parsed.namespace, parsed.name, variants, window, step_seconds)
    if sample.error is None:
        for v, metrics in sample.variants.items():
            kept = {k: x for k, x in measured.get(v, {}).items() if k not in prom.FIELDS}
            measured[v] = {**kept, **prom.measured_fields(metrics)}
    usage = pod_usage(ctx, parsed)
    for v, fields in usage.items():
        measured[v] = {**measured.get(v, {}), **fields}
    return Measurement(for_rollout=sample if step_seconds is not None else None, taken=sample,
                       wait=interval)


def pod_usage(ctx: Context, parsed: spec.ModelServiceSpec) -> dict[str, dict[str, int]]:
    """Average CPU (millicores) and memory (bytes) per pod of each variant, from
    metrics.k8s.io; {} when the cluster does not serve it."""
    sums: dict[str, list[float]] = {}
    for item in ctx.kube.pod_metrics(parsed.namespace, f"{LABEL_MODELSERVICE}={parsed.name}"):
        variant = ((item.get("metadata") or {}).get("labels") or {}).get(LABEL_VARIANT)
        if not variant:
            continue
        cpu = memory = 0.0
        for c in item.get("containers") or ():
            usage = c.get("usage") or {}
            cpu += _quantity(usage.get("cpu")) or 0.0
            memory += _quantity(usage.get("memory")) or 0.0
        entry = sums.setdefault(str(variant), [0.0, 0.0, 0.0])
        entry[0] += cpu
        entry[1] += memory
        entry[2] += 1
    return {v: {"cpuMillicores": round(cpu * 1000 / n), "memoryBytes": round(memory / n)}
            for v, (cpu, memory, n) in sums.items() if n}


def mirror_for(parsed: spec.ModelServiceSpec, decision: rollout.Decision,
               live: Mapping[tuple[str, str], Mapping[str, Any]]) -> builders.Mirror | None:
    """The stable variants' mirror target while a rollout is active: the candidate Service's
    clusterIP (no cluster DNS needed); none until that Service exists."""
    r = parsed.rollout
    if r is None or not decision.mirror or r.analysis.mirror_percent == 0:
        return None
    svc = live.get(("Service", builders.object_name(parsed.name, r.candidate))) or {}
    ip = (svc.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        return None
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    scheme = "https" if parsed.tls_secret else "http"
    return builders.Mirror(f"{scheme}://{host}:80", r.analysis.mirror_percent, r.candidate)


def owned_by_name(pod: Mapping[str, Any], name: str) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MODELSERVICE) == name


def write_status(ctx: Context, ms: Mapping[str, Any], result: Result) -> None:
    """Patch the status when (and only when) it changed; record condition transitions."""
    prior = ms.get("status") or {}
    if not status.changed(prior, result.status):
        return
    meta = ms["metadata"]
    patch: dict[str, Any] = dict(result.status)
    for key in status.OWNED_KEYS:  # a merge patch removes a key only with an explicit null
        if key in prior and key not in patch:
            patch[key] = None
    try:
        ctx.kube.patch_status(meta["namespace"], meta["name"], patch)
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
    """Every Event one pass has to post: condition transitions, then repairs.

    One cause, one Event: when ``Ready`` turns to a failure and ``Stalled`` turns True for
    the same reason in the same pass, only the ``Ready`` one (reason ``Unschedulable``,
    ``InvalidSpec``, ...) is posted; the Stalled flip alone (its reason unchanged on Ready)
    still is."""
    ready_reasons = {t.reason for t in result.transitions
                     if t.type == status.READY and t.status != conditions.TRUE
                     and event_for(t) is not None}
    out = [e for e in (event_for(t) for t in result.transitions
                       if not (t.type == status.STALLED and t.status == conditions.TRUE
                               and t.reason in ready_reasons))
           if e is not None]
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

    trimmed_meta = {"name": meta.get("name"), "labels": plain(meta.get("labels") or {}),
                    "ownerReferences": plain(meta.get("ownerReferences") or [])}
    mirror = (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION)
    if mirror is not None:
        trimmed_meta["annotations"] = {builders.MIRROR_ANNOTATION: mirror}
    if meta.get("deletionTimestamp"):
        trimmed_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    return {
        "metadata": trimmed_meta,
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
    """A compact fingerprint of what a pass reads from a Pod: its status, its serving label
    and its mirror annotation (a pod started from its template, or edited by hand, may need
    marking: ``pods_to_mark``)."""
    trimmed = trim_pod(pod)
    meta = trimmed["metadata"]
    return json.dumps([trimmed["status"], meta["labels"].get(builders.LABEL_SERVING),
                       (meta.get("annotations") or {}).get(builders.MIRROR_ANNOTATION)],
                      sort_keys=True, default=str)


# Metadata a pass never reads: dropped from cached objects (smaller caches).
UNREAD_METADATA = ("managedFields", "resourceVersion", "creationTimestamp", "selfLink")


def pack(obj: Mapping[str, Any]) -> bytes:
    """A cached object as compressed compact JSON: a few hundred bytes instead of the ~10 KB
    of a decoded Deployment, for each of the 20,000 objects of 5,000 ModelServices. A pass
    unpacks the few it reads (a fresh copy each time, safe to mutate)."""
    return zlib.compress(json.dumps(obj, separators=(",", ":"), default=str).encode(), 1)


def unpack(data: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The object ``pack`` stored (a plain mapping is copied as it is)."""
    if isinstance(data, bytes):
        return dict(json.loads(zlib.decompress(data)))
    return dict(data)


def strip_live(obj: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """A plain copy of a watched object without the metadata a pass never reads."""
    meta = obj.get("metadata") or {}
    out = plain({**obj, "metadata": {k: v for k, v in meta.items() if k not in UNREAD_METADATA}})
    out.setdefault("apiVersion", api_version)
    out.setdefault("kind", kind)
    return out
