"""One reconcile pass of a ModelService: build desired -> apply what differs -> prune -> status.

No kopf here: ``handlers`` and ``runtime`` decide *when* a pass runs and turn errors into
retries; this module decides *what* a pass does, in order. The pass is write-frugal, so a
resync that finds nothing changed sends no write at all:

* every desired object carries the annotation ``serving.modelservice.dev/applied-hash``; an
  object is re-applied only when the live object is missing, carries another hash (the
  desired state changed) or no longer contains every desired field (someone edited or
  removed it by hand — the apply repairs it). ``apply`` decides what differs; this module
  sends the writes through ``kube``;
* objects that carry our ModelService label *and* a controller ownerReference to this exact
  ModelService (uid, ``owned``) but are no longer desired are deleted (removed variants,
  switched-off features); nothing else is ever deleted. Deleting the ModelService itself is
  left to the garbage collector through the ownerReferences;
* the status is patched only when it differs from the stored one.

The spec is parsed once per pass. ``rollout.advance`` turns it, the stored ``status.rollout``,
the variants' readiness and (when one is due) an analysis sample into the *effective weights*
that the builders and the status both take, and the mirror target of the stable variants;
``brownout.advance`` then may shift part of them to a cheaper variant (never during a
rollout), from the stored ``status.brownout``, the stable variant's HPA and the measurement;
when the spec leaves the variant to the operator, it chooses from each variant's Pareto mark,
cost and measurements as this pass's status computes them (``status.standings``).
Per-variant measurements (Prometheus, metrics.k8s.io) are refreshed on the analysis interval
(``measure``), not on every pass, and carried over in the status between refreshes.

With spec.gpu and the operator's GPU fit on, ``placement`` says per variant where its pods go
(kept from its live Deployment, chosen from the Nodes' GPU pools, or as spec.gpu says when
the fit cannot be checked) and which variants no pool holds: those get no Deployment (a live
one is neither changed nor pruned) and ``Ready=False``, reason ``InsufficientGPUMemory``.
Neither do variants whose artifact is still being read to choose their pool (reason
``EstimatingGPUMemory``): the read's end queues a pass (``placement.HeaderReads``), and the
pass is queued again by the time the read would be given up. Without spec.gpu (GPU fit on),
the variants are priced as CPU (``placement.cpu_priced``).

With spec.gateway, once the objects are applied, the HTTPRoute's status and a GET of each
parent Gateway say whether the route carries the traffic (``routing``): ``routed`` goes to
the status; a route no parent routes is reported in ``FieldsIgnored`` (``GatewayNotReady``)
and looked at again on a timer (``requeue_after``: HTTPRoutes and Gateways are not watched).
While its retries are on, the XBackendTrafficPolicy with their budget is applied with the
route where the cluster serves that kind, and pruned like any other object once it is not
wanted; a budget the spec sets where it cannot act is reported in ``FieldsIgnored``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from msv_operator import (
    apply,
    brownout,
    builders,
    conditions,
    optimize,
    placement,
    prewarm,
    rollout,
    routing,
    spec,
    startup,
    status,
    zero,
)
from msv_operator import kube as kubeapi
from msv_operator.config import OperatorConfig
from msv_operator.measure import measure
from msv_operator.owned import (
    by_variant,
    deployments_by_variant,
    describe,
    hpas_by_variant,
    key_of,
    owned_by,
    owned_by_name,
)

log = logging.getLogger("msv_operator.reconcile")

LABEL_MODELSERVICE = builders.LABEL_MODELSERVICE

# Optional kinds the operator creates, observed only when their API is served.
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")
HTTPROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")
RETRY_BUDGET_POLICY = builders.RETRY_BUDGET_POLICY
GATEWAY = ("gateway.networking.k8s.io/v1", "Gateway")


@dataclass
class Observed:
    """Live objects of one ModelService (from the operator's watch caches or a LIST)."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] | None = None
    """The GPU nodes (``pools.trim_node``); None: Nodes are not watched (GPU fit is off)."""


@dataclass
class Result:
    """What one pass did (for logs, metrics, Events and tests)."""

    applied: list[str] = field(default_factory=list)
    unchanged: int = 0
    pruned: list[str] = field(default_factory=list)
    invalid: str | None = None
    invalid_reason: str = spec.InvalidSpecError.reason
    """``InvalidSpec``, or ``NoServingImage`` when no configured image serves the spec."""
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
    namespace_terminating: bool = False
    """The namespace is being deleted: the pass stopped, wrote no status and posts no Event."""
    routed: bool = False
    """The HTTPRoute carries the traffic (``routing``): its weights are what requests get."""
    started: list[rollout.Event] = field(default_factory=list)
    """A ``VariantStarted`` Event per variant whose first pod became Ready (``startup``),
    once the status recording it is written."""

    @property
    def outcome(self) -> str:
        if self.namespace_terminating:
            return "terminating"
        if self.invalid is not None:
            return "invalid"
        if self.apply_error is not None:
            return "error"
        return "applied" if self.applied or self.pruned else "unchanged"


DEFAULT_SCRAPE_INTERVAL = "15s"


GATEWAY_RETRY_UNSUPPORTED = "GatewayRetryUnsupported"
GATEWAY_RETRY_BUDGET_UNSUPPORTED = "GatewayRetryBudgetUnsupported"
GATEWAY_RETRY_BUDGET_PARTIAL = "GatewayRetryBudgetPartial"


def ignored_fields(parsed: spec.ModelServiceSpec, opts: builders.BuildOptions,
                   gateway_channel: str | None = "") -> list[tuple[str, str]]:
    """(reason, message) for each field the spec sets that cannot act in this cluster
    (``gateway_channel``: the HTTPRoute CRD's channel, None when it could not be read)."""
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
    if annotations and parsed.tls_secret:
        out.append(("ScrapeTLSUnverified",
                    "spec.server.tls.secretName: prometheus.io/* scrape annotations cannot "
                    "carry a CA or a server name, so a scraper reading them cannot verify the "
                    "pods' certificate (a ServiceMonitor verifies it with ca.crt of the "
                    "Secret: install the Prometheus Operator CRDs)"))
    if annotations and parsed.auth_token_secret and parsed.auth_protect_metrics:
        out.append(("ScrapeTokenUnavailable",
                    "spec.server.auth.protectMetrics: prometheus.io/* scrape annotations cannot "
                    "carry a token, so a scraper reading them gets 401 unless it is given one "
                    "(a ServiceMonitor presents it: install the Prometheus Operator CRDs)"))
    if parsed.gateway_parents and not opts.gateway_api:
        out.append(("GatewayAPIUnavailable",
                    "spec.gateway: the cluster does not serve gateway.networking.k8s.io/v1 "
                    "HTTPRoute (install Gateway API), so traffic is split by the stable Service's "
                    "ready pods instead (approximate)"))
    if (parsed.gateway_parents and opts.gateway_api and not opts.gateway_retry
            and parsed.gateway_retry.attempts > 0):
        why = (f"the operator cannot read the CustomResourceDefinition {kubeapi.HTTPROUTE_CRD} "
               "(it needs get on it) to learn whether HTTPRoute rules have retry"
               if gateway_channel is None else
               f"the cluster's HTTPRoute CRD ({kubeapi.HTTPROUTE_CRD}, Gateway API "
               f"{gateway_channel or 'unknown'} channel) has no rules[].retry (retries are in "
               "the experimental channel)")
        out.append((GATEWAY_RETRY_UNSUPPORTED,
                    f"spec.gateway.retry: {why}, so the HTTPRoute carries no retries and a "
                    "request that meets a crashed or stopping pod fails instead of being tried "
                    "again; install Gateway API's experimental-channel CRDs, or set "
                    "spec.gateway.retry.attempts: 0 to run without retries"))
    retries = (bool(parsed.gateway_parents) and opts.gateway_api
               and parsed.gateway_retry.attempts > 0)
    if retries and parsed.gateway_retry.budget.explicit and not opts.retry_budget:
        api_version, kind = RETRY_BUDGET_POLICY
        out.append((GATEWAY_RETRY_BUDGET_UNSUPPORTED,
                    f"spec.gateway.retry.budget: the cluster does not serve {api_version} "
                    f"{kind} (Gateway API's experimental channel), so the gateway's retries are "
                    "bounded per request only (spec.gateway.retry.attempts) and a failing "
                    "variant may get up to attempts + 1 times its requests; install Gateway "
                    "API's experimental-channel CRDs with an implementation that enforces "
                    f"{kind}, or remove spec.gateway.retry.budget"))
    if builders.retry_budget_wanted(parsed, opts):
        left = builders.route_services(parsed)[builders.POLICY_TARGETS_MAX:]
        if left:
            out.append((GATEWAY_RETRY_BUDGET_PARTIAL,
                        f"spec.gateway.retry.budget: an {RETRY_BUDGET_POLICY[1]} targets at most "
                        f"{builders.POLICY_TARGETS_MAX} Services, so the retries to "
                        f"{', '.join(left)} have no budget (bounded per request only)"))
    return out


# ---- the pass ------------------------------------------------------------------------------

ABILITY_SECONDS = 5.0
"""How long the activator's Service and ready pods, as last read, are reused."""


@dataclass
class ZeroState:
    """Scale to zero's process-wide state: the activator as last read and the routes
    ConfigMap's routes (the operator, leader-elected, is its only writer)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    routes: list[zero.Route] | None = None
    """None: not read yet."""
    ability: zero.Ability | None = None
    stamp: float = 0.0


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
    unrouted_since: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """Since when each ModelService with spec.gateway has found its HTTPRoute not routed (in
    memory: it paces the re-checks, ``routing``)."""
    gpu: placement.GpuFitState = field(default_factory=placement.GpuFitState)
    """GPU fit's artifact cache and the Events it posted (``placement``)."""
    pipeline: optimize.PipelineState = field(default_factory=optimize.PipelineState)
    """The optimization pipeline's reads and what it read of its Jobs (``optimize``)."""
    zero: ZeroState = field(default_factory=ZeroState)
    prewarm: prewarm.PrewarmState = field(default_factory=prewarm.PrewarmState)
    """The Nodes as pre-warming last listed them and what it reported (``prewarm``)."""


def build_options(cfg: OperatorConfig, caps: kubeapi.CapabilityAnswer) -> builders.BuildOptions:
    return builders.BuildOptions(
        images=cfg.images,
        service_monitor=caps.service_monitor,
        gateway_api=caps.gateway_api,
        gateway_retry=caps.gateway_retry,
        retry_budget=caps.retry_budget,
        model_cache_url=cfg.model_cache_url or None,
    )


def observe_optional(ctx: Context, ms: Mapping[str, Any], caps: kubeapi.CapabilityAnswer
                     ) -> list[dict[str, Any]]:
    """Owned ServiceMonitors/HTTPRoutes/XBackendTrafficPolicies (LIST, only for APIs the
    cluster serves)."""
    meta = ms["metadata"]
    selector = f"{LABEL_MODELSERVICE}={meta['name']}"
    found: list[dict[str, Any]] = []
    for served, (api_version, kind) in ((caps.service_monitor, SERVICE_MONITOR),
                                        (caps.gateway_api, HTTPROUTE),
                                        (caps.retry_budget, RETRY_BUDGET_POLICY),
                                        (caps.keda, zero.SCALED_OBJECT)):
        if served:
            found.extend(ctx.kube.list(api_version, kind, meta["namespace"], selector))
    if ctx.config.activator is not None:  # only the slices the operator wrote
        found.extend(o for o in ctx.kube.list(
            *zero.SLICE_API, meta["namespace"],
            f"{selector},{zero.MANAGED_BY_LABEL}={zero.stz.SLICE_MANAGED_BY}")
            if zero.owns_slice(o))
    return found


def zero_ability(ctx: Context, caps: kubeapi.CapabilityAnswer) -> zero.Ability:
    """What scale to zero can count on: KEDA served, the activator Service's cluster IP (the
    KEDA scaler address: no cluster DNS needed) and its ready pods (reused for
    ``ABILITY_SECONDS``)."""
    cfg = ctx.config
    url = cfg.keda_prometheus_url or cfg.prometheus_url
    where = cfg.activator
    if where is None:
        return zero.Ability(caps.keda, None, None, (), url)
    with ctx.zero.lock:
        known = ctx.zero.ability
        if (known is not None and known.keda == caps.keda
                and time.monotonic() - ctx.zero.stamp < ABILITY_SECONDS):
            return known
    ns, name = where
    address: str | None = None
    ips: list[str] = []
    try:
        svc = ctx.kube.get("v1", "Service", ns, name)
        ip = ((svc or {}).get("spec") or {}).get("clusterIP")
        if ip and ip != "None":
            host = f"[{ip}]" if ":" in str(ip) else str(ip)
            address = f"{host}:{zero.stz.SCALER_PORT}"
        for eps in ctx.kube.list(*zero.SLICE_API, ns, f"{zero.SERVICE_NAME_LABEL}={name}"):
            for ep in eps.get("endpoints") or ():
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                ips.extend(str(a) for a in ep.get("addresses") or ())
    except kubeapi.ApiError as e:
        log.warning("Cannot read the activator %s/%s: %s", ns, name, e)
    found = zero.Ability(caps.keda, f"{ns}/{name}", address, tuple(sorted(set(ips))), url)
    with ctx.zero.lock:
        ctx.zero.ability, ctx.zero.stamp = found, time.monotonic()
    return found


def hold_routes(ctx: Context, namespace: str, name: str,
                wanted: Sequence[tuple[str, int, str | None]]) -> dict[tuple[str, int], int]:
    """Record ``wanted`` ((service, service port, variant)) as the ModelService's routes in
    the routes ConfigMap (written only when they change); (service, service port) ->
    activator port."""
    where = ctx.config.activator
    assert where is not None
    with ctx.zero.lock:
        if ctx.zero.routes is None:
            ctx.zero.routes = zero.read_routes(ctx.kube.get(
                "v1", "ConfigMap", where[0], zero.stz.ROUTES_CONFIGMAP))
        before = ctx.zero.routes
        after = zero.assign_ports(before, namespace, name, wanted)
        if after != before:
            ctx.kube.apply(zero.build_routes(where[0], after), answer=False)
            ctx.zero.routes = after
    return {(r.service, r.service_port): r.port for r in after
            if r.namespace == namespace and r.modelservice == name}


def reconcile(ctx: Context, ms: Mapping[str, Any], observed: Observed, now: str) -> Result:
    """Apply, prune and write status for ``ms``. Raises ``kubeapi.Conflict``/``kubeapi.Transient``
    for the caller to retry; every other problem ends up in the status."""
    meta = ms["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    generation = meta.get("generation")
    result = Result()
    if meta.get("deletionTimestamp"):
        if ctx.config.activator is not None:  # its routes go (its slices: the collector)
            hold_routes(ctx, ns, name, ())
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
    parsed: spec.ModelServiceSpec | None = None
    opts = build_options(ctx.config, caps)
    # True once the HTTPRoute is accepted by a programmed Gateway (``routing``): the weights
    # are exact per request. False: requests split by the stable Service's ready pods, so a
    # step the replicas cannot represent holds and the status shows the delivered share.
    routed = False
    scale: zero.Plan | None = None
    ability: zero.Ability | None = None
    fit: placement.Fit | None = None
    cpu: dict[str, status.GpuVariant] | None = None
    builds = optimize.Builds()
    warm = prewarm.Prewarm()
    try:
        parsed = spec.parse_spec(ms)
        builders.serving_image(parsed, opts)  # NoServingImage: refused like an invalid spec
        # built variants serve their finished artifact (or the previous one), or wait
        builds = optimize.resolve(ctx, ms, parsed, opts, moment)
        parsed = builds.serve(parsed)
        ignored = ignored_fields(parsed, opts, caps.gateway_channel)
        if ctx.config.gpu_fit and parsed.gpu is not None and observed.nodes is not None:
            fit = placement.place(
                ctx, parsed, int(generation) if generation is not None else None,
                deployments_by_variant(live.values(), uid), pods, observed.nodes)
        elif ctx.config.gpu_fit and parsed.gpu is None:
            cpu = placement.cpu_priced(parsed, ctx.config.gpu_prices)
        readiness = {v: rollout.Readiness(ready, failure) for v, (ready, failure) in
                     status.readiness(deployments_by_variant(live.values(), uid), pods).items()}
        taken = measure(ctx, parsed, prior, moment, measured)
        result.requeue_after = taken.wait
        if parsed.gateway_parents and opts.gateway_api:
            # The route's status as this pass's LIST found it (a route created or changed
            # just now is judged by the next look, ``recheck``).
            found = route_state(ctx, parsed, live.get(("HTTPRoute", builders.object_name(name))),
                                moment)
            routed = result.routed = found.routed
            if found.problem is not None:
                ignored.append((routing.GATEWAY_NOT_READY, found.problem))
            result.requeue_after = _sooner(result.requeue_after, found.recheck)
        else:
            ctx.unrouted_since.pop((ns, name), None)
        decision = rollout.advance(parsed, prior.get("rollout"), readiness, taken.for_rollout,
                                   meta.get("annotations") or {}, moment, routed=routed)
        shed = brownout.advance(parsed, prior.get("brownout"), decision.weights,
                                decision.status, hpas.get(parsed.stable), readiness,
                                taken.taken, moment, standings=brownout_standings(
                                    parsed, deployments_by_variant(live.values(), uid),
                                    measured, fit))
        result.events = [*decision.events, *shed.events, *(fit.events if fit else ()),
                         *builds.events]
        result.requeue_after = _sooner(result.requeue_after, decision.requeue_after)
        result.requeue_after = _sooner(result.requeue_after, builds.requeue_after)
        if fit is not None:
            result.requeue_after = _sooner(result.requeue_after, fit.requeue_after)
        serving = builders.Serving(shed.weights, mirror_for(parsed, decision, live), routed)
        marks = builders.pod_marks(parsed, serving)
        if parsed.may_scale_to_zero:
            ability = zero_ability(ctx, caps)
            scale = zero.plan(
                parsed, ability, zero_live(live, uid), shed.weights,
                zero.awake(parsed, decision.status, shed.status),
                builders.hpa_min_replicas(parsed, serving))
            ignored += [(zero.REASON, m) for m in scale.ignored]
        desired = [apply.with_hash(o) for o in builders.build_all(
            ms, opts, parsed, serving, gpu=fit.placements if fit else None,
            withheld=withheld(fit, builds), scale=scale, ability=ability)]
        if ctx.config.activator is not None:
            desired += [apply.with_hash(o) for o in activator_slices(
                ctx, ms, parsed, scale, ability, shed.weights, pods, live)]
        # best effort: its Jobs, Events and status.modelCache, never Ready or Degraded
        warm = prewarm.resolve(
            ctx.kube, ctx.prewarm, ms, parsed, opts,
            {v: p.target for v, p in (fit.placements if fit else {}).items()},
            withheld(fit, builds))
        ignored += warm.ignored
        result.events += warm.events
        result.requeue_after = _sooner(result.requeue_after, warm.requeue_after)
    except spec.InvalidSpecError as e:  # also builders.NoServingImage
        result.invalid, result.invalid_reason = str(e), e.reason

    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    if result.invalid is None:
        for obj in desired:
            handover = apply.replicas_handover(obj, live)
            if handover is not None:
                ctx.kube.apply(handover, answer=False,
                               field_manager=apply.handover_manager(ctx.config.field_manager))
                log.info("Handed %s's replicas (%s) over to its HPA", describe(obj),
                         handover["spec"]["replicas"],
                         extra={"namespace": ns, "modelservice": name})
            current = live.get(key_of(obj))
            if not apply.needs_apply(obj, current):
                result.unchanged += 1
                continue
            try:
                # Only a Deployment's answer is read (its status); the others are not decoded.
                live_answer = ctx.kube.apply(obj, answer=obj["kind"] == "Deployment")
                if live_answer:
                    fresh[key_of(obj)] = live_answer
            except kubeapi.NamespaceTerminating:
                # Its deletion takes the ModelService and everything it owns with it.
                log.info("Namespace %s is being deleted; not creating %s", ns, describe(obj),
                         extra={"namespace": ns, "modelservice": name})
                result.namespace_terminating = True
                result.events = []
                return result
            except kubeapi.Rejected as e:
                result.apply_error = str(e)
                log.warning("Could not apply %s: %s", describe(obj), e,
                            extra={"namespace": ns, "modelservice": name})
                continue
            result.applied.append(describe(obj))
            repair = apply.repair_of(obj, current, ms)
            if repair:
                result.repaired.append(repair)
                log.info("Repaired: %s", repair, extra={"namespace": ns, "modelservice": name})
            else:
                log.info("Applied %s", describe(obj),
                         extra={"namespace": ns, "modelservice": name})

        for variant, count in sorted((scale.restore if scale else {}).items()):
            # KEDA or the activator cannot act and the variant is at zero with traffic: the
            # operator brings one pod back itself (KEDA is paused at that size meanwhile).
            dep = {"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": builders.object_name(name, variant), "namespace": ns},
                   "spec": {"replicas": count}}
            try:
                ctx.kube.apply(dep, answer=False,
                               field_manager=apply.handover_manager(ctx.config.field_manager))
                log.info("Scaled %s to %d: scale to zero cannot act", describe(dep), count,
                         extra={"namespace": ns, "modelservice": name})
            except kubeapi.Rejected as e:
                log.warning("Could not scale %s: %s", describe(dep), e,
                            extra={"namespace": ns, "modelservice": name})

        for pod_name, labels, annotations in apply.pods_to_mark(marks, pods):
            # Pod templates carry spec.traffic's label and no mirror (builders): weights and
            # mirroring the operator moves (rollout steps, rollback, promotion, brownout)
            # restart no pod; the running pods join or leave the stable Service, and start or
            # stop mirroring, at once. A pod started meanwhile (a restart, a scale-up) is
            # marked by the pass its first event wakes.
            try:
                ctx.kube.patch_metadata("v1", "Pod", ns, pod_name, labels, annotations)
            except kubeapi.NotFound:
                continue
            pods = marked(pods, pod_name, labels)  # the shares in the status follow at once
            log.info("Marked Pod %s: %s", pod_name, ", ".join(
                [f"{'into' if v == 'true' else 'out of'} the stable Service"
                 for v in labels.values()]
                + [f"mirroring {'stopped' if v is None else 'to ' + v}"
                   for v in annotations.values()]),
                extra={"namespace": ns, "modelservice": name})

        wanted = {key_of(o) for o in desired}
        for variant in sorted(withheld(fit, builds)):  # refused, pending, unbuilt: left as is
            wanted |= {(kind, builders.object_name(name, variant))
                       for kind in ("Deployment", "HorizontalPodAutoscaler")}
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
        deployments_by_variant(latest.values(), uid))
    result.status = status.compute_status(
        ms, deployments=deployments, pods=pods, now=now,
        observed_generation=int(generation) if generation is not None else None,
        invalid_spec=result.invalid, invalid_reason=result.invalid_reason,
        apply_error=result.apply_error, ignored_fields=ignored,
        weights=shed.weights if shed is not None else None,
        # an invalid spec keeps the rollout and the brownout where they were
        rollout=decision.status if decision is not None else prior.get("rollout"),
        brownout=shed.status if shed is not None else prior.get("brownout"),
        hpas=hpas, measured=measured, routed=routed,
        gpu=fit.status() if fit is not None else cpu,
        builds=builds.summary() if result.invalid is None else None,
        zero_variants=tuple(scale.keda) if scale is not None else (),
        zero_blind=tuple(scale.blind) if scale is not None else (),
        model_cache=(({"prewarm": warm.status} if warm.status is not None else None)
                     if result.invalid is None else prior.get("modelCache")),
    )
    write_status(ctx, ms, result)
    return result


