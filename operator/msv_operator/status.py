"""The ModelService status block, computed from observed objects (pure: no I/O, no clock).

``compute_status`` turns the live Deployments and Pods of a ModelService into the conditions
``Ready``, ``Progressing``, ``Degraded``, ``Reconciling``, ``Stalled`` and ``FieldsIgnored`` (see
``conditions`` for the transition semantics), per-variant ``replicas``/``readyReplicas``/
``weight`` (and ``derivedFrom``/``optimization`` provenance), ``observedGeneration`` and ``url``.
``weight`` is the weight asked; ``share`` (and ``status.shares``, the ``SHARES`` column) the
percent of the requests the variant receives (``shares.delivered``): its weight when a gateway
routes the ModelService (``routed``), else its Ready pods carrying the serving mark over all
such pods. Without a gateway, a weight the replica split cannot represent within
``shares.TOLERANCE`` points (``shares.plan``), or a rollout held before such a step, sets
``Progressing=False`` with reason ``ShareNotRepresentable`` (once nothing is failing or
rolling out; information, like ``FieldsIgnored``: ``Ready``, ``Reconciling`` and ``Stalled``
stay as the pods say, the stable variants serve).
The weights are the effective ones the caller passes (spec.traffic, then the rollout); with a
rollout it also carries ``status.rollout`` (from ``rollout``), the ``Rollout`` condition and
the per-variant measured fields (``MEASURED_KEYS``). With ``spec.autoscaling``: the HPAs'
bounds per variant, ``status.brownout`` (from ``brownout``) and the ``AutoscalingBlind``
condition; ``replicaCounts`` (ready/desired per variant) is the ``REPLICAS`` column.

The variant entries are ``state.VariantStatus``; ``status.rollout`` and ``status.brownout`` are
written as the machines left them and read as ``state.RolloutStatus`` (the ``Rollout``
condition) and ``state.BrownoutStatus`` (``brownout.blind``). Without effective weights the
weights are spec.traffic, from ``rollout.traffic_weights`` (the one place they are computed),
also for a spec that does not parse.

``Reconciling`` and ``Stalled`` follow kstatus (what Flux reads; Argo CD's health check reads the
same): ``Reconciling=True`` while work is left (a rollout, pods not ready yet), ``Stalled=True``
when nothing changes without a human (every failure below). The two are never True together.
``Ready`` is Deployment-style minimum availability: every variant with weight above zero has
all its desired replicas ready (the Deployments roll with ``maxUnavailable: 0``), and no variant
reports a failure.

Failure reasons, in the order they win:

* ``InvalidSpec`` - the spec cannot be turned into objects (message names the field);
  ``NoServingImage`` in its place when the spec is valid but no configured model-server
  image serves it (message names the field and the image or the setting that lacks one);
* ``ApplyFailed`` - the API server refused an object;
* ``Unschedulable`` - a pod's ``PodScheduled`` condition is False; the scheduler's message is kept,
  led by the cause when the model's PersistentVolumeClaim does not exist;
* ``AuthSecretMissing``, ``NoTokens``, ``TLSSecretMissing``, ``TLSSecretInvalid`` - the model
  server refused to start because a mounted Secret cannot be used (the reason leads its
  termination message, msv_contract.env); the message names the Secret and its spec field
  (``spec.server.auth.tokenSecret``, ``spec.server.tls.secretName``), then the pods'
  messages. The Secret volumes are optional, so a missing Secret reaches the server too;
* ``ModelLoadFailed`` - the model server or the ``model-pull`` init container exited non-zero
  (its termination message is copied: ``model-server serve`` writes the load error there), or
  a container cannot start (image pull, config errors: the kubelet's message and the image);
* ``ProgressDeadlineExceeded`` - the Deployment controller gave up on a rollout.

Before them all, ``InsufficientGPUMemory``: the operator's GPU fit found no GPU pool that
holds a variant (``gpu``, from ``placement``), so that variant has no Deployment of its own
(a live one is left as it was); the message names the need and the largest offer.

While GPU fit still reads a variant's artifact to choose its pool (``GpuVariant.pending``),
that variant has no Deployment yet either: not a failure, ``Ready``, ``Progressing`` and
``Reconciling`` then say ``EstimatingGPUMemory`` (``ESTIMATING``), naming what it waits for.

With GPU fit (``gpu``), each variant entry also carries ``gpuMemory`` (the estimate's parts,
and the measured peak a pass read from Prometheus, ``measuredBytes``), ``placement``, its cost
(``pareto.cost``: its pods at the placement's price per pod, and per 1,000 requests at its
measured ``rps``) and its mark on the Pareto frontier over ``p95Ms``, ``costPer1kRequests`` and
``agreement`` (the stable variant's agreement is 1: it is the reference). A ModelService
without spec.gpu has the same, priced as CPU (``placement.cpu_priced``; no ``gpuMemory``).

Each variant entry carries ``startup``: where the start of its newest Ready pod went
(``startup``: scheduled, image, fetch, load, total seconds and the pod), kept until a newer pod
of the variant is Ready.

``reconcile`` calls it after applying; ``handlers`` call it again whenever an owned Deployment or
Pod changes, so the status follows the cluster within seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from msv_contract import env
from msv_contract.api import LABEL_VARIANT
from msv_contract.scaletozero import REASON_SCALED_TO_ZERO, REASON_SCALING_BLIND
from msv_operator import conditions as cond
from msv_operator import pareto, shares, startup
from msv_operator.brownout import HpaState, Standing, blind
from msv_operator.pools import INSUFFICIENT
from msv_operator.rollout import PAUSED, traffic_weights
from msv_operator.spec import InvalidSpecError, parse_spec, stable_of
from msv_operator.state import RolloutStatus, VariantStatus

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RECONCILING = "Reconciling"
STALLED = "Stalled"
FIELDS_IGNORED = "FieldsIgnored"
ROLLOUT = "Rollout"
AUTOSCALING_BLIND = "AutoscalingBlind"
ESTIMATING = "EstimatingGPUMemory"
"""The reason while a variant waits for its GPU memory estimate to be placed."""
"""Only with spec.rollout: True once promoted, Unknown while pending or progressing, False
when stopped (paused, rolled back, aborted); the reason says why (docs/rollouts.md)."""

# Container waiting reasons that mean the model server cannot come up.
IMAGE_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
FAILED_WAITING_REASONS = IMAGE_WAITING_REASONS | {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
# As builders name them (a unit test keeps the two modules in step).
SERVER_CONTAINER = "model-server"
PULL_CONTAINER = "model-pull"
MODEL_VOLUME = "model"
MESSAGE_MAX = 1024
"""Longest termination or kubelet message copied into a condition (per pod)."""
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
SECRET_REASONS = env.SECRET_REASONS
CANNOT_SERVE = frozenset({"ModelLoadFailed", *SECRET_REASONS})
"""Reasons that mean a variant's pods cannot serve (a rollout counts them as failed)."""
_SECRET_EXIT = re.compile(
    r"^model server exited with code 2\b[^:]*: .*?\b(" + "|".join(SECRET_REASONS) + r"): ")
