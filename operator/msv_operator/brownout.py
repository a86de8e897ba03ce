"""The brownout state machine (load-adaptive precision; pure: no I/O, the clock is an argument).

``advance`` takes the typed spec, the prior ``status.brownout``, the weights the rollout
machine decided, the rollout's status, the stable variant's HPA (``HpaState``, read from the
HPA objects the operator caches), the variants' readiness, the measurement taken in this pass
(a ``rollout.Sample``, or None when none was due) and ``now``; it returns a ``Decision``: the
new ``status.brownout``, the effective weights, the Events to post.

Phases: ``Inactive`` -> ``Engaged`` when the stable variant (the most weight in spec.traffic)
is at its HPA's maxReplicas and its p95 stays above ``latencyObjectiveMs`` for
``engageAfter``: the brownout variant then gets ``step`` percent (default: all of
``maxShare``; never less than its own spec weight), the other variants the rest in the
proportions of spec.traffic; each further ``engageAfter`` of overload adds ``step`` up to
``maxShare``.
``Engaged`` -> ``Inactive`` once the p95 stays below ``releaseBelow`` x the objective for
``releaseAfter`` (hysteresis). Precedence, strongest first: an active rollout (``Pending``,
``Progressing``, ``Paused``) or a promoted one (reason ``RolloutActive``); a brownout variant
without a ready pod (``VariantNotReady``: never used, only reported); metrics that cannot be
read (``MetricsUnavailable``: the phase and its weights hold, the windows start over).
Only a fresh measurement moves the windows; between measurements the state holds.

Which variant: the spec's ``variant``, or, without one, the operator's choice among the
candidates (``choose``) from each variant's ``Standing`` (its Pareto mark, p95, cost and
agreement as this pass's status shows them, ``status.standings``): a ready candidate on the
frontier, cheapest per 1,000 requests; else (nothing measured on the frontier) the
``fallback``: the cheapest pod, then the first listed. The choice is made while ``Inactive``
(``status.brownout.variant`` shows what an engagement would take now), held from engaging to
release and made again for the next engagement. No candidate that can take traffic
(``VariantNotReady`` or ``NoEligibleVariant``): never engages, only reports.
The machine works on the typed ``state.BrownoutStatus`` (and reads the rollout's phase from
``state.RolloutStatus``); the stored dict is read once and written once (``Decision.status``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from msv_operator.conditions import rfc3339
from msv_operator.pareto import DOMINATED, FRONTIER
from msv_operator.rollout import (
    ACTIVE,
    PROMOTED,
    Event,
    Readiness,
    Sample,
    seconds_since,
    step_weights,
)
from msv_operator.spec import Brownout, ModelServiceSpec
from msv_operator.state import BrownoutStatus, RolloutStatus, present

INACTIVE = "Inactive"
ENGAGED = "Engaged"

WITHIN_OBJECTIVE = "WithinObjective"
"""Inactive: the stable p95 is at or below the objective (or nothing was measured yet)."""
SCALING_OUT = "ScalingOut"
"""Inactive: p95 above the objective, but the HPA can still add stable pods."""
OVERLOADED = "Overloaded"
"""At maxReplicas with p95 above the objective (Inactive: for less than engageAfter so far)."""
RECOVERING = "Recovering"
"""Engaged: p95 below the release line, for less than releaseAfter so far."""
VARIANT_NOT_READY = "VariantNotReady"
NO_ELIGIBLE_VARIANT = "NoEligibleVariant"
"""Inactive, the operator choosing: no candidate has a ready pod and the agreement floor."""
ROLLOUT_ACTIVE = "RolloutActive"
METRICS_UNAVAILABLE = "MetricsUnavailable"

FAILED_METRIC_PREFIX = "FailedGet"
"""HPA ``ScalingActive=False`` reasons starting with this: a metrics API could not be read
(FailedGetResourceMetric, FailedGetPodsMetric, FailedGetExternalMetric, ...)."""


@dataclass(frozen=True)
class HpaState:
    """What one HorizontalPodAutoscaler says (its spec bounds and its status)."""

    current: int
    desired: int
    min_replicas: int
    max_replicas: int
    blind: str | None = None
    """``reason: message`` when the HPA cannot read its metrics (it then holds its size)."""


def hpa_state(hpa: Mapping[str, Any]) -> HpaState:
    spec = hpa.get("spec") or {}
    st = hpa.get("status") or {}
    blind = None
    for c in st.get("conditions") or ():
        if (c.get("type") == "ScalingActive" and c.get("status") == "False"
                and str(c.get("reason", "")).startswith(FAILED_METRIC_PREFIX)):
            blind = f"{c.get('reason')}: {c.get('message', '')}".rstrip(": ")
    return HpaState(current=int(st.get("currentReplicas") or 0),
                    desired=int(st.get("desiredReplicas") or 0),
                    min_replicas=int(spec.get("minReplicas") or 1),
                    max_replicas=int(spec.get("maxReplicas") or 0), blind=blind)


CHOSEN_BY_SPEC = "spec"
CHOSEN_BY_FRONTIER = "frontier"
CHOSEN_BY_FALLBACK = "fallback"


@dataclass(frozen=True)
class Standing:
    """What the status shows of one variant, for the choice (None: not known)."""

    pareto: str | None = None
    """``frontier``, ``dominated``, ``unmeasured``; None with GPU fit off (no price)."""
    p95_ms: float | None = None
    cost_per_1k: float | None = None
    agreement: float | None = None
    price_per_pod: float | None = None
    """US dollars per hour of one of its pods (its placement's)."""


@dataclass(frozen=True)
class Choice:
    variant: str | None
    """None: no candidate can be chosen (``why`` says each one's obstacle)."""
    chosen_by: str | None
    why: str
    not_ready: bool = False
    """Nothing chosen, and only for want of ready pods (``VariantNotReady``)."""


def _num(value: float | None, unit: str = "") -> str:
    return "not measured" if value is None else f"{value:g}{unit}"


def choose(b: Brownout, readiness: Mapping[str, Readiness],
           standings: Mapping[str, Standing]) -> Choice:
    """The variant an engagement takes now, when the operator chooses (``b.variant`` None).

    Eligible: a candidate with a ready pod and no failure, and, with ``minAgreement``, a
    measured agreement at or above it. Among the eligible on the Pareto frontier: the lowest
    cost per 1,000 requests, then the lowest p95, then the first listed (``frontier``).
    None on the frontier (nothing measured yet, or only dominated ones): not dominated first,
    then the lowest known price per pod, then the first listed (``fallback``)."""
    eligible: list[tuple[int, str, Standing]] = []
    obstacles: list[str] = []
    unready = 0
    for i, name in enumerate(b.candidates):
        ready = readiness.get(name, Readiness())
        found = standings.get(name, Standing())
        if ready.ready < 1 or ready.failure:
            unready += 1
            obstacles.append(f"{name}: {ready.failure or 'no ready pod'}")
        elif b.min_agreement is not None and (found.agreement is None
                                              or found.agreement < b.min_agreement):
            obstacles.append(f"{name}: agreement {_num(found.agreement)} below minAgreement "
                             f"{b.min_agreement:g}")
        else:
            eligible.append((i, name, found))
    if not eligible:
        return Choice(None, None, "; ".join(obstacles), not_ready=unready == len(b.candidates))
    listed = ", ".join(name for _, name, _ in eligible)
    front = [e for e in eligible if e[2].pareto == FRONTIER and e[2].cost_per_1k is not None]
    if front:
        _, name, s = min(front, key=lambda e: (
            e[2].cost_per_1k, float("inf") if e[2].p95_ms is None else e[2].p95_ms, e[0]))
        return Choice(name, CHOSEN_BY_FRONTIER,
                      f"on the Pareto frontier with the lowest cost per 1,000 requests "
                      f"(${_num(s.cost_per_1k)}, p95 {_num(s.p95_ms, ' ms')}) of "
                      f"{', '.join(n for _, n, _ in front)}")
    _, name, s = min(eligible, key=lambda e: (
        e[2].pareto == DOMINATED, e[2].price_per_pod is None,
        e[2].price_per_pod or 0.0, e[0]))
    by = (f"the lowest price per pod (${s.price_per_pod:g}/h)" if s.price_per_pod is not None
          else "the first listed")
    return Choice(name, CHOSEN_BY_FALLBACK,
                  f"no eligible candidate is on the Pareto frontier yet; {by} of {listed}")


@dataclass
class Decision:
    status: dict[str, Any] | None
    """The new ``status.brownout`` (None without ``spec.autoscaling.brownout``)."""
    weights: dict[str, int]
    events: list[Event] = field(default_factory=list)


def shifted_weights(spec: ModelServiceSpec, b: Brownout, share: int,
                    variant: str | None = None) -> dict[str, int]:
    """``share`` percent (at least the variant's own spec weight) to the brownout variant
    (``variant``, else the spec's), the rest over the other variants in the proportions of
    spec.traffic."""
    to = variant or b.variant
    assert to is not None, "an operator-chosen brownout names the variant it holds"
    return step_weights(spec, to, max(share, int(spec.traffic.get(to, 0))))


def first_share(b: Brownout) -> int:
    """The share an engaging brownout starts with."""
    return min(b.step or b.max_share, b.max_share)


def _fresh(b: Brownout, stable: str, stamp: str) -> BrownoutStatus:
    return BrownoutStatus(variant=b.variant, stable=stable, phase=INACTIVE,
                          reason=WITHIN_OBJECTIVE, message="nothing measured yet", since=stamp,
                          share=0)


def _continues(b: Brownout, known: BrownoutStatus, stable: str) -> bool:
    """Whether a stored status goes on under this spec (else the brownout starts afresh): the
    same stable variant and, with the spec's variant, the same one; when the operator
    chooses, an engagement goes on while its variant is still a candidate."""
    if known.stable != stable:
        return False
    if b.variant is not None:
        return known.variant == b.variant
    return known.phase != ENGAGED or known.variant in b.candidates


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Run:
    def __init__(self, b: Brownout, st: BrownoutStatus, now: datetime) -> None:
        self.b, self.st, self.now = b, st, now
        self.stamp = rfc3339(now)
        self.events: list[Event] = []

    def move(self, phase: str | None, reason: str, message: str,
             event: Event | None = None) -> None:
        """Set phase/reason/message; ``event`` is posted only when phase or reason changes.
        (``phase`` is None only when holding a stored status that had none.)"""
        changed = (self.st.phase, self.st.reason) != (phase, reason)
        if self.st.phase != phase:
            self.st.since = self.stamp
        self.st.phase, self.st.reason, self.st.message = phase, reason, message
        if event is not None and changed:
            self.events.append(event)

    @property
    def variant(self) -> str:
        """The variant engaged, or an engagement would take (set by then)."""
        return str(self.st.variant)

    def release(self, reason: str, why: str) -> None:
        message = f"released: traffic back from {self.variant}: {why}"
        self.st.share = 0
        self.move(INACTIVE, reason, message, ("Normal", "BrownoutReleased", message))

    def pressure_window(self) -> float:
        """Seconds the overload window has run (``pressureSince``; starts it now if it was
        not running)."""
        if not self.st.pressure_since:
            self.st.pressure_since = self.stamp
        return seconds_since(self.st.pressure_since, self.now) or 0.0

    def calm_window(self) -> float:
        """Seconds the calm window has run (``calmSince``; starts it now if it was not
        running)."""
        if not self.st.calm_since:
            self.st.calm_since = self.stamp
        return seconds_since(self.st.calm_since, self.now) or 0.0


def advance(spec: ModelServiceSpec, prior: BrownoutStatus | Mapping[str, Any] | None,
            weights: Mapping[str, int],
            rollout_status: RolloutStatus | Mapping[str, Any] | None,
            hpa: HpaState | None, readiness: Mapping[str, Readiness], sample: Sample | None,
            now: datetime, standings: Mapping[str, Standing] | None = None) -> Decision:
    """One step of the machine (see the module docstring; ``standings``: each variant's, for
    the choice when the spec names no variant)."""
    b = spec.autoscaling.brownout if spec.autoscaling else None
    if b is None:
        return Decision(status=None, weights=dict(weights))
    stable = spec.stable
    stamp = rfc3339(now)
    known = BrownoutStatus.of(prior)
    if known is not None and _continues(b, known, stable):
        st = known if known is not prior else copy.deepcopy(known)  # never change the caller's
    else:
        st = _fresh(b, stable, stamp)
    none_eligible: Choice | None = None
    if b.variant is not None:
        st.chosen_by, st.choice = CHOSEN_BY_SPEC, "spec.autoscaling.brownout.variant"
    elif st.phase != ENGAGED:  # held while engaged; chosen again for the next engagement
        choice = choose(b, readiness, standings or {})
        st.variant, st.chosen_by, st.choice = choice.variant, choice.chosen_by, choice.why
        if choice.variant is None:
            none_eligible = choice
    run = _Run(b, st, now)
    st.objective_ms = _ms(b.objective_ms)
    st.release_below_ms = _ms(b.objective_ms * b.release_below)
    st.max_share = b.max_share
    if hpa is not None:
        st.stable_replicas, st.stable_max_replicas = hpa.current, hpa.max_replicas
    if sample is not None and sample.error is None:
        st.p95_ms = _ms(sample.variants[stable].p95_ms if stable in sample.variants else None)
        st.measured_at = stamp
        st.metrics_error = None
    elif sample is not None:
        st.metrics_error = sample.error

    ready = readiness.get(st.variant or "", Readiness())
    rollout = RolloutStatus.of(rollout_status)
    rollout_phase = rollout.phase if spec.rollout and rollout is not None else None
    if rollout_phase in (*ACTIVE, PROMOTED):
        _suspend(run, f"the rollout of {spec.rollout.candidate if spec.rollout else '?'} is "
                      f"{rollout_phase}; the rollout decides the weights (it takes precedence)",
                 ROLLOUT_ACTIVE, ("Normal", "BrownoutSuspended", "a rollout is active"))
    elif none_eligible is not None:
        why = f"no candidate variant can take traffic ({none_eligible.why})"
        _suspend(run, f"{why}; the brownout never engages while so",
                 VARIANT_NOT_READY if none_eligible.not_ready else NO_ELIGIBLE_VARIANT,
                 ("Warning", "BrownoutUnavailable", why),
                 keep_pressure=True, sample=sample, hpa=hpa)
    elif ready.ready < 1 or ready.failure:
        why = ready.failure or "it has no ready pod"
        _suspend(run, f"brownout variant {run.variant} cannot take traffic: {why}; it is never "
                      "given weight while so", VARIANT_NOT_READY,
                 ("Warning", "BrownoutUnavailable", f"variant {run.variant} is not ready: {why}"),
                 keep_pressure=True, sample=sample, hpa=hpa)
    elif sample is not None and sample.error is not None:
        st.pressure_since = st.calm_since = None
        message = (f"metrics unavailable, holding {st.phase} (share {st.share or 0}%): "
                   f"{sample.error}")
        run.move(st.phase, METRICS_UNAVAILABLE, message,
                 ("Warning", "BrownoutMetricsUnavailable", message))
    elif sample is not None:
        _evaluate(run, hpa)
    elif st.reason in (ROLLOUT_ACTIVE, VARIANT_NOT_READY, NO_ELIGIBLE_VARIANT):
        # the obstacle is gone (all leave the phase Inactive); the next measurement says more
        run.move(INACTIVE, WITHIN_OBJECTIVE, "waiting for the next measurement")

    out = dict(weights)
    if st.phase == ENGAGED:
        out = shifted_weights(spec, b, st.share or first_share(b), run.variant)
        st.share = out[run.variant]
    else:
        st.share = 0
    return Decision(status=st.to_dict(), weights=out, events=run.events)


def _suspend(run: _Run, message: str, reason: str, event: Event, keep_pressure: bool = False,
             sample: Sample | None = None, hpa: HpaState | None = None) -> None:
    st = run.st
    if st.phase == ENGAGED:
        run.release(reason, message)
        return
    st.calm_since = None
    if keep_pressure and sample is not None and sample.error is None \
            and _pressure(run.b, st, hpa):
        run.pressure_window()  # engages as soon as the variant is ready
    elif not keep_pressure or sample is not None:
        st.pressure_since = None
    run.move(INACTIVE, reason, message, event)


def _pressure(b: Brownout, st: BrownoutStatus, hpa: HpaState | None) -> bool:
    p95 = present(st.p95_ms)
    return (hpa is not None and hpa.max_replicas > 0 and hpa.current >= hpa.max_replicas
            and p95 is not None and p95 > b.objective_ms)


def _evaluate(run: _Run, hpa: HpaState | None) -> None:
    b, st = run.b, run.st
    p95 = present(st.p95_ms)
    seen = "no requests measured" if p95 is None else f"p95 {p95} ms"
    if st.phase == INACTIVE:
        st.calm_since = None
        if _pressure(b, st, hpa):
            held = run.pressure_window()
            if held >= b.engage_seconds:
                st.pressure_since = None
                st.share = first_share(b)
                message = (f"engaged: {seen} above the objective {b.objective_ms:g} ms at "
                           f"maxReplicas for {held:.0f}s; {st.share}% of the traffic goes "
                           f"to {run.variant} (maxShare {b.max_share}%)")
                if b.variant is None:
                    message += f"; {run.variant} chosen by {st.chosen_by}: {st.choice}"
                run.move(ENGAGED, OVERLOADED, message, ("Warning", "BrownoutEngaged", message))
                return
            run.move(INACTIVE, OVERLOADED,
                     f"{seen} above the objective {b.objective_ms:g} ms at maxReplicas for "
                     f"{held:.0f}s of engageAfter {b.engage_seconds:g}s")
            return
        st.pressure_since = None
        if p95 is not None and p95 > b.objective_ms:
            replicas = "no HPA yet" if hpa is None else \
                f"{hpa.current}/{hpa.max_replicas} replicas"
            run.move(INACTIVE, SCALING_OUT, f"{seen} above the objective {b.objective_ms:g} ms; "
                     f"the HPA can still scale ({replicas})")
        else:
            run.move(INACTIVE, WITHIN_OBJECTIVE,
                     f"{seen}, objective {b.objective_ms:g} ms")
        return
    line = b.objective_ms * b.release_below
    share = st.share or 0
    if _pressure(b, st, hpa) and share < b.max_share:
        st.calm_since = None
        held = run.pressure_window()
        if held >= b.engage_seconds:  # still overloaded: one more step
            st.pressure_since = None
            st.share = min(b.max_share, share + (b.step or b.max_share))
            message = (f"{seen} still above the objective {b.objective_ms:g} ms at maxReplicas "
                       f"for {held:.0f}s; {st.share}% to {run.variant} (maxShare "
                       f"{b.max_share}%)")
            run.events.append(("Warning", "BrownoutStep", message))
            run.move(ENGAGED, OVERLOADED, message)
            return
        run.move(ENGAGED, OVERLOADED, f"{seen} above the objective at maxReplicas for "
                 f"{held:.0f}s of engageAfter {b.engage_seconds:g}s before the next step; "
                 f"{share}% to {run.variant}")
        return
    st.pressure_since = None
    if p95 is None or p95 < line:
        calm = run.calm_window()
        if calm >= b.release_seconds:
            st.calm_since = None
            run.release(WITHIN_OBJECTIVE, f"{seen} below {line:g} ms for {calm:.0f}s")
            return
        run.move(ENGAGED, RECOVERING, f"{seen} below {line:g} ms for {calm:.0f}s of "
                 f"releaseAfter {b.release_seconds:g}s")
        return
    st.calm_since = None
    run.move(ENGAGED, OVERLOADED, f"{seen}, not below the release line {line:g} ms; "
             f"{st.share or 0}% to {run.variant}")


def blind(hpas: Mapping[str, HpaState],
          brownout_status: BrownoutStatus | Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) of ``AutoscalingBlind=True``, or None when the metrics can be read:
    an HPA that cannot read its metrics (``HPAMetricsUnavailable``) or a brownout that cannot
    read Prometheus (``PrometheusUnavailable``)."""
    parts = [f"variant {v}: the HPA cannot read its metrics and holds its size ({h.blind})"
             for v, h in sorted(hpas.items()) if h.blind]
    reason = "HPAMetricsUnavailable" if parts else "PrometheusUnavailable"
    b = BrownoutStatus.of(brownout_status)
    if b is not None and b.reason == METRICS_UNAVAILABLE:
        parts.append(f"brownout cannot read the stable p95 and holds {b.phase}: "
                     f"{b.metrics_error}")
    return (reason, "; ".join(parts)) if parts else None