def withheld(fit: placement.Fit | None, builds: optimize.Builds) -> set[str]:
    """Variants that get no Deployment this pass (a live one is left as it is): those GPU fit
    refused or waits to place, and built variants with no finished artifact yet."""
    return (fit.withheld if fit else set()) | builds.withheld


def zero_live(live: Mapping[tuple[str, str], Mapping[str, Any]], uid: str
              ) -> dict[str, zero.Live]:
    """Each variant's ScaledObject and Deployment replicas as this pass found them."""
    scaled = by_variant(live.values(), uid, zero.stz.SCALED_OBJECT)
    deps = deployments_by_variant(live.values(), uid)
    out = {}
    for v in {*scaled, *deps}:
        replicas = ((deps.get(v) or {}).get("spec") or {}).get("replicas")
        out[v] = zero.Live(scaled.get(v), None if replicas is None else int(replicas))
    return out


def activator_slices(ctx: Context, ms: Mapping[str, Any], parsed: spec.ModelServiceSpec,
                     scale: zero.Plan | None, ability: zero.Ability | None,
                     weights: Mapping[str, int], pods: list[dict[str, Any]],
                     live: Mapping[tuple[str, str], Mapping[str, Any]]
                     ) -> list[dict[str, Any]]:
    """The EndpointSlices sending the traffic of the ModelService's Services that have no
    ready pod to the activator, on ports recorded in the routes ConfigMap (none, and no
    route, when KEDA does not scale any of its variants or the activator has no ready pod)."""
    name = parsed.name
    held: list[zero.HeldService] = []
    if scale is not None and scale.keda and ability is not None and ability.activator_ips:
        replicas = {v: z.replicas for v, z in zero_live(live, ms["metadata"]["uid"]).items()}
        variant_service = ({v.name: builders.object_name(name, v.name) for v in parsed.variants}
                           if builders.variant_services(parsed) else {})
        held = zero.services_at_zero(parsed, builders.object_name(name), variant_service,
                                     scale.keda, weights, pods, replicas)
    ports = builders.service_ports()
    wanted = [(h.service, int(p["port"]), h.variant) for h in held for p in ports]
    try:
        assigned = hold_routes(ctx, parsed.namespace, name, wanted)
    except zero.PortsExhausted as e:
        log.warning("No activator port left: %s", e,
                    extra={"namespace": parsed.namespace, "modelservice": name})
        return []
    assert ability is not None or not held
    return [zero.build_slice(
        builders.object_metadata(ms, h.service, h.variant), h,
        {str(p["name"]): assigned[(h.service, int(p["port"]))] for p in ports},
        ability.activator_ips if ability else ()) for h in held]


