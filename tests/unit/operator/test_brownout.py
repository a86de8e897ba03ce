"""The brownout state machine: every transition, the precedence of a rollout, a variant
without ready pods and unreadable metrics, the spec checks, the HPA reading and the
``AutoscalingBlind`` condition."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from msv_operator import brownout as bo
from msv_operator import status as s
from msv_operator.rollout import Readiness, Sample, VariantMetrics
from msv_operator.spec import InvalidSpecError, parse_spec

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
READY = {"baseline": Readiness(2), "int8": Readiness(1)}
AT_MAX = bo.HpaState(current=2, desired=2, min_replicas=1, max_replicas=2)
BELOW_MAX = bo.HpaState(current=1, desired=1, min_replicas=1, max_replicas=2)


def body(brownout: dict[str, Any] | None = None, traffic: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    b = {"variant": "int8", "latencyObjectiveMs": 100, "engageAfter": "60s",
         "releaseAfter": "120s"} if brownout is None else brownout
    spec: dict[str, Any] = {
        "model": {"uri": "s3://m/x", "framework": "transformers", "task": "text-classification"},
        "variants": [{"name": "baseline"}, {"name": "int8"}],
        "traffic": traffic or [{"variant": "baseline", "weight": 100}],
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "brownout": b}, **extra}
    return {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}, "spec": spec}


SPEC = parse_spec(body())
BASE = {"baseline": 100, "int8": 0}


def p95(ms: float | None) -> Sample:
    return Sample(variants={"baseline": VariantMetrics(p95_ms=ms), "int8": VariantMetrics()})


class Machine:
    """Feeds the machine pass by pass, carrying its status like the operator does."""

    def __init__(self, spec: Any = SPEC) -> None:
        self.spec = spec
        self.status: dict[str, Any] | None = None
        self.events: list[tuple[str, str, str]] = []
        self.weights: dict[str, int] = {}

    def at(self, seconds: float, sample: Sample | None, hpa: bo.HpaState | None = AT_MAX,
           readiness: dict[str, Readiness] = READY, rollout: dict[str, Any] | None = None,
           weights: dict[str, int] = BASE) -> dict[str, Any]:
        d = bo.advance(self.spec, self.status, weights, rollout, hpa, readiness, sample,
                       T0 + timedelta(seconds=seconds))
        assert d.status is not None
        self.status, self.weights = d.status, d.weights
        self.events += d.events
        return d.status

    def reasons(self) -> list[str]:
        return [e[1] for e in self.events]


def engaged(m: Machine) -> Machine:
    m.at(0, p95(250))
    m.at(60, p95(250))
    assert m.status is not None and m.status["phase"] == bo.ENGAGED
    return m


# ---- spec ----------------------------------------------------------------------------------

def test_defaults_and_fields() -> None:
    b = parse_spec(body({"variant": "int8", "latencyObjectiveMs": 250})).autoscaling
    assert b is not None and b.brownout == bo.Brownout(variant="int8", objective_ms=250.0)
    assert (b.brownout.max_share, b.brownout.engage_seconds, b.brownout.release_seconds,
            b.brownout.release_below, b.brownout.interval_seconds,
            b.brownout.window_seconds) == (50, 60.0, 120.0, 0.8, 15.0, 30.0)


@pytest.mark.parametrize(("brownout", "traffic", "field"), [
    ({"variant": "fp16", "latencyObjectiveMs": 100}, None, "brownout.variant"),
    ({"variant": "baseline", "latencyObjectiveMs": 100}, None, "brownout.variant"),
    ({"variant": "int8", "latencyObjectiveMs": 100},
     [{"variant": "baseline", "weight": 50}, {"variant": "int8", "weight": 50}],
     "brownout.variant"),
    ({"variant": "int8"}, None, "brownout.latencyObjectiveMs"),
    ({"variant": "int8", "latencyObjectiveMs": 0}, None, "brownout.latencyObjectiveMs"),
    ({"variant": "int8", "latencyObjectiveMs": 100, "maxShare": 0}, None, "brownout.maxShare"),
    ({"variant": "int8", "latencyObjectiveMs": 100, "maxShare": 101}, None,
     "brownout.maxShare"),
    ({"variant": "int8", "latencyObjectiveMs": 100, "step": 0}, None, "brownout.step"),
    ({"variant": "int8", "latencyObjectiveMs": 100, "releaseBelow": 1.5}, None,
     "brownout.releaseBelow"),
    ({"variant": "int8", "latencyObjectiveMs": 100, "engageAfter": "soon"}, None,
     "brownout.engageAfter"),
])
def test_invalid_brownout_names_the_field(brownout: dict[str, Any],
                                          traffic: list[dict[str, Any]] | None,
                                          field: str) -> None:
    with pytest.raises(InvalidSpecError, match=f"spec.autoscaling.{field}"):
        parse_spec(body(brownout, traffic))


def test_a_variant_with_some_but_not_the_most_weight_may_be_the_brownout_variant() -> None:
    spec = parse_spec(body(traffic=[{"variant": "baseline", "weight": 80},
                                    {"variant": "int8", "weight": 20}]))
    assert spec.stable == "baseline"
    b = spec.autoscaling.brownout if spec.autoscaling else None
    assert b is not None
    assert bo.shifted_weights(spec, b, 10) == {"baseline": 80, "int8": 20}  # never less
    assert bo.shifted_weights(spec, b, 50) == {"baseline": 50, "int8": 50}


def test_without_brownout_the_weights_pass_through() -> None:
    plain = body()
    del plain["spec"]["autoscaling"]["brownout"]
    d = bo.advance(parse_spec(plain), None, BASE, None, AT_MAX, READY, p95(900), T0)
    assert d.status is None and d.weights == BASE and d.events == []


# ---- transitions ---------------------------------------------------------------------------

def test_within_objective_stays_inactive() -> None:
    m = Machine()
    st = m.at(0, p95(80))
    assert (st["phase"], st["reason"], st["share"]) == (bo.INACTIVE, bo.WITHIN_OBJECTIVE, 0)
    assert st["p95Ms"] == 80 and st["objectiveMs"] == 100 and st["releaseBelowMs"] == 80
    assert m.weights == BASE and m.events == []
    assert m.at(15, p95(None))["reason"] == bo.WITHIN_OBJECTIVE  # no requests: no overload


def test_over_objective_below_max_replicas_leaves_it_to_the_hpa() -> None:
    m = Machine()
    st = m.at(0, p95(250), hpa=BELOW_MAX)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.SCALING_OUT)
    assert "pressureSince" not in st
    st = m.at(90, p95(250), hpa=BELOW_MAX)
    assert st["phase"] == bo.INACTIVE and m.weights == BASE
    assert m.at(100, p95(250), hpa=None)["reason"] == bo.SCALING_OUT  # no HPA yet


def test_engages_only_after_the_sustained_window_at_max_replicas() -> None:
    m = Machine()
    st = m.at(0, p95(250))
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.OVERLOADED)
    assert st["pressureSince"] == "2026-01-01T12:00:00Z"
    assert m.at(45, p95(250))["phase"] == bo.INACTIVE and m.weights == BASE
    st = m.at(60, p95(250))
    assert (st["phase"], st["reason"], st["share"]) == (bo.ENGAGED, bo.OVERLOADED, 50)
    assert st["since"] == "2026-01-01T12:01:00Z" and "pressureSince" not in st
    assert m.weights == {"baseline": 50, "int8": 50}
    assert m.reasons() == ["BrownoutEngaged"]
    assert m.events[0][0] == "Warning" and "250" in m.events[0][2]


def test_steps_add_share_per_window_of_continued_overload_up_to_max_share() -> None:
    m = Machine(parse_spec(body({"variant": "int8", "latencyObjectiveMs": 100,
                                 "engageAfter": "60s", "maxShare": 50, "step": 20})))
    m.at(0, p95(250))
    st = m.at(60, p95(250))
    assert (st["phase"], st["share"]) == (bo.ENGAGED, 20)
    assert m.weights == {"baseline": 80, "int8": 20}
    st = m.at(70, p95(250))  # the next step's window starts
    assert st["share"] == 20 and st["pressureSince"] == "2026-01-01T12:01:10Z"
    st = m.at(130, p95(250))
    assert st["share"] == 40 and m.weights == {"baseline": 60, "int8": 40}
    st = m.at(135, p95(90))  # below the objective, above the release line: no further step
    assert "pressureSince" not in st and st["share"] == 40
    m.at(140, p95(250))
    assert m.at(200, p95(250))["share"] == 50  # capped at maxShare
    assert m.at(300, p95(250))["share"] == 50
    assert m.reasons() == ["BrownoutEngaged", "BrownoutStep", "BrownoutStep"]
    st = m.at(310, p95(40))
    assert st["reason"] == bo.RECOVERING and "pressureSince" not in st
    st = m.at(430, p95(40))
    assert (st["phase"], st["share"]) == (bo.INACTIVE, 0) and m.weights == BASE


def test_an_interrupted_overload_starts_the_window_over() -> None:
    m = Machine()
    m.at(0, p95(250))
    m.at(30, p95(90))
    assert "pressureSince" not in (m.status or {})
    m.at(40, p95(250))
    assert m.at(90, p95(250))["phase"] == bo.INACTIVE  # 50 s since the window restarted
    assert m.at(100, p95(250))["phase"] == bo.ENGAGED


def test_engaged_holds_between_the_objective_and_the_release_line() -> None:
    m = engaged(Machine())
    st = m.at(80, p95(90))  # below the objective, above 0.8 x objective
    assert (st["phase"], st["reason"]) == (bo.ENGAGED, bo.OVERLOADED)
    assert "calmSince" not in st and m.weights == {"baseline": 50, "int8": 50}


def test_releases_after_the_calm_window_below_the_release_line() -> None:
    m = engaged(Machine())
    st = m.at(75, p95(60))
    assert (st["phase"], st["reason"]) == (bo.ENGAGED, bo.RECOVERING)
    assert m.at(150, p95(70))["phase"] == bo.ENGAGED
    st = m.at(195, p95(50))
    assert (st["phase"], st["reason"], st["share"]) == (bo.INACTIVE, bo.WITHIN_OBJECTIVE, 0)
    assert m.weights == BASE
    assert m.reasons() == ["BrownoutEngaged", "BrownoutReleased"]
    assert m.events[-1][0] == "Normal"


def test_a_spike_while_recovering_restarts_the_calm_window() -> None:
    m = engaged(Machine())
    m.at(75, p95(60))
    m.at(150, p95(120))
    assert "calmSince" not in (m.status or {}) and m.status["reason"] == bo.OVERLOADED
    m.at(160, p95(60))
    assert m.at(270, p95(60))["phase"] == bo.ENGAGED
    assert m.at(280, p95(60))["phase"] == bo.INACTIVE


def test_never_weight_to_a_variant_without_ready_pods() -> None:
    m = Machine()
    not_ready = {"baseline": Readiness(2), "int8": Readiness(0)}
    st = m.at(0, p95(250), readiness=not_ready)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.VARIANT_NOT_READY)
    st = m.at(120, p95(250), readiness=not_ready)
    assert st["phase"] == bo.INACTIVE and m.weights == BASE and st["share"] == 0
    assert m.reasons() == ["BrownoutUnavailable"]  # once, not every pass
    # the overload was tracked meanwhile: once a pod is ready, it engages at the next sample
    assert m.at(125, p95(250))["phase"] == bo.ENGAGED


def test_engaged_releases_when_the_variant_loses_its_ready_pods_or_fails() -> None:
    m = engaged(Machine())
    st = m.at(70, None, readiness={"baseline": Readiness(2), "int8": Readiness(0)})
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.VARIANT_NOT_READY)
    assert m.weights == BASE and m.reasons()[-1] == "BrownoutReleased"
    failing = {"baseline": Readiness(2), "int8": Readiness(1, "model server exited with code 4")}
    m2 = engaged(Machine())
    st = m2.at(70, p95(250), readiness=failing)
    assert st["reason"] == bo.VARIANT_NOT_READY and "exited with code 4" in st["message"]
    assert m2.weights == BASE


def test_metrics_unavailable_holds_the_phase_and_its_weights() -> None:
    m = engaged(Machine())
    st = m.at(75, Sample(error="Prometheus at x is unreachable"))
    assert (st["phase"], st["reason"]) == (bo.ENGAGED, bo.METRICS_UNAVAILABLE)
    assert m.weights == {"baseline": 50, "int8": 50}  # nothing moves blind
    assert st["metricsError"] == "Prometheus at x is unreachable"
    assert m.reasons()[-1] == "BrownoutMetricsUnavailable"
    m.at(90, Sample(error="Prometheus at x is unreachable"))
    assert m.reasons().count("BrownoutMetricsUnavailable") == 1
    assert m.at(600, None)["phase"] == bo.ENGAGED  # no measurement: no release either
    st = m.at(610, p95(50))  # back: the calm window starts now, not before the gap
    assert (st["reason"], "metricsError" in st) == (bo.RECOVERING, False)
    inactive = Machine()
    inactive.at(0, p95(250))
    st = inactive.at(30, Sample(error="down"))
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.METRICS_UNAVAILABLE)
    assert "pressureSince" not in st  # a blind gap never counts as sustained overload
    assert inactive.at(70, p95(250))["phase"] == bo.INACTIVE


def test_no_measurement_in_a_pass_holds_the_state() -> None:
    m = Machine()
    m.at(0, p95(250))
    st = m.at(300, None)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.OVERLOADED)


@pytest.mark.parametrize("phase", ["Pending", "Progressing", "Paused", "Promoted"])
def test_an_active_or_promoted_rollout_takes_precedence(phase: str) -> None:
    spec = parse_spec(body(rollout={"candidate": "int8"}))
    rollout_weights = {"baseline": 75, "int8": 25}
    m = engaged(Machine(spec))
    st = m.at(70, p95(250), rollout={"phase": phase}, weights=rollout_weights)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.ROLLOUT_ACTIVE)
    assert m.weights == rollout_weights and m.reasons()[-1] == "BrownoutReleased"
    st = m.at(300, p95(250), rollout={"phase": phase}, weights=rollout_weights)
    assert st["phase"] == bo.INACTIVE and m.weights == rollout_weights


def test_a_rolled_back_rollout_lets_brownout_act() -> None:
    spec = parse_spec(body(rollout={"candidate": "int8"}))
    m = Machine(spec)
    m.at(0, p95(250), rollout={"phase": "RolledBack"})
    assert m.at(60, p95(250), rollout={"phase": "RolledBack"})["phase"] == bo.ENGAGED


def test_a_new_brownout_variant_or_stable_variant_starts_fresh() -> None:
    m = engaged(Machine())
    three = body({"variant": "fp16", "latencyObjectiveMs": 100})
    three["spec"]["variants"].append({"name": "fp16"})
    d = bo.advance(parse_spec(three), m.status, {"baseline": 100, "int8": 0, "fp16": 0}, None,
                   AT_MAX, {"fp16": Readiness(1)}, None, T0 + timedelta(seconds=70))
    assert d.status is not None and d.status["phase"] == bo.INACTIVE
    assert d.status["variant"] == "fp16" and d.weights["fp16"] == 0


# ---- HPAs and the AutoscalingBlind condition -----------------------------------------------

def hpa(current: int, maximum: int, blind: bool = False) -> dict[str, Any]:
    conditions = [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}]
    conditions.append(
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "unable to get metric model_server_inflight_requests"} if blind else
        {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"})
    return {"spec": {"minReplicas": 1, "maxReplicas": maximum},
            "status": {"currentReplicas": current, "desiredReplicas": current,
                       "conditions": conditions}}


def test_hpa_state_reads_bounds_replicas_and_failed_metrics() -> None:
    assert bo.hpa_state(hpa(2, 2)) == AT_MAX
    blind = bo.hpa_state(hpa(1, 2, blind=True))
    assert blind.blind is not None and blind.blind.startswith("FailedGetPodsMetric: unable")
    assert bo.hpa_state({"spec": {"maxReplicas": 3}}) == bo.HpaState(0, 0, 1, 3)


def cond(out: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in out["conditions"] if c["type"] == type_)


def test_autoscaling_blind_condition_from_hpas_and_prometheus() -> None:
    deps = {"baseline": {"spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}},
            "int8": {"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1}}}
    fine = {"baseline": bo.hpa_state(hpa(2, 2)), "int8": bo.hpa_state(hpa(1, 2))}
    out = s.compute_status(body(), deployments=deps, pods=[], now="2026-01-01T12:00:00Z",
                           observed_generation=1, hpas=fine)
    c = cond(out, s.AUTOSCALING_BLIND)
    assert (c["status"], c["reason"]) == ("False", "MetricsAvailable")
    assert out["variants"][0]["maxReplicas"] == 2 and out["variants"][0]["minReplicas"] == 1
    assert out["variants"][0]["desiredReplicas"] == 2
    assert out["replicaCounts"] == "baseline=2/2,int8=1/1"

    blind_hpa = {**fine, "int8": bo.hpa_state(hpa(1, 2, blind=True))}
    out = s.compute_status(body(), deployments=deps, pods=[], now="2026-01-01T12:00:00Z",
                           observed_generation=1, hpas=blind_hpa)
    c = cond(out, s.AUTOSCALING_BLIND)
    assert (c["status"], c["reason"]) == ("True", "HPAMetricsUnavailable")
    assert "variant int8" in c["message"] and "holds its size" in c["message"]
    assert cond(out, "Ready")["status"] == "True"  # information, not a failure

    m = engaged(Machine())
    m.at(75, Sample(error="Prometheus at x is unreachable"))
    out = s.compute_status(body(), deployments=deps, pods=[], now="2026-01-01T12:00:00Z",
                           observed_generation=1, hpas=fine, brownout=m.status)
    c = cond(out, s.AUTOSCALING_BLIND)
    assert (c["status"], c["reason"]) == ("True", "PrometheusUnavailable")
    assert "holds Engaged" in c["message"] and "unreachable" in c["message"]
    assert out["brownout"]["phase"] == bo.ENGAGED
    assert cond(out, "Stalled")["status"] == "False"

    fixed = body()
    del fixed["spec"]["autoscaling"]
    out = s.compute_status(fixed, deployments=deps, pods=[], now="2026-01-01T12:00:00Z",
                           observed_generation=1)
    assert s.AUTOSCALING_BLIND not in [c["type"] for c in out["conditions"]]


# ---- the operator's choice (no spec variant) -------------------------------------------------

AUTO = {"latencyObjectiveMs": 100, "engageAfter": "60s", "releaseAfter": "120s"}
THREE_READY = {"baseline": Readiness(2), "int8": Readiness(1), "fp16": Readiness(1),
               "pruned": Readiness(1)}


def auto(**brownout: Any) -> Any:
    b = body({**AUTO, **brownout})
    b["spec"]["variants"] += [{"name": "fp16"}, {"name": "pruned"}]
    return parse_spec(b)


def standing(pareto: str | None, cost: float | None, p95_ms: float | None = 50.0,
             agreement: float | None = 0.99, price: float | None = None) -> bo.Standing:
    return bo.Standing(pareto=pareto, p95_ms=p95_ms, cost_per_1k=cost, agreement=agreement,
                       price_per_pod=price)


# int8 and fp16 on the frontier (fp16 cheaper per 1,000 requests), pruned dominated
MEASURED = {"baseline": standing("frontier", 0.05, 120.0, 1.0),
            "int8": standing("frontier", 0.02, 40.0, 0.99),
            "fp16": standing("frontier", 0.01, 60.0, 0.97),
            "pruned": standing("dominated", 0.03, 70.0, 0.90)}


class AutoMachine(Machine):
    def __init__(self, spec: Any, standings: dict[str, bo.Standing]) -> None:
        super().__init__(spec)
        self.standings = standings

    def at(self, seconds: float, sample: Sample | None, hpa: bo.HpaState | None = AT_MAX,
           readiness: dict[str, Readiness] = THREE_READY,
           rollout: dict[str, Any] | None = None,
           weights: dict[str, int] | None = None) -> dict[str, Any]:
        d = bo.advance(self.spec, self.status, weights or {**BASE, "fp16": 0, "pruned": 0},
                       rollout, hpa, readiness, sample, T0 + timedelta(seconds=seconds),
                       standings=self.standings)
        assert d.status is not None
        self.status, self.weights = d.status, d.weights
        self.events += d.events
        return d.status


def test_without_a_variant_the_candidates_are_every_non_stable_variant_in_order() -> None:
    b = auto().autoscaling.brownout
    assert b.variant is None and b.candidates == ("int8", "fp16", "pruned")
    assert b.min_agreement is None
    listed = auto(candidates=["pruned", "int8"], minAgreement=0.95).autoscaling.brownout
    assert listed.candidates == ("pruned", "int8") and listed.min_agreement == 0.95
    assert auto(minAgreement=0).autoscaling.brownout.min_agreement is None  # 0: no floor


def test_the_choice_is_the_cheapest_per_1k_requests_on_the_frontier() -> None:
    b = auto().autoscaling.brownout
    c = bo.choose(b, THREE_READY, MEASURED)
    assert (c.variant, c.chosen_by) == ("fp16", bo.CHOSEN_BY_FRONTIER)
    assert "lowest cost per 1,000 requests ($0.01, p95 60 ms) of int8, fp16" in c.why
    # equal cost: the lower p95 wins; equal both: the first listed
    tie = {**MEASURED, "int8": standing("frontier", 0.01, 40.0)}
    assert bo.choose(b, THREE_READY, tie).variant == "int8"
    same = {**MEASURED, "int8": standing("frontier", 0.01, 60.0)}
    assert bo.choose(b, THREE_READY, same).variant == "int8"
    # a frontier variant without a ready pod is never chosen
    no_fp16 = {**THREE_READY, "fp16": Readiness(0)}
    assert bo.choose(b, no_fp16, MEASURED).variant == "int8"
    # candidates limit the choice
    only = auto(candidates=["pruned", "int8"]).autoscaling.brownout
    assert bo.choose(only, THREE_READY, MEASURED).variant == "int8"


def test_the_agreement_floor_excludes_unmeasured_and_low_agreement() -> None:
    b = auto(minAgreement=0.98).autoscaling.brownout
    c = bo.choose(b, THREE_READY, MEASURED)
    assert (c.variant, c.chosen_by) == ("int8", bo.CHOSEN_BY_FRONTIER)  # fp16: 0.97
    unmeasured = {k: standing("unmeasured", None, agreement=None) for k in MEASURED}
    none = bo.choose(b, THREE_READY, unmeasured)
    assert none.variant is None and not none.not_ready
    assert "int8: agreement not measured below minAgreement 0.98" in none.why

    m = AutoMachine(auto(minAgreement=0.98), unmeasured)
    st = m.at(0, p95(250))
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.NO_ELIGIBLE_VARIANT)
    assert "variant" not in st and "minAgreement 0.98" in st["choice"]
    st = m.at(120, p95(250))
    assert st["phase"] == bo.INACTIVE and m.weights["baseline"] == 100
    assert m.reasons() == ["BrownoutUnavailable"]
    m.standings = MEASURED  # measured now: it engages at once (the overload was tracked)
    st = m.at(130, p95(250))
    assert (st["phase"], st["variant"], st["chosenBy"]) == (bo.ENGAGED, "int8", "frontier")


def test_engaging_names_the_chosen_variant_and_why() -> None:
    m = AutoMachine(auto(), MEASURED)
    st = m.at(0, p95(250))
    assert (st["phase"], st["variant"], st["chosenBy"]) == (bo.INACTIVE, "fp16", "frontier")
    st = m.at(60, p95(250))
    assert (st["phase"], st["share"], st["variant"]) == (bo.ENGAGED, 50, "fp16")
    assert m.weights == {"baseline": 50, "int8": 0, "fp16": 50, "pruned": 0}
    severity, reason, message = m.events[-1]
    assert (severity, reason) == ("Warning", "BrownoutEngaged")
    assert "50% of the traffic goes to fp16" in message
    assert "fp16 chosen by frontier: on the Pareto frontier" in message


def test_the_choice_is_held_while_engaged_and_made_again_for_the_next_engagement() -> None:
    m = AutoMachine(auto(), MEASURED)
    m.at(0, p95(250))
    m.at(60, p95(250))
    # while engaged, int8 becomes the cheapest: the engagement keeps fp16
    m.standings = {**MEASURED, "int8": standing("frontier", 0.001, 40.0)}
    st = m.at(75, p95(250))
    assert (st["phase"], st["variant"]) == (bo.ENGAGED, "fp16")
    assert m.weights["fp16"] == 50 and m.weights["int8"] == 0
    m.at(80, p95(40))
    st = m.at(200, p95(40))  # released: traffic back from fp16
    assert (st["phase"], st["variant"]) == (bo.INACTIVE, "fp16")
    assert "traffic back from fp16" in m.events[-1][2]
    st = m.at(210, p95(250))  # inactive: chosen again
    assert (st["variant"], st["chosenBy"]) == ("int8", "frontier")
    st = m.at(270, p95(250))
    assert (st["phase"], st["variant"]) == (bo.ENGAGED, "int8")
    assert m.weights == {"baseline": 50, "int8": 50, "fp16": 0, "pruned": 0}
    assert m.reasons() == ["BrownoutEngaged", "BrownoutReleased", "BrownoutEngaged"]
    assert "goes to int8" in m.events[-1][2]


def test_a_held_variant_that_loses_its_pods_releases_then_another_is_chosen() -> None:
    m = AutoMachine(auto(), MEASURED)
    m.at(0, p95(250))
    m.at(60, p95(250))
    lost = {**THREE_READY, "fp16": Readiness(0)}
    st = m.at(70, p95(250), readiness=lost)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.VARIANT_NOT_READY)
    assert m.reasons()[-1] == "BrownoutReleased"
    st = m.at(75, p95(250), readiness=lost)
    assert (st["variant"], st["phase"]) == ("int8", bo.INACTIVE)


def test_a_held_variant_no_longer_a_candidate_starts_afresh() -> None:
    m = AutoMachine(auto(), MEASURED)
    m.at(0, p95(250))
    m.at(60, p95(250))
    d = bo.advance(auto(candidates=["int8"]), m.status, BASE, None, AT_MAX, THREE_READY,
                   None, T0 + timedelta(seconds=70), standings=MEASURED)
    assert d.status is not None and d.status["phase"] == bo.INACTIVE
    assert d.status["variant"] == "int8" and d.weights == BASE


def test_fallback_when_nothing_eligible_is_on_the_frontier() -> None:
    b = auto().autoscaling.brownout
    nothing = bo.choose(b, THREE_READY, {})
    assert (nothing.variant, nothing.chosen_by) == ("int8", bo.CHOSEN_BY_FALLBACK)
    assert "first listed of int8, fp16, pruned" in nothing.why
    priced = {"int8": standing("unmeasured", None, price=0.8),
              "fp16": standing("unmeasured", None, price=1.2),
              "pruned": standing("unmeasured", None, price=0.4)}
    c = bo.choose(b, THREE_READY, priced)
    assert (c.variant, c.chosen_by) == ("pruned", bo.CHOSEN_BY_FALLBACK)
    assert "lowest price per pod ($0.4/h)" in c.why
    # a dominated variant comes after those not known to be worse
    dominated = {**priced, "pruned": standing("dominated", 0.03, price=0.4)}
    assert bo.choose(b, THREE_READY, dominated).variant == "int8"
    # the first ready one
    assert bo.choose(b, {**THREE_READY, "int8": Readiness(0)}, {}).variant == "fp16"
    m = AutoMachine(auto(), {})
    m.at(0, p95(250))
    st = m.at(60, p95(250))
    assert (st["phase"], st["variant"], st["chosenBy"]) == (bo.ENGAGED, "int8", "fallback")
    assert "int8 chosen by fallback" in m.events[-1][2]


def test_no_ready_candidate_is_variant_not_ready() -> None:
    m = AutoMachine(auto(), MEASURED)
    none_ready = {"baseline": Readiness(2), "int8": Readiness(0),
                  "fp16": Readiness(1, "model server exited with code 4"),
                  "pruned": Readiness(0)}
    st = m.at(0, p95(250), readiness=none_ready)
    assert (st["phase"], st["reason"]) == (bo.INACTIVE, bo.VARIANT_NOT_READY)
    assert "fp16: model server exited with code 4" in st["message"]
    assert m.reasons() == ["BrownoutUnavailable"]
    st = m.at(60, p95(250), readiness=none_ready)
    assert st["phase"] == bo.INACTIVE
    st = m.at(65, p95(250))  # a candidate is ready: the tracked overload engages
    assert (st["phase"], st["variant"]) == (bo.ENGAGED, "fp16")


def test_an_explicit_variant_is_the_spec_choice_whatever_the_frontier_says() -> None:
    three = body()
    three["spec"]["variants"] += [{"name": "fp16"}, {"name": "pruned"}]
    m = AutoMachine(parse_spec(three), MEASURED)
    st = m.at(0, p95(250))
    assert (st["variant"], st["chosenBy"]) == ("int8", bo.CHOSEN_BY_SPEC)
    assert st["choice"] == "spec.autoscaling.brownout.variant"
    m.at(60, p95(250))
    assert m.weights["int8"] == 50 and m.weights["fp16"] == 0
    assert "chosen by" not in m.events[-1][2]  # the engage message as before


@pytest.mark.parametrize(("brownout", "field"), [
    ({"candidates": ["zz"]}, "brownout.candidates[0]"),
    ({"candidates": ["int8", "baseline"]}, "brownout.candidates[1]"),
    ({"candidates": ["int8", "int8"]}, "brownout.candidates[1]"),
    ({"candidates": []}, "brownout.candidates"),
    ({"candidates": "int8"}, "brownout.candidates"),
    ({"variant": "int8", "candidates": ["int8"]}, "brownout.candidates"),
    ({"variant": "int8", "minAgreement": 0.9}, "brownout.minAgreement"),
    ({"minAgreement": 1.5}, "brownout.minAgreement"),
    ({"minAgreement": "high"}, "brownout.minAgreement"),
])
def test_invalid_choice_fields_name_the_field(brownout: dict[str, Any], field: str) -> None:
    b = body({"latencyObjectiveMs": 100, **brownout})
    b["spec"]["variants"].append({"name": "fp16"})
    with pytest.raises(InvalidSpecError, match=rf"spec\.autoscaling\.{re.escape(field)}"):
        parse_spec(b)


def test_without_a_variant_there_must_be_a_non_stable_one() -> None:
    even = [{"variant": "baseline", "weight": 50}, {"variant": "int8", "weight": 50}]
    with pytest.raises(InvalidSpecError, match=r"spec\.autoscaling\.brownout\.variant: omitted"):
        parse_spec(body({"latencyObjectiveMs": 100}, even))


def test_standings_are_the_marks_the_status_writes() -> None:
    b = body({"latencyObjectiveMs": 100})
    b["spec"]["variants"].append({"name": "fp16"})
    deps = {v: {"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1}}
            for v in ("baseline", "int8", "fp16")}
    measured = {"baseline": {"p95Ms": 120.0, "rps": 50.0},
                "int8": {"p95Ms": 40.0, "rps": 10.0, "agreement": 0.99},
                "fp16": {"p95Ms": 60.0, "rps": 10.0, "agreement": 0.97}}
    gpu = {"baseline": s.GpuVariant(price_per_pod=4.0), "int8": s.GpuVariant(price_per_pod=1.0),
           "fp16": s.GpuVariant(price_per_pod=0.5)}
    found = s.standings(["baseline", "int8", "fp16"], "baseline", deps, measured, gpu)
    out = s.compute_status(b, deployments=deps, pods=[], now="2026-01-01T12:00:00Z",
                           observed_generation=1, measured=measured, gpu=gpu)
    for v in out["variants"]:
        got = found[v["name"]]
        assert (got.pareto, got.cost_per_1k, got.p95_ms) == (
            v["pareto"], v.get("costPer1kRequests"), v.get("p95Ms"))
    assert found["fp16"].price_per_pod == 0.5 and found["fp16"].pareto == "frontier"
    spec = parse_spec(b)
    assert spec.autoscaling is not None and spec.autoscaling.brownout is not None
    ready = {v: Readiness(1) for v in deps}
    assert bo.choose(spec.autoscaling.brownout, ready, found).variant == "fp16"
    plain = s.standings(["int8"], "baseline", deps, measured, None)  # no GPU fit: no marks
    assert plain["int8"] == bo.Standing(p95_ms=40.0, agreement=0.99)
