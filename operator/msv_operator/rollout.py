"""The rollout state machine (pure: no I/O, the clock is an argument).

``advance`` takes the typed spec, the prior ``status.rollout``, the candidate's readiness (from
the Deployments and Pods the operator caches), an analysis ``Sample`` (when one was due), the
ModelService's annotations and ``now``, and returns a ``Decision``: the new ``status.rollout``,
the *effective weights* every builder and the status take, whether the stable variants mirror
to the candidate, the Events to post and when to look again. All state lives in
``status.rollout``, so a restarted operator resumes at the same step. The machine works on its
typed form (``state.RolloutStatus``); the stored dict is read once on the way in and written
once on the way out (``Decision.status``).

``traffic_weights`` is the one computation of spec.traffic as weights (the builders and the
status use it too); ``step_weights`` and ``effective_weights`` move them during a rollout.

Phases: ``Pending`` (candidate not ready) -> ``Progressing`` (step i) -> ``Promoted``, or
``RolledBack`` (a gate failed more than ``failureLimit`` times, or the candidate cannot load or
crash-loops) or ``Aborted`` (by annotation); ``Paused`` by annotation (reason ``PausedByUser``),
because the metrics cannot be read (reason ``MetricsUnavailable``: never promote blind) or,
without a gateway (``routed`` False), because the replica split cannot represent the next
step's weight (reason ``ShareNotRepresentable``, ``shares.plan``: never claim a share that is
not delivered); the last two resume by themselves once the obstacle is gone. The agreement
gate judges a confidence interval on the measured agreement (``confidence``): while the
interval still holds its threshold the analysis is ``Undecided`` and the step holds, without
counting a failure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from msv_contract.api import ANNOTATION_ROLLOUT_ACTION, ANNOTATION_ROLLOUT_PAUSED
from msv_operator import confidence, shares
from msv_operator.conditions import rfc3339
from msv_operator.spec import ModelServiceSpec, Rollout
from msv_operator.state import (
    ABSENT,
    Absent,
    Analysis,
    Gate,
    HistoryEntry,
    Reference,
    RolloutStatus,
    present,
)

PENDING = "Pending"
PROGRESSING = "Progressing"
PAUSED = "Paused"
PROMOTED = "Promoted"
ROLLED_BACK = "RolledBack"
ABORTED = "Aborted"
ACTIVE = (PENDING, PROGRESSING, PAUSED)
TERMINAL = (PROMOTED, ROLLED_BACK, ABORTED)

PAUSED_BY_USER = "PausedByUser"
METRICS_UNAVAILABLE = "MetricsUnavailable"
SHARE_NOT_REPRESENTABLE = shares.SHARE_NOT_REPRESENTABLE
"""Paused before a step whose weight the replica split cannot represent (no gateway)."""

ANNOTATION_PAUSED = ANNOTATION_ROLLOUT_PAUSED
"""``"true"`` holds the rollout at its current weights (level-triggered: remove to resume)."""
ANNOTATION_ACTION = ANNOTATION_ROLLOUT_ACTION
"""One-shot ``abort``, ``promote`` or ``retry``, optionally ``/<any suffix>`` (e.g. a timestamp)
so the same verb can be given again; handled once, recorded in ``status.rollout.handledAction``."""
ACTIONS = ("abort", "promote", "retry")

HISTORY = 10
"""Entries of ``status.rollout.history`` kept (newest last)."""

GATE_LATENCY = "latency"
GATE_ERRORS = "errorRate"
GATE_AGREEMENT = "agreement"


@dataclass(frozen=True)
class Readiness:
    """What the cluster says about one variant's pods."""

    ready: int = 0
    failure: str | None = None
    """Set when its pods cannot load the model or crash-loop (status ``ModelLoadFailed``)."""


@dataclass(frozen=True)
class VariantMetrics:
    """What Prometheus measured for one variant over the analysis window."""

    p95_ms: float | None = None
    rps: float | None = None
    error_rate: float | None = None
    agreement: float | None = None
    """Mean agreement of the mirrored comparisons this variant answered, with the stable
    variant(s) (each comparison scores 0..1)."""
    agreement_samples: float | None = None
    """The comparisons behind ``agreement`` (in the analysis window)."""
    parameters: float | None = None
    size_bytes: float | None = None
    gpu_memory_bytes: float | None = None
    """The most GPU memory any of its pods reserved (absent on CPU)."""