def brownout_standings(parsed: spec.ModelServiceSpec,
                       deployments: Mapping[str, Mapping[str, Any] | None],
                       measured: Mapping[str, Mapping[str, Any]],
                       fit: placement.Fit | None) -> dict[str, brownout.Standing] | None:
    """What an operator-chosen brownout picks its variant from: each variant's Pareto mark,
    cost and measurements as this pass's status writes them (None when the spec names the
    variant, or has no brownout)."""
    b = parsed.autoscaling.brownout if parsed.autoscaling else None
    if b is None or b.variant is not None:
        return None
    return status.standings([v.name for v in parsed.variants], parsed.stable, deployments,
                            measured, fit.status() if fit is not None else None)


def route_state(ctx: Context, parsed: spec.ModelServiceSpec, route: Mapping[str, Any] | None,
                moment: datetime) -> routing.Routing:
    """Whether the HTTPRoute (as this pass's LIST found it) carries the traffic: its status
    and a GET of each parent Gateway (``routing.assess``); remembers since when it has not."""
    gateways: dict[tuple[str, str], routing.GatewayRead] = {}
    for ref in parsed.gateway_parents:
        key = routing.gateway_key(ref, parsed.namespace)
        if key in gateways:
            continue
        try:
            gateways[key] = routing.GatewayRead(ctx.kube.get(*GATEWAY, *key))
        except kubeapi.ApiError as e:  # e.g. no get on Gateways in that namespace
            log.debug("Cannot read Gateway %s/%s: %s", *key, e)
            gateways[key] = routing.GatewayRead(readable=False)
    ms_key = (parsed.namespace, parsed.name)
    since = ctx.unrouted_since.get(ms_key, moment)
    found = routing.assess(parsed.gateway_parents, route, parsed.namespace,
                           builders.object_name(parsed.name), gateways, moment,
                           (moment - since).total_seconds())
    if found.routed:
        ctx.unrouted_since.pop(ms_key, None)
    else:
        ctx.unrouted_since.setdefault(ms_key, moment)
    return found