_SECRET_PROBLEMS = {
    env.AUTH_SECRET_MISSING: ("auth", "tokenSecret",
                              "does not exist or has no keys; create it with one accepted "
                              "token per key"),
    env.NO_TOKENS: ("auth", "tokenSecret",
                    "holds no token (its keys are empty or unreadable); put one token in "
                    "each key"),
    env.TLS_SECRET_MISSING: ("tls", "secretName",
                             f"does not exist or lacks {env.TLS_CERT_KEY} or {env.TLS_KEY_KEY}"),
    env.TLS_SECRET_INVALID: ("tls", "secretName",
                             f"does not hold a PEM certificate ({env.TLS_CERT_KEY}) and the "
                             f"private key that matches it ({env.TLS_KEY_KEY})"),
}

# Keys of ``status`` this module owns (others, e.g. ``rollout``, belong to other writers).
OWNED_KEYS = ("observedGeneration", "conditions", "variants", "traffic", "shares",
              "replicaCounts", "url", "rollout", "brownout", "modelCache")

MEASURED_KEYS = VariantStatus.MEASURED
"""Per-variant measured fields (Prometheus and metrics.k8s.io), carried between refreshes."""


@dataclass(frozen=True)
class GpuVariant:
    """What GPU fit says of one variant (``placement.VariantFit``), or its CPU price
    (``placement.cpu_priced``)."""

    gpu_memory: Mapping[str, Any] | None = None
    """The estimate's parts (``gpufit.MemoryEstimate.to_status``)."""
    placement: Mapping[str, Any] | None = None
    price_per_pod: float | None = None
    """US dollars per hour of one pod; None: unknown."""
    refused: str | None = None
    """Why no pool holds it (``InsufficientGPUMemory``)."""
    pending: str | None = None
    """What it waits for before it is placed (``EstimatingGPUMemory``)."""


BUILT = "Built"
"""The optimization pipeline's condition (only with a variant that has ``build``)."""