@dataclass(frozen=True)
class Sample:
    """One analysis: per-variant metrics, the candidate's requests in the current step, or
    ``error`` when the metrics could not be read (Prometheus unreachable, bad answer)."""

    variants: Mapping[str, VariantMetrics] = field(default_factory=dict)
    step_requests: Mapping[str, float] = field(default_factory=dict)
    """Requests per variant since the current step started."""
    error: str | None = None


class Analyzer(Protocol):
    """Where samples come from (``prom.PrometheusAnalyzer``; tests may point it anywhere)."""

    def sample(self, namespace: str, model: str, variants: Sequence[str],
               window_seconds: float, step_seconds: float | None) -> Sample: ...


Event = tuple[str, str, str]
"""(type, reason, message) of a Kubernetes Event."""


@dataclass
class Decision:
    status: dict[str, Any] | None
    """The new ``status.rollout`` (None without ``spec.rollout``)."""
    weights: dict[str, int]
    """Effective weights: what the HTTPRoute, the replica split and the status use."""
    mirror: bool = False
    """The stable variants mirror a share of their requests to the candidate."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


# ---- weights -------------------------------------------------------------------------------

def traffic_weights(variants: Iterable[str], traffic: Mapping[str, int] | None
                    ) -> dict[str, int]:
    """spec.traffic as weights: every variant in order with its weight in ``traffic`` (0 for
    the ones it does not name); without spec.traffic (None) the first variant takes 100, as
    ``parse_spec`` reads such a spec. The one place this is computed: the rollout
    (``spec_weights``), the builders (``spec_serving``) and the status (``variant_weights``,
    also for a spec that does not parse) all take it from here."""
    names = list(dict.fromkeys(variants))
    if traffic is None:
        traffic = {names[0]: 100} if names else {}
    return {v: int(traffic.get(v, 0)) for v in names}


def spec_weights(spec: ModelServiceSpec) -> dict[str, int]:
    """spec.traffic for every variant of a parsed spec (0 for the ones it does not name)."""
    return traffic_weights((v.name for v in spec.variants), spec.traffic)


def step_weights(spec: ModelServiceSpec, candidate: str, weight: int) -> dict[str, int]:
    """``weight`` percent to ``candidate``, the rest split over the stable variants in the
    proportions of spec.traffic (largest remainder, so the weights sum to 100)."""
    out = dict.fromkeys(spec_weights(spec), 0)
    out[candidate] = weight
    stable = [(v, w) for v, w in spec.traffic.items() if w > 0 and v != candidate]
    total = sum(w for _, w in stable)
    rest = 100 - weight
    if not stable or total == 0:
        out[candidate] = 100
        return out
    shares = [(v, rest * w / total) for v, w in stable]
    floors = {v: int(s) for v, s in shares}
    left = rest - sum(floors.values())
    for v, _ in sorted(shares, key=lambda vs: (-(vs[1] - int(vs[1])), vs[0]))[:left]:
        floors[v] += 1
    out.update(floors)
    return out


def effective_weights(spec: ModelServiceSpec,
                      rollout_status: RolloutStatus | Mapping[str, Any] | None,
                      readiness: Mapping[str, Readiness]) -> dict[str, int]:
    """The weights to serve: spec.traffic, then the rollout's step or promotion. A candidate
    without a ready pod never gets traffic (the spec's weights apply instead)."""
    base = spec_weights(spec)
    r = spec.rollout
    st = RolloutStatus.of(rollout_status)
    if r is None or st is None:
        return base
    if readiness.get(r.candidate, Readiness()).ready < 1:
        return base
    if st.phase == PROMOTED:
        return step_weights(spec, r.candidate, 100)
    step = st.step or 0
    if st.phase in (PROGRESSING, PAUSED) and 1 <= step <= len(r.steps):
        return step_weights(spec, r.candidate, r.steps[step - 1])
    return base


def weights_text(weights: Mapping[str, int]) -> str:
    return ",".join(f"{v}={w}" for v, w in weights.items())


# ---- time ----------------------------------------------------------------------------------

def _parse(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def seconds_since(stamp: Any, now: datetime) -> float | None:
    moment = _parse(stamp)
    return None if moment is None else (now - moment).total_seconds()


def identity(spec: ModelServiceSpec) -> tuple[str, str]:
    """(candidate, stable traffic): a change of either starts a new rollout."""
    assert spec.rollout is not None
    stable = weights_text({v: w for v, w in spec.traffic.items() if w > 0})
    return spec.rollout.candidate, stable


def analysis_due(spec: ModelServiceSpec, prior: RolloutStatus | Mapping[str, Any] | None,
                 now: datetime) -> float | None:
    """Seconds since the current step started when an analysis is due now, else None."""
    r = spec.rollout
    st = RolloutStatus.of(prior)
    if r is None or st is None or (st.candidate, st.stable) != identity(spec):
        return None
    if not (st.phase == PROGRESSING or (st.phase == PAUSED and st.reason == METRICS_UNAVAILABLE)
            or (st.phase == PAUSED and st.reason == SHARE_NOT_REPRESENTABLE and st.step)):
        return None
    last = seconds_since(st.last_analysis.time if st.last_analysis else None, now)
    if last is not None and last < r.analysis.interval_seconds:
        return None
    return max(0.0, seconds_since(st.step_started_at, now) or 0.0)


# ---- gates ---------------------------------------------------------------------------------

def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _gate(name: str, value: float | None, threshold: float, comparison: str,
          candidate_p95_ms: float | Absent | None = ABSENT,
          stable_p95_ms: float | Absent | None = ABSENT) -> Gate:
    """A gate with its verdict (``passed`` None: no data); the p95s are the latency gate's."""
    passed = None if value is None else (
        value <= threshold if comparison == "<=" else value >= threshold)
    return Gate(name=name, value=value, threshold=threshold, comparison=comparison,
                candidate_p95_ms=candidate_p95_ms, stable_p95_ms=stable_p95_ms, passed=passed)


def _agreement_gate(value: float | None, samples: float | None, threshold: float,
                    level: float) -> Gate:
    """The agreement gate: passed when the low bound of the Wilson interval on ``value`` over
    ``samples`` comparisons is at or above ``threshold``, failed when the high bound is below
    it, undecided (``passed`` None with a value, and ``samples_needed``) in between; no data
    without a value or without its count. ``samples`` counts whole comparisons (rounded
    down: Prometheus's ``increase`` extrapolates)."""
    if value is None or samples is None:
        return Gate(name=GATE_AGREEMENT, value=None, threshold=threshold, comparison=">=",
                    passed=None)
    n = max(0, math.floor(samples))
    z = confidence.z_score(level)
    low, high = confidence.wilson(value, n, z)
    gate = Gate(name=GATE_AGREEMENT, value=_round(value), threshold=threshold,
                comparison=">=", samples=n, confidence=level, lower_bound=_round(low),
                upper_bound=_round(high), passed=confidence.decide(value, n, threshold, z))
    if gate.passed is None:
        gate.samples_needed = confidence.samples_needed(value, n, threshold, z)
    return gate


def undecided(g: Gate) -> bool:
    """A gate with a value that neither passed nor failed (the agreement gate's interval
    still holds its threshold)."""
    return present(g.passed) is None and present(g.value) is not None


def agreement_evidence(cand: VariantMetrics, reference: Reference, stable_weight: int
                       ) -> tuple[float | None, float | None]:
    """(agreement, comparisons) the agreement gate judges: the candidate's measurement. While
    the stable variant serves nothing (the 100% step) nothing new is mirrored and the window
    only holds a fading remainder of earlier comparisons, so the reference (the last
    measurement while the stable variant served) stands in; the window only when there is
    no reference with its count."""
    if stable_weight == 0 and reference.agreement is not None \
            and reference.agreement_samples is not None:
        return reference.agreement, reference.agreement_samples
    return cand.agreement, cand.agreement_samples


def evaluate(r: Rollout, sample: Sample, stable: str, stable_weight: int,
             reference: Reference) -> tuple[str, list[Gate], float]:
    """(verdict, gates, candidate requests in the step). Verdict ``Inconclusive`` (fewer than
    minRequests so far), else ``NoData`` (a gate has no value), else ``Failed`` (a gate is
    outside its threshold), else ``Undecided`` (the agreement gate's interval still holds its
    threshold: the step waits for more comparisons), else ``Passed``. While the stable variant
    serves nothing (the 100% step) its last measured p95 and agreement stand in (there is
    nothing new to compare)."""
    a = r.analysis
    cand = sample.variants.get(r.candidate, VariantMetrics())
    base = sample.variants.get(stable, VariantMetrics())
    requests = float(sample.step_requests.get(r.candidate, 0.0))
    stable_p95 = base.p95_ms
    if stable_weight == 0:
        stable_p95 = stable_p95 if stable_p95 is not None else reference.stable_p95_ms
    ratio = (cand.p95_ms / stable_p95 if cand.p95_ms is not None and stable_p95
             else None)
    gates = [
        _gate(GATE_LATENCY, _round(ratio), a.max_latency_ratio, "<=",
              candidate_p95_ms=_round(cand.p95_ms), stable_p95_ms=_round(stable_p95)),
        _gate(GATE_ERRORS, _round(cand.error_rate), a.max_error_rate, "<="),
    ]
    if a.min_agreement is not None:
        agreement, samples = agreement_evidence(cand, reference, stable_weight)
        gates.append(_agreement_gate(agreement, samples, a.min_agreement,
                                     a.agreement_confidence))
    if requests < r.min_requests:
        return "Inconclusive", gates, requests
    if any(present(g.value) is None for g in gates):
        return "NoData", gates, requests
    if any(g.passed is False for g in gates):
        return "Failed", gates, requests
    if any(undecided(g) for g in gates):
        return "Undecided", gates, requests
    return "Passed", gates, requests


def gate_text(g: Gate) -> str:
    """``latency 1.35 (threshold <= 1.2)``; the agreement gate adds its interval."""
    value = present(g.value)
    text = f"{g.name} {'no data' if value is None else value} " \
           f"(threshold {g.comparison} {g.threshold})"
    if g.samples is not None and value is not None:
        level = "" if g.confidence is None else f"{g.confidence * 100:g}% "
        text += f", {level}interval [{g.lower_bound}, {g.upper_bound}] over " \
                f"{g.samples} comparisons"
    return text


def undecided_text(g: Gate) -> str:
    """Why an undecided gate holds the step, and what moves it."""
    needed = present(g.samples_needed)
    more = (f"about {needed} more comparisons decide it if the agreement holds"
            if needed is not None else
            "not reachable: the agreement is at or too close to the threshold")
    return f"{gate_text(g)}: undecided, {more}"


# ---- the machine ---------------------------------------------------------------------------

def _fresh(spec: ModelServiceSpec, now: str) -> RolloutStatus:
    r = spec.rollout
    assert r is not None
    candidate, stable = identity(spec)
    return RolloutStatus(candidate=candidate, stable=stable, phase=PENDING, reason="",
                         message=f"waiting for a ready pod of the candidate {candidate}",
                         step=0, steps=list(r.steps), started_at=now, step_started_at=now,
                         failures=0, history=[])


class _Run:
    """One call of ``advance``: the status being built and the Events it produced."""

    def __init__(self, spec: ModelServiceSpec, st: RolloutStatus, now: datetime,
                 routed: bool = False) -> None:
        assert spec.rollout is not None
        self.spec = spec
        self.r: Rollout = spec.rollout
        self.st = st
        self.now = now
        self.routed = routed
        self.stamp = rfc3339(now)
        self.events: list[Event] = []

    @property
    def step(self) -> int:
        """The current step (``advance`` sets it before anything reads it)."""
        return self.st.step or 0

    def move(self, phase: str, reason: str, message: str, event: Event | None) -> None:
        changed = (self.st.phase, self.st.reason) != (phase, reason)
        self.st.phase, self.st.reason, self.st.message = phase, reason, message
        if changed:
            self.record(message)
        if event is not None and changed:
            self.events.append(event)

    def record(self, message: str) -> None:
        history = list(self.st.history or ())
        history.append(HistoryEntry(time=self.stamp, phase=self.st.phase, step=self.step,
                                    message=message))
        self.st.history = history[-HISTORY:]

    def enter_step(self, step: int) -> None:
        weight = self.r.steps[step - 1]
        self.st.step, self.st.step_started_at = step, self.stamp
        message = f"step {step}/{len(self.r.steps)}: candidate {self.r.candidate} at {weight}%"
        self.st.phase, self.st.reason, self.st.message = PROGRESSING, "", message
        self.record(message)
        self.events.append(("Normal", "RolloutStep", message))

    def try_enter(self, step: int) -> bool:
        """Enter ``step``, or (not routed, its weight not representable by the replica
        split: ``shares.plan``) hold before it; True when entered."""
        if not self.routed:
            plan = shares.plan(self.spec, step_weights(self.spec, self.r.candidate,
                                                       self.r.steps[step - 1]))
            if not plan.split.representable:
                message = (f"holding before step {step}/{len(self.r.steps)} (candidate "
                           f"{self.r.candidate} at {self.r.steps[step - 1]}%): "
                           f"{shares.explain(plan, would=True)}")
                self.move(PAUSED, SHARE_NOT_REPRESENTABLE, message,
                          ("Warning", "RolloutPaused", message))
                return False
        self.enter_step(step)
        return True

    def promote(self, why: str) -> None:
        message = f"candidate {self.r.candidate} promoted to 100%: {why}; make it the stable " \
                  "variant in spec.traffic and remove spec.rollout"
        self.move(PROMOTED, "", message, ("Normal", "RolloutPromoted", message))

    def roll_back(self, reason: str, why: str) -> None:
        message = f"candidate {self.r.candidate} rolled back to 0%: {why}"
        self.move(ROLLED_BACK, reason, message, ("Warning", "RolloutRolledBack", message))


def _action(run: _Run, action: str, readiness: Mapping[str, Readiness],
            spec: ModelServiceSpec) -> RolloutStatus:
    """Handle a one-shot action annotation; returns the (possibly replaced) status."""
    st = run.st
    verb = action.split("/", 1)[0]
    phase = st.phase
    if verb == "abort" and phase in ACTIVE:
        message = (f"aborted by annotation {ANNOTATION_ACTION}={action}; traffic back to "
                   "spec.traffic")
        run.move(ABORTED, "AbortedByUser", message, ("Warning", "RolloutAborted", message))
    elif verb == "promote" and phase in (*ACTIVE, ROLLED_BACK, ABORTED):
        if readiness.get(run.r.candidate, Readiness()).ready < 1:
            run.events.append(("Warning", "RolloutActionRefused",
                               f"{action}: the candidate {run.r.candidate} has no ready pod"))
        else:
            run.promote(f"by annotation {ANNOTATION_ACTION}={action}")
    elif verb == "retry" and phase in (ROLLED_BACK, ABORTED):
        fresh = _fresh(spec, run.stamp)
        fresh.history = st.history or []
        run.st = fresh
        run.record(f"retried by annotation {ANNOTATION_ACTION}={action}")
        run.events.append(("Normal", "RolloutRetried", f"rollout of {run.r.candidate} restarts"))
    else:
        run.events.append(("Warning", "RolloutActionIgnored",
                           f"{ANNOTATION_ACTION}={action}: not applicable in phase {phase}"
                           if verb in ACTIONS else
                           f"{ANNOTATION_ACTION}={action}: expected abort, promote or retry"))
    run.st.handled_action = action
    return run.st


def advance(spec: ModelServiceSpec, prior: RolloutStatus | Mapping[str, Any] | None,
            readiness: Mapping[str, Readiness], sample: Sample | None,
            annotations: Mapping[str, str], now: datetime, *, routed: bool = False
            ) -> Decision:
    """One step of the machine (see the module docstring). ``routed``: a gateway routes the
    weights exactly; without one a step the replica split cannot represent holds."""
    r = spec.rollout
    if r is None:
        return Decision(status=None, weights=spec_weights(spec))
    stamp = rfc3339(now)
    known = RolloutStatus.of(prior)
    if known is not None and (known.candidate, known.stable) == identity(spec):
        st = known if known is not prior else copy.deepcopy(known)  # never change the caller's
        st.steps = list(r.steps)
        st.step = min(st.step or 0, len(r.steps))
        run = _Run(spec, st, now, routed)
    else:
        run = _Run(spec, _fresh(spec, stamp), now, routed)
        run.record(f"rollout of {r.candidate} started")
        run.events.append(("Normal", "RolloutStarted",
                           f"rollout of {r.candidate} from {run.st.stable} in steps "
                           f"{'/'.join(map(str, r.steps))}"))
        if known is not None and known.handled_action:
            run.st.handled_action = known.handled_action

    action = annotations.get(ANNOTATION_ACTION)
    if action and action != run.st.handled_action:
        run.st = _action(run, action, readiness, spec)
    st = run.st
    cand = readiness.get(r.candidate, Readiness())
    requeue: float | None = None

    if st.phase in ACTIVE and cand.failure:
        run.roll_back("CandidateFailed", f"its pods cannot serve: {cand.failure}")
    paused = str(annotations.get(ANNOTATION_PAUSED, "")).lower() == "true"
    if st.phase in ACTIVE and paused:
        run.move(PAUSED, PAUSED_BY_USER,
                 f"paused by annotation {ANNOTATION_PAUSED}=true at step {run.step}",
                 ("Normal", "RolloutPaused", f"rollout of {r.candidate} paused by annotation"))
    elif st.phase == PAUSED and st.reason == PAUSED_BY_USER:
        st.step_started_at = stamp  # the interrupted step starts over
        if run.step >= 1:
            run.move(PROGRESSING, "", f"resumed at step {run.step}/{len(r.steps)}",
                     ("Normal", "RolloutResumed", f"rollout of {r.candidate} resumed"))
        else:
            run.move(PENDING, "", f"resumed; waiting for a ready pod of {r.candidate}",
                     ("Normal", "RolloutResumed", f"rollout of {r.candidate} resumed"))

    if st.phase == PENDING and cand.ready >= 1:
        st.failures = 0
        if not run.try_enter(1):
            requeue = r.analysis.interval_seconds
    elif st.phase == PAUSED and st.reason == SHARE_NOT_REPRESENTABLE and not run.step:
        if cand.ready < 1 or not run.try_enter(1):
            requeue = r.analysis.interval_seconds
    elif st.phase in (PROGRESSING, PAUSED) and st.reason != PAUSED_BY_USER:
        requeue = _progress(run, cand, sample)

    decision = Decision(status=run.st.to_dict(),
                        weights=effective_weights(spec, run.st, readiness),
                        events=run.events, requeue_after=requeue)
    decision.mirror = run.st.phase in ACTIVE
    return decision


def _progress(run: _Run, cand: Readiness, sample: Sample | None) -> float | None:
    """Analyse (when a sample was taken) and move to the next step or promote."""
    r, st, now = run.r, run.st, run.now
    a = r.analysis
    if cand.ready < 1:
        st.message = (f"step {run.step}: holding; the candidate {r.candidate} has no ready "
                      "pod, so it gets no traffic")
        return a.interval_seconds
    holding = st.message if st.reason == SHARE_NOT_REPRESENTABLE else None
    if sample is not None:
        _analyse(run, sample)
        if st.phase not in (PROGRESSING, PAUSED):
            return None
    held = st.phase == PAUSED and st.reason == SHARE_NOT_REPRESENTABLE
    if st.phase == PAUSED and not held:
        return a.interval_seconds
    elapsed = seconds_since(st.step_started_at, now) or 0.0
    last = st.last_analysis or Analysis()
    done = (elapsed >= r.step_seconds and last.verdict == "Passed"
            and (seconds_since(last.time, now) or 0.0) <= elapsed)
    if done:
        if run.step >= len(r.steps):
            run.promote(f"every gate held through {len(r.steps)} steps")
            return None
        if not run.try_enter(run.step + 1):
            return a.interval_seconds
        elapsed = 0.0
    elif held:  # the step's gates no longer pass: the hold stands, its message too
        st.message = holding or st.message
        return a.interval_seconds
    if elapsed >= r.step_seconds and last.verdict == "Undecided":
        st.message = (f"step {run.step}/{len(r.steps)}: duration reached; holding for a "
                      f"decided analysis: {last.message}")
    elif elapsed >= r.step_seconds:
        st.message = (f"step {run.step}/{len(r.steps)}: duration reached; waiting for a "
                      f"passing analysis with at least {r.min_requests} candidate requests")
    since_last = seconds_since(last.time, now)
    waits = [x for x in (a.interval_seconds - (a.interval_seconds if since_last is None
                                                 else since_last),
                         r.step_seconds - elapsed) if x > 0]
    return max(1.0, min(waits)) if waits else a.interval_seconds


def _analyse(run: _Run, sample: Sample) -> None:
    r, st, spec = run.r, run.st, run.spec
    stable = max(spec.stable_variants, key=lambda v: spec.traffic[v]) \
        if spec.stable_variants else r.candidate
    weights = step_weights(spec, r.candidate, r.steps[run.step - 1])
    reference = copy.copy(st.reference) if st.reference is not None else Reference()
    record = Analysis(time=run.stamp, step=run.step)
    if sample.error is not None:
        record.verdict, record.message, record.gates = "NoData", sample.error, []
        st.last_analysis = record
        run.move(PAUSED, METRICS_UNAVAILABLE,
                 f"metrics unavailable, holding step {run.step} (never promotes blind): "
                 f"{sample.error}",
                 ("Warning", "RolloutPaused", f"metrics unavailable: {sample.error}"))
        return
    verdict, gates, requests = evaluate(r, sample, stable, weights.get(stable, 0), reference)
    record.verdict, record.gates = verdict, gates
    record.requests, record.min_requests = round(requests), r.min_requests
    st.last_analysis = record
    base = sample.variants.get(stable, VariantMetrics())
    cand = sample.variants.get(r.candidate, VariantMetrics())
    if base.p95_ms is not None:
        reference.stable_p95_ms = _round(base.p95_ms)
    agreement, samples = agreement_evidence(cand, reference, weights.get(stable, 0))
    if agreement is not None and samples is not None:
        reference.agreement = _round(agreement)
        reference.agreement_samples = max(0, math.floor(samples))
    if reference.to_dict():
        st.reference = reference
    if verdict == "NoData":
        missing = ", ".join(f"{g.name}" for g in gates if g.value is None)
        run.move(PAUSED, METRICS_UNAVAILABLE,
                 f"no data for gate(s) {missing} at step {run.step} (never promotes blind)",
                 ("Warning", "RolloutPaused", f"no data for gate(s) {missing}"))
        return
    if st.phase == PAUSED and st.reason == METRICS_UNAVAILABLE:
        st.step_started_at = run.stamp  # time without metrics does not count
        run.move(PROGRESSING, "", f"metrics are back; step {run.step}/{len(r.steps)}",
                 ("Normal", "RolloutResumed", "metrics are back"))
    if verdict == "Inconclusive":
        st.message = (f"step {run.step}/{len(r.steps)}: {round(requests)} of "
                      f"{r.min_requests} candidate requests so far")
        return
    if verdict == "Passed":
        st.message = f"step {run.step}/{len(r.steps)}: every gate holds"
        return
    if verdict == "Undecided":  # neither a pass nor a failure: the step holds
        record.message = "; ".join(undecided_text(g) for g in gates if undecided(g))
        st.message = f"step {run.step}/{len(r.steps)}: holding: {record.message}"
        return
    failed = [g for g in gates if g.passed is False]
    failures = (st.failures or 0) + 1
    st.failures = failures
    text = "; ".join(gate_text(g) for g in failed)
    record.message = text
    if failures > r.analysis.failure_limit:
        run.roll_back("AnalysisFailed", f"gate {failed[0].name} failed "
                      f"{failures} times (failureLimit {r.analysis.failure_limit}): {text}")
        return
    st.message = (f"step {run.step}: analysis failed ({failures}/"
                  f"{r.analysis.failure_limit} tolerated): {text}")
    run.events.append(("Warning", "AnalysisFailed", st.message))