def marked(pods: list[dict[str, Any]], name: str, labels: Mapping[str, str]
           ) -> list[dict[str, Any]]:
    """``pods`` with the pod ``name`` carrying ``labels`` (a copy of it; the others as they
    were): what the stable Service selects once a mark is patched."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("name") == name and labels:
            meta = {**meta, "labels": {**(meta.get("labels") or {}), **labels}}
            pod = {**pod, "metadata": meta}
        out.append(pod)
    return out


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


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


def _removals(prior: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` as a JSON merge patch over ``prior``: every key of an object in ``prior`` that
    ``new`` no longer has becomes an explicit null, at every depth (a merge patch keeps a key
    it does not name, so a field a pass cleared, e.g. the note of an earlier analysis, would
    outlive it); lists are replaced whole, as a merge patch does."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = prior.get(key)
        out[key] = (_removals(before, value)
                    if isinstance(value, Mapping) and isinstance(before, Mapping) else value)
    for key in prior:
        if key not in new:
            out[key] = None
    return out


def status_patch(prior: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns status ``prior`` into ``new``: a top-level key is removed
    only when the operator owns it (``status.OWNED_KEYS``); below, see ``_removals``."""
    return _removals({k: v for k, v in prior.items() if k in status.OWNED_KEYS or k in new},
                     new)


def write_status(ctx: Context, ms: Mapping[str, Any], result: Result) -> None:
    """Patch the status when (and only when) it changed; record condition transitions."""
    prior = ms.get("status") or {}
    if not status.changed(prior, result.status):
        return
    meta = ms["metadata"]
    patch = status_patch(prior, result.status)
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
    result.started = startup.started_events(prior.get("variants"),
                                            result.status.get("variants"))