@dataclass(frozen=True)
class BuildSummary:
    """What the optimization pipeline (``optimize``) puts in the status."""

    condition: tuple[str, str, str] | None
    """``Built``: (status, reason, message); None without built variants."""
    building: Mapping[str, str] = field(default_factory=dict)
    """Built variants with nothing finished to serve yet, and what they wait for."""
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per built variant: ``build``, ``provenance`` and ``derivedFrom`` of its entry."""


@dataclass(frozen=True)
class VariantState:
    """What the cluster says about one variant."""

    name: str
    weight: int
    replicas: int = 0
    ready_replicas: int = 0
    desired: int | None = None
    rolled_out: bool = False
    problem_reason: str | None = None
    problem_message: str | None = None
    waiting_for: str | None = None


@dataclass
class Verdict:
    """The summarised state that maps to the three conditions."""

    failure_reason: str | None = None
    failure_message: str = ""
    progressing_message: str = ""
    ready: bool = False
    variants: list[VariantState] = field(default_factory=list)
    estimating: bool = False
    """A variant waits for its GPU memory estimate (``ESTIMATING``)."""


def service_url(name: str, namespace: str, tls: bool = False) -> str:
    """The cluster-internal URL of the stable Service (with TLS its port 80 speaks https)."""
    if tls:
        return f"https://{name}.{namespace}.svc.cluster.local:80"
    return f"http://{name}.{namespace}.svc.cluster.local"


def variant_names(ms: Mapping[str, Any]) -> list[str]:
    """Variant names in spec order (tolerates a malformed spec)."""
    spec = ms.get("spec") or {}
    names: list[str] = []
    variants = spec.get("variants") if isinstance(spec, Mapping) else None
    for v in variants or ():
        if isinstance(v, Mapping) and isinstance(v.get("name"), str) and v["name"] not in names:
            names.append(v["name"])
    return names


def variant_weights(ms: Mapping[str, Any]) -> dict[str, int]:
    """Traffic weight per variant; without ``spec.traffic`` the first variant takes 100.
    Tolerates a malformed spec: entries it cannot read count for nothing, a variant listed
    twice gets both weights."""
    names = variant_names(ms)
    spec = ms.get("spec") or {}
    raw = spec.get("traffic") if isinstance(spec, Mapping) else None
    if not raw:
        return traffic_weights(names, None)
    traffic: dict[str, int] = {}
    for t in raw:
        if isinstance(t, Mapping) and t.get("variant") in names:
            try:
                traffic[t["variant"]] = traffic.get(t["variant"], 0) + int(t.get("weight", 0))
            except (TypeError, ValueError):
                continue
    return traffic_weights(names, traffic)


def _optimization(opt: Any) -> str:
    """``dynamic-int8``, ``pruned-unstructured-0.3``, both joined by ``+``; "" for none."""
    if not isinstance(opt, Mapping):
        return ""
    parts = []
    quant = opt.get("quantization")
    if isinstance(quant, str) and quant and quant != "none":
        parts.append(quant)
    pruning = opt.get("pruning")
    if isinstance(pruning, Mapping) and pruning.get("method"):
        parts.append(f"pruned-{pruning.get('method')}-{pruning.get('amount')}")
    return "+".join(parts)


def variant_provenance(ms: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Per variant: ``derivedFrom`` (the base model its own artifact was made from, as the spec
    says) and ``optimization`` (what the model server applies at load), when there are any."""
    spec = ms.get("spec") or {}
    out: dict[str, dict[str, str]] = {}
    variants = spec.get("variants") if isinstance(spec, Mapping) else None
    for v in variants or ():
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
            continue
        entry: dict[str, str] = {}
        model = v.get("model")
        if isinstance(model, Mapping) and model.get("derivedFrom"):
            entry["derivedFrom"] = str(model["derivedFrom"])
        optimization = _optimization(v.get("optimization"))
        if optimization:
            entry["optimization"] = optimization
        out.setdefault(v["name"], entry)
    return out


def _trim(text: str, limit: int = MESSAGE_MAX) -> str:
    """One line, at most ``limit`` characters (a log tail can be many lines of JSON)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _exited(name: str, terminated: Mapping[str, Any], init: bool) -> str:
    """Who exited with which code, and the termination message (or the kubelet's reason)."""
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or ""
    if init and name == PULL_CONTAINER:
        what = f"model pull failed (init container {name} exited with code {code})"
    elif name == SERVER_CONTAINER:
        what = f"model server exited with code {code}"
    else:
        what = f"{'init ' if init else ''}container {name} exited with code {code}"
    if reason and reason not in ("Error", "Completed"):
        what += f" ({reason})"
    message = terminated.get("message")
    return f"{what}: {_trim(message)}" if message else what


def _container_problem(cs: Mapping[str, Any], init: bool) -> str | None:
    """Why one container cannot run, or None."""
    name = str(cs.get("name", "?"))
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    if reason in IMAGE_WAITING_REASONS:
        text = f'cannot pull image "{cs.get("image", "?")}" for container {name} ({reason})'
        return f"{text}: {_trim(waiting['message'])}" if waiting.get("message") else text
    terminated = state.get("terminated") or {}
    if terminated and terminated.get("exitCode") not in (0, None):
        return _exited(name, terminated, init)
    last = (cs.get("lastState") or {}).get("terminated") or {}
    # A restarted container that has not become ready since it last failed is still failing
    # (reporting it only while in back-off would flap the reason on every restart).
    if last and last.get("exitCode") not in (0, None) and not cs.get("ready") and (
            reason in FAILED_WAITING_REASONS or "running" in state):
        return _exited(name, last, init)
    if reason in FAILED_WAITING_REASONS:
        text = f"container {name} cannot start ({reason})"
        return f"{text}: {_trim(waiting['message'])}" if waiting.get("message") else text
    return None


def _unschedulable(pod: Mapping[str, Any], message: str) -> str:
    """The scheduler's message, led by the cause when it is a missing model volume claim."""
    missing = _MISSING_CLAIM.search(message)
    if missing:
        claim = missing.group(1)
        for v in (pod.get("spec") or {}).get("volumes") or ():
            if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                use = ("the model volume (spec.model.uri pvc://" + claim + ")"
                       if v.get("name") == MODEL_VOLUME
                       else f"the model volume (pvc://{claim})"
                       if v.get("name") == f"{MODEL_VOLUME}-claim"
                       else f"volume {v.get('name')}")
                return (f'PersistentVolumeClaim "{claim}" does not exist; create it or fix '
                        f"{use}: {_trim(message)}")
    return _trim(message)


def pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot be scheduled or its model server cannot start.

    Pods being deleted are ignored (an old pod of a rollout exits on purpose).
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    name = meta.get("name", "?")
    st = pod.get("status") or {}
    for c in st.get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            message = c.get("message") or c.get("reason") or "the scheduler cannot place the pod"
            return "Unschedulable", f"pod {name}: {_unschedulable(pod, message)}"
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in st.get(key) or ():
            problem = _container_problem(cs, init=key == "initContainerStatuses")
            if problem:
                secret = _SECRET_EXIT.match(problem) if key == "containerStatuses" else None
                return (secret.group(1) if secret else "ModelLoadFailed"), f"pod {name}: {problem}"
    return None


def secret_problem(ms: Mapping[str, Any], reason: str) -> str:
    """What is wrong with the Secret behind a ``SECRET_REASONS`` reason, naming it and its
    spec field (the name as the spec says it now)."""
    section, key, what = _SECRET_PROBLEMS[reason]
    name: Any = ms
    for step in ("spec", "server", section, key):
        name = name.get(step) if isinstance(name, Mapping) else None
    field_ = f"spec.server.{section}.{key}"
    secret = f'Secret "{name}" ({field_})' if isinstance(name, str) and name else (
        f"the Secret of {field_}")
    return f"{secret} {what}; the pods serve nothing until it is fixed"


def _deployment_state(
    name: str, weight: int, dep: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> VariantState:
    if dep is None:
        return VariantState(name=name, weight=weight, waiting_for="its Deployment to be created")
    spec = dep.get("spec") or {}
    st = dep.get("status") or {}
    desired = spec.get("replicas")
    desired = 1 if desired is None else int(desired)
    replicas = int(st.get("replicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    generation = int((dep.get("metadata") or {}).get("generation") or 0)
    observed = int(st.get("observedGeneration") or 0)
    rolled_out = (
        observed >= generation
        and updated >= desired
        and replicas <= desired
        and available >= desired
    )
    problem: tuple[str, str] | None = None
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        problem = pod_problem(pod)
        if problem:
            break
    if problem is None:
        for c in st.get("conditions") or ():
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                problem = ("ProgressDeadlineExceeded", c.get("message") or "rollout stalled")
    waiting = None
    if not rolled_out:
        waiting = f"{ready}/{desired} replicas ready, {updated} updated"
    return VariantState(
        name=name,
        weight=weight,
        replicas=replicas,
        ready_replicas=ready,
        desired=desired,
        rolled_out=rolled_out,
        problem_reason=problem[0] if problem else None,
        problem_message=problem[1] if problem else None,
        waiting_for=waiting,
    )


NOT_ROLLING_OUT = {
    "InvalidSpec": "the spec must be fixed before rolling out",
    "NoServingImage": "nothing is rolled out until a configured model-server image serves "
                      "the spec (the spec or the operator's images must change)",
}
"""``Progressing``'s message while the spec is refused, by reason."""

_FAILURE_ORDER = (INSUFFICIENT, "Unschedulable", *SECRET_REASONS, "ModelLoadFailed",
                  "ProgressDeadlineExceeded")


def assess(
    ms: Mapping[str, Any],
    deployments: Mapping[str, Mapping[str, Any] | None],
    pods: Sequence[Mapping[str, Any]],
    weights: Mapping[str, int] | None = None,
    refused: Mapping[str, str] | None = None,
    pending: Mapping[str, str] | None = None,
    building: Mapping[str, str] | None = None,
) -> Verdict:
    """Summarise the variants' Deployments and Pods (``weights``: the effective weights;
    spec.traffic as written when not given, e.g. for a spec that does not parse;
    ``refused``: the variants no GPU pool holds, with why; ``pending``: those waiting for
    their GPU memory estimate, with what they wait for)."""
    weights = variant_weights(ms) if weights is None else weights
    states: list[VariantState] = []
    for name, weight in weights.items():
        vpods = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
            LABEL_VARIANT) == name]
        state = _deployment_state(name, weight, deployments.get(name), vpods)
        if refused and name in refused:
            state = replace(state, problem_reason=INSUFFICIENT,
                                        problem_message=refused[name], waiting_for=None)
        elif pending and name in pending:
            state = replace(state, waiting_for=pending[name])
        elif building and name in building:
            state = replace(state, waiting_for=building[name])
        states.append(state)
    verdict = Verdict(variants=states, estimating=any(s.name in (pending or {})
                                                      for s in states))
    problems = [s for s in states if s.problem_reason]
    if problems:
        problems.sort(key=lambda s: _FAILURE_ORDER.index(s.problem_reason or "")
                      if s.problem_reason in _FAILURE_ORDER else len(_FAILURE_ORDER))
        first = problems[0]
        verdict.failure_reason = first.problem_reason
        verdict.failure_message = "; ".join(
            f"variant {s.name}: {s.problem_message}" for s in problems
            if s.problem_reason == first.problem_reason
        )
        if first.problem_reason in SECRET_REASONS:
            lead = secret_problem(ms, first.problem_reason)
            verdict.failure_message = f"{lead}. {verdict.failure_message}"
    waiting = [s for s in states if s.waiting_for]
    verdict.progressing_message = "; ".join(f"variant {s.name}: waiting for {s.waiting_for}"
                                            for s in waiting)
    verdict.ready = bool(states) and not problems and all(
        s.weight == 0 or (s.desired is not None and s.ready_replicas >= s.desired)
        for s in states
    )
    return verdict


def compute_status(
    ms: Mapping[str, Any],
    *,
    deployments: Mapping[str, Mapping[str, Any] | None],
    pods: Sequence[Mapping[str, Any]],
    now: str,
    observed_generation: int | None,
    invalid_spec: str | None = None,
    invalid_reason: str = "InvalidSpec",
    apply_error: str | None = None,
    ignored_fields: Sequence[tuple[str, str]] = (),
    weights: Mapping[str, int] | None = None,
    rollout: Mapping[str, Any] | None = None,
    measured: Mapping[str, Mapping[str, Any]] | None = None,
    brownout: Mapping[str, Any] | None = None,
    hpas: Mapping[str, HpaState] | None = None,
    routed: bool = False,
    gpu: Mapping[str, GpuVariant] | None = None,
    builds: BuildSummary | None = None,
    zero_variants: Sequence[str] = (),
    zero_blind: Sequence[str] = (),
    model_cache: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status block (only ``OWNED_KEYS``) for ``ms`` given what the cluster holds
    (``invalid_spec``: why the spec was refused, with ``invalid_reason``), the effective
    ``weights``, the rollout's and the brownout's state, the variants' HPAs
    and the per-variant ``measured`` fields. ``routed``: the ModelService's HTTPRoute is
    accepted by a programmed Gateway (``routing``), so the weights are exact per request
    (False: requests split by the stable Service's ready pods). ``gpu``: GPU fit's answer
    per variant (None: GPU fit is off or the ModelService has no spec.gpu). ``builds``: the
    optimization pipeline's answer (``optimize``; the ``Built`` condition, each built
    variant's ``build`` and ``provenance``). ``zero_variants``: the variants KEDA may scale
    to zero (``zero.plan``), ``zero_blind``: why scale to zero cannot act as asked
    (``AutoscalingBlind``). ``model_cache``: ``status.modelCache`` as written (pre-warming,
    ``prewarm``; information only, no condition reads it)."""
    meta = ms.get("metadata") or {}
    prior = ms.get("status") or {}
    conditions: list[dict[str, Any]] = list(prior.get("conditions") or ())
    gen = observed_generation

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = cond.upsert(conditions, type_=type_, status=status, reason=reason,
                                 message=message, now=now, observed_generation=gen)

    refused = {v: g.refused for v, g in (gpu or {}).items() if g.refused}
    pending = {v: g.pending for v, g in (gpu or {}).items() if g.pending}
    building = dict(builds.building) if builds is not None else {}
    verdict = assess(ms, deployments, pods, weights, refused, pending, building)
    # waiting for a variant's estimate rather than for its pods
    rolling = ESTIMATING if verdict.estimating else "RollingOut"
    rollout_state = RolloutStatus.from_dict(rollout) if rollout else None
    if invalid_spec is not None:
        failure: tuple[str, str] | None = (invalid_reason, invalid_spec)
        put(READY, cond.FALSE, invalid_reason, invalid_spec)
        put(PROGRESSING, cond.FALSE, invalid_reason, NOT_ROLLING_OUT.get(
            invalid_reason, NOT_ROLLING_OUT["InvalidSpec"]))
    elif apply_error is not None:
        failure = ("ApplyFailed", apply_error)
        put(READY, cond.TRUE if verdict.ready else cond.FALSE, "ApplyFailed", apply_error)
        put(PROGRESSING, cond.FALSE, "ApplyFailed", apply_error)
    else:
        failure = ((verdict.failure_reason, verdict.failure_message)
                   if verdict.failure_reason else None)
        idle = scaled_to_zero(verdict, zero_variants)
        serving = [s for s in verdict.variants if s.weight > 0]
        if verdict.ready and serving and all(s.name in idle for s in serving):
            put(READY, cond.TRUE, REASON_SCALED_TO_ZERO,
                f"scaled to zero after idling ({', '.join(s.name for s in serving)}): the "
                "first request is held while a pod starts")
        elif verdict.ready:
            put(READY, cond.TRUE, "AllVariantsReady",
                f"{len(verdict.variants)} variant(s) ready")
        elif failure:
            put(READY, cond.FALSE, *failure)
        else:
            put(READY, cond.FALSE, rolling, verdict.progressing_message
                or "waiting for the variants to become ready")
        if failure:
            put(PROGRESSING, cond.FALSE, *failure)
        elif verdict.progressing_message:
            put(PROGRESSING, cond.TRUE, rolling, verdict.progressing_message)
        elif (unrepresentable := share_problem(ms, verdict, rollout_state, routed)):
            put(PROGRESSING, cond.FALSE, shares.SHARE_NOT_REPRESENTABLE, unrepresentable)
        else:
            put(PROGRESSING, cond.FALSE, "RolloutComplete", "every variant is rolled out")
    if failure:
        put(DEGRADED, cond.TRUE, *failure)
        put(RECONCILING, cond.FALSE, failure[0],
            "stopped: the operator cannot make progress until this is fixed")
        put(STALLED, cond.TRUE, *failure)
    else:
        put(DEGRADED, cond.FALSE, "AsExpected", "no failures observed")
        if verdict.ready and not verdict.progressing_message:
            put(RECONCILING, cond.FALSE, "RolloutComplete", "every variant is rolled out")
        else:
            put(RECONCILING, cond.TRUE, rolling, verdict.progressing_message
                or "waiting for the variants to become ready")
        put(STALLED, cond.FALSE, "AsExpected", "no failures observed")
    ignored = list(ignored_fields)
    if ignored:
        put(FIELDS_IGNORED, cond.TRUE, ignored[0][0], "; ".join(m for _, m in ignored))
    else:
        put(FIELDS_IGNORED, cond.FALSE, "AllFieldsActing", "every field of the spec takes effect")
    if rollout_state is not None and rollout_state.phase:
        put(ROLLOUT, *rollout_condition(rollout_state))
    else:
        conditions = [c for c in conditions if c.get("type") != ROLLOUT]
    built = builds.condition if builds is not None else None
    if built is not None:
        put(BUILT, *built)
    elif builds is not None:
        conditions = [c for c in conditions if c.get("type") != BUILT]
    if (ms.get("spec") or {}).get("autoscaling"):
        blind_state = autoscaling_blind_condition(hpas or {}, brownout)
        if zero_blind:
            blind_state = (cond.TRUE, REASON_SCALING_BLIND, "; ".join(
                [*zero_blind, *([blind_state[2]] if blind_state[0] == cond.TRUE else [])]))
        put(AUTOSCALING_BLIND, *blind_state)
    else:
        conditions = [c for c in conditions if c.get("type") != AUTOSCALING_BLIND]

    provenance = variant_provenance(ms)
    records = builds.records if builds is not None else {}
    hpas = hpas or {}
    delivered = shares.delivered({s.name: s.weight for s in verdict.variants}, pods, routed)
    started = variant_startups(prior, pods, [s.name for s in verdict.variants])
    entries = [_variant_entry(s, hpas.get(s.name), provenance.get(s.name, {}),
                              (measured or {}).get(s.name) or {}, delivered[s.name],
                              (gpu or {}).get(s.name), started.get(s.name))
               for s in verdict.variants]
    idle = scaled_to_zero(verdict, zero_variants)
    for entry in entries:
        found = records.get(entry.name or "")
        if found:
            entry.build = found["build"]
            entry.provenance = found.get("provenance")
            entry.derived_from = found.get("derivedFrom") or entry.derived_from
        if entry.name in idle:
            entry.scaled_to_zero = True
    if gpu and entries:  # the reference: the spec's stable variant (the default one when
        # the spec lists none)
        _mark_frontier(entries, stable_of(variant_weights(ms) or {
            s.name: s.weight for s in verdict.variants}))
    status: dict[str, Any] = {
        "conditions": conditions,
        "variants": [entry.to_dict() for entry in entries],
        # One string for `kubectl get msv` (printer columns show only the first list item).
        "traffic": ",".join(f"{s.name}={s.weight}" for s in verdict.variants),
        # what each variant receives, beside what it asks (the SHARES column)
        "shares": shares.text(delivered),
        # ready/desired replicas per variant (the REPLICAS column)
        "replicaCounts": ",".join(f"{s.name}={s.ready_replicas}/{s.desired or 0}"
                                  for s in verdict.variants),
        "url": service_url(str(meta.get("name", "")), str(meta.get("namespace", "")),
                           tls=_serves_tls(ms)),
    }
    if observed_generation is not None:
        status["observedGeneration"] = observed_generation
    if rollout:
        status["rollout"] = dict(rollout)
    if brownout:
        status["brownout"] = dict(brownout)
    if model_cache:
        status["modelCache"] = dict(model_cache)
    return status


def scaled_to_zero(verdict: Verdict, zero_variants: Sequence[str]) -> set[str]:
    """The variants that are at zero by their idle policy: KEDA may scale them to zero
    (``zero_variants``), their Deployment asks 0 replicas and none is left."""
    return {s.name for s in verdict.variants if s.name in zero_variants
            and s.desired == 0 and s.replicas == 0 and not s.problem_reason}


def _serves_tls(ms: Mapping[str, Any]) -> bool:
    spec = ms.get("spec")
    server = spec.get("server") if isinstance(spec, Mapping) else None
    tls = server.get("tls") if isinstance(server, Mapping) else None
    return isinstance(tls, Mapping) and bool(tls.get("secretName"))


def share_problem(ms: Mapping[str, Any], verdict: Verdict, rollout_state: RolloutStatus | None,
                  routed: bool) -> str | None:
    """Why a weight is not delivered (``Progressing``'s ``ShareNotRepresentable`` message),
    or None: a rollout held before a step, or (no gateway) effective weights the replica
    split cannot represent (``shares.plan``)."""
    if routed:
        return None
    if (rollout_state is not None and rollout_state.phase == PAUSED
            and rollout_state.reason == shares.SHARE_NOT_REPRESENTABLE):
        return f"rollout {rollout_state.message}"
    try:
        parsed = parse_spec(ms)
    except InvalidSpecError:
        return None
    weights = {s.name: s.weight for s in verdict.variants}
    plan = shares.plan(parsed, weights)
    if plan.split.representable:
        return None
    return (f"traffic {','.join(f'{v}={w}' for v, w in weights.items())}: "
            f"{shares.explain(plan)}")


def variant_startups(prior: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
                     names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per variant: ``startup`` of its newest Ready pod (``startup.latest``), the stored one
    carried over while no newer pod is Ready."""
    stored = {v.get("name"): v.get("startup") for v in prior.get("variants") or ()
              if isinstance(v, Mapping)}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        vpods = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
            LABEL_VARIANT) == name]
        found = startup.latest(vpods, stored.get(name), server=SERVER_CONTAINER,
                               pull=PULL_CONTAINER)
        if found is not None:
            out[name] = found
    return out


def _variant_entry(s: VariantState, hpa: HpaState | None, provenance: Mapping[str, str],
                   measured: Mapping[str, Any], share: int,
                   gpu: GpuVariant | None = None,
                   started: Mapping[str, Any] | None = None) -> VariantStatus:
    """One ``status.variants`` entry: the measured fields it has (``MEASURED_KEYS``; others
    are dropped), then the replicas, weight and share, the HPA's bounds of an autoscaled
    variant, the provenance, where its newest pod's start went (``started``) and, with GPU
    fit, its memory, placement and cost."""
    entry = _measured_entry(s.name, measured)
    entry.weight, entry.share = s.weight, share
    entry.replicas, entry.ready_replicas = s.replicas, s.ready_replicas
    entry.desired_replicas = s.desired if s.desired is not None else 0
    if hpa is not None:
        entry.min_replicas, entry.max_replicas = hpa.min_replicas, hpa.max_replicas
    entry.derived_from = provenance.get("derivedFrom")
    entry.optimization = provenance.get("optimization")
    entry.startup = dict(started) if started is not None else None
    if gpu is not None:
        memory = {**(gpu.gpu_memory or {}), **(entry.gpu_memory or {})}
        entry.gpu_memory = memory or None
        entry.placement = dict(gpu.placement) if gpu.placement is not None else None
        _price(entry, s.replicas, gpu)
    return entry


def _measured_entry(name: str, measured: Mapping[str, Any]) -> VariantStatus:
    entry = VariantStatus.from_dict({k: v for k, v in measured.items()
                                     if k in MEASURED_KEYS and v is not None})
    entry.name = name
    return entry


def _price(entry: VariantStatus, replicas: int, gpu: GpuVariant) -> None:
    """The entry's ``costPerHour`` and ``costPer1kRequests`` (``pareto.cost``: its pods at the
    placement's price per pod, at its measured ``rps``)."""
    cost = pareto.cost(replicas, gpu.price_per_pod, entry.rps)
    entry.cost_per_hour = None if cost.per_hour is None else round(cost.per_hour, 6)
    entry.cost_per_1k_requests = (None if cost.per_1k_requests is None
                                  else round(cost.per_1k_requests, 6))


def standings(names: Sequence[str], stable: str,
              deployments: Mapping[str, Mapping[str, Any] | None],
              measured: Mapping[str, Mapping[str, Any]],
              gpu: Mapping[str, GpuVariant] | None) -> dict[str, Standing]:
    """What the brownout chooses from (``brownout.choose``): per variant its Pareto mark, p95,
    cost per 1,000 requests, agreement and price per pod, computed as ``compute_status``
    writes them into ``status.variants[]`` from the same Deployments, measurements and GPU
    fit (no marks nor costs without GPU fit)."""
    entries = []
    for name in names:
        entry = _measured_entry(name, measured.get(name) or {})
        g = (gpu or {}).get(name)
        if g is not None:
            dep = deployments.get(name) or {}
            _price(entry, int((dep.get("status") or {}).get("replicas") or 0), g)
        entries.append(entry)
    if gpu:
        _mark_frontier(entries, stable)
    prices = {name: g.price_per_pod for name, g in (gpu or {}).items()}
    return {str(e.name): Standing(pareto=e.pareto, p95_ms=e.p95_ms,
                                  cost_per_1k=e.cost_per_1k_requests, agreement=e.agreement,
                                  price_per_pod=prices.get(str(e.name)))
            for e in entries}


def _mark_frontier(entries: Sequence[VariantStatus], stable: str | None) -> None:
    """Each entry's ``pareto`` and ``dominatedBy`` over p95, cost per 1,000 requests and
    agreement (the stable variant is the reference: its agreement is 1)."""
    points = [pareto.Point(str(e.name), e.p95_ms, e.cost_per_1k_requests,
                           1.0 if e.name == stable else e.agreement) for e in entries]
    marks = pareto.frontier(points)
    for e in entries:
        mark = marks[str(e.name)]
        e.pareto, e.dominated_by = mark.state, list(mark.dominated_by) or None


def autoscaling_blind_condition(hpas: Mapping[str, HpaState],
                                brownout: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(status, reason, message) of ``AutoscalingBlind`` (only with ``spec.autoscaling``):
    ``True`` while a metrics API or Prometheus cannot be read (nothing scales then: the HPAs
    hold their size, a brownout holds its state); information only, like ``FieldsIgnored``."""
    found = blind(hpas, brownout)
    if found is None:
        return cond.FALSE, "MetricsAvailable", "the autoscaling metrics can be read"
    return cond.TRUE, found[0], found[1]


def rollout_condition(rollout: RolloutStatus | Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of the ``Rollout`` condition for a ``status.rollout``."""
    r = rollout if isinstance(rollout, RolloutStatus) else RolloutStatus.from_dict(rollout)
    phase = str(r.phase)
    message = str(r.message or phase)
    if phase == "Promoted":
        return cond.TRUE, "Promoted", message
    if phase in ("Pending", "Progressing"):
        return cond.UNKNOWN, phase, message
    return cond.FALSE, str(r.reason or phase), message


def prior_measured(prior: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The measured fields of each variant in a stored status (kept until re-measured)."""
    out: dict[str, dict[str, Any]] = {}
    for v in (prior or {}).get("variants") or ():
        entry = VariantStatus.from_dict(v) if isinstance(v, Mapping) else None
        if entry is not None and isinstance(entry.name, str):
            out[entry.name] = entry.measured()
    return out


def readiness(deployments: Mapping[str, Mapping[str, Any] | None],
              pods: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, str | None]]:
    """Per variant: (ready replicas, why its pods cannot serve or None). A pod that cannot
    load its model, crash-loops or cannot use its Secrets counts (``CANNOT_SERVE``); one that
    waits for a node does not (the rollout holds instead)."""
    out: dict[str, tuple[int, str | None]] = {}
    for name, dep in deployments.items():
        vpods = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
            LABEL_VARIANT) == name]
        state = _deployment_state(name, 0, dep, vpods)
        failure = state.problem_message if state.problem_reason in CANNOT_SERVE else None
        out[name] = (state.ready_replicas, failure)
    return out


def owned_part(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys of ``status`` this module writes (for change detection)."""
    status = status or {}
    return {k: status[k] for k in OWNED_KEYS if k in status}


def changed(prior: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing ``new`` would change the stored status."""
    return owned_part(prior) != owned_part(new)
