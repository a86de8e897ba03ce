"""The rollout state machine: every transition, on typed specs and recorded samples."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from msv_operator import builders, status
from msv_operator import rollout as ro
from msv_operator.spec import InvalidSpecError, parse_spec

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
READY = {"baseline": ro.Readiness(ready=1), "int8": ro.Readiness(ready=1)}


def body(**rollout: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"candidate": "int8", "steps": [10, 50, 100], "stepDuration": "1m",
                         "minRequests": 50,
                         "analysis": {"interval": "15s", "window": "1m", "maxLatencyRatio": 1.2,
                                      "maxErrorRate": 0.01, "minAgreement": 0.99,
                                      "mirrorPercent": 10, "failureLimit": 1}}
    r.update(rollout)
    return {"metadata": {"name": "sentiment", "namespace": "ml"},
            "spec": {"model": {"uri": "s3://m/x", "framework": "transformers",
                               "task": "text-classification"},
                     "variants": [{"name": "baseline"}, {"name": "int8"}],
                     "traffic": [{"variant": "baseline", "weight": 100}],
                     "rollout": r}}


SPEC = parse_spec(body())


def good(requests: float = 100, p95: float = 10.0, errors: float = 0.0,
         agreement: float | None = 1.0, stable_p95: float | None = 10.0,
         compared: float | None = 1000) -> ro.Sample:
    """A sample; by default its agreement rests on enough comparisons to decide at 0.99."""
    return ro.Sample(
        variants={"baseline": ro.VariantMetrics(p95_ms=stable_p95, rps=5.0, error_rate=0.0),
                  "int8": ro.VariantMetrics(p95_ms=p95, rps=1.0, error_rate=errors,
                                            agreement=agreement,
                                            agreement_samples=compared)},
        step_requests={"int8": requests})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(prior: dict[str, Any] | None, seconds: float, sample: ro.Sample | None = None,
         readiness: dict[str, ro.Readiness] | None = None,
         annotations: dict[str, str] | None = None, spec: Any = SPEC) -> ro.Decision:
    # routed: exact weights (a gateway); test_shares.py holds steps without one
    return ro.advance(spec, prior, READY if readiness is None else readiness, sample,
                      annotations or {}, at(seconds), routed=True)


def progressing(seconds: float = 0) -> dict[str, Any]:
    d = step(None, seconds)
    assert d.status is not None and d.status["phase"] == ro.PROGRESSING
    return d.status


# ---- spec --------------------------------------------------------------------------------

def test_min_agreement_zero_switches_the_agreement_gate_off() -> None:
    spec = parse_spec(body(analysis={"mirrorPercent": 0, "minAgreement": 0}))
    assert spec.rollout is not None and spec.rollout.analysis.min_agreement is None
    st = step(None, 0, spec=spec).status
    d = step(st, 15, good(agreement=None), spec=spec)
    assert d.status is not None and d.status["lastAnalysis"]["verdict"] == "Passed"
    assert [g["name"] for g in d.status["lastAnalysis"]["gates"]] == ["latency", "errorRate"]


def test_an_agreement_gate_needs_a_step_where_the_stable_variant_still_mirrors() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec.rollout.steps: the agreement gate needs "
                                               r"a step below 100"):
        parse_spec(body(steps=[100]))
    spec = parse_spec(body(steps=[100], analysis={"minAgreement": 0, "mirrorPercent": 0}))
    assert spec.rollout is not None and spec.rollout.steps == (100,)


def test_parse_rollout_defaults_and_durations() -> None:
    r = parse_spec(body(steps=[5, 100], stepDuration="2m")).rollout
    assert r is not None
    assert r.steps == (5, 100) and r.step_seconds == 120 and r.analysis.interval_seconds == 15
    assert r.analysis.failure_limit == 1 and r.analysis.min_agreement == 0.99
    assert r.analysis.agreement_confidence == 0.95


@pytest.mark.parametrize(("change", "field"), [
    ({"candidate": "fp16"}, "spec.rollout.candidate"),
    ({"candidate": "baseline"}, "spec.rollout.candidate"),
    ({"steps": [10, 10, 100]}, "spec.rollout.steps[1]"),
    ({"steps": [50, 20]}, "spec.rollout.steps[1]"),
    ({"steps": [10, 101]}, "spec.rollout.steps[1]"),
    ({"steps": []}, "spec.rollout.steps"),
    ({"stepDuration": "soon"}, "spec.rollout.stepDuration"),
    ({"analysis": {"mirrorPercent": 0, "minAgreement": 0.9}},
     "spec.rollout.analysis.mirrorPercent"),
    ({"analysis": {"mirrorPercent": 0}}, "spec.rollout.analysis.mirrorPercent"),
    ({"analysis": {"maxErrorRate": 2}}, "spec.rollout.analysis.maxErrorRate"),
])
def test_impossible_rollouts_are_invalid_specs_naming_the_field(change: dict[str, Any],
                                                                 field: str) -> None:
    with pytest.raises(InvalidSpecError, match="^" + re.escape(field)):
        parse_spec(body(**change))


# ---- weights -----------------------------------------------------------------------------

def test_step_weights_split_the_rest_by_spec_proportions_and_sum_to_100() -> None:
    b = body()
    b["spec"]["variants"].append({"name": "fp16"})
    b["spec"]["traffic"] = [{"variant": "baseline", "weight": 67},
                            {"variant": "fp16", "weight": 33}]
    spec = parse_spec(b)
    w = ro.step_weights(spec, "int8", 25)
    assert w["int8"] == 25 and sum(w.values()) == 100
    assert w == {"baseline": 50, "int8": 25, "fp16": 25}
    assert ro.step_weights(spec, "int8", 100) == {"baseline": 0, "int8": 100, "fp16": 0}


@pytest.mark.parametrize(("variants", "traffic", "expected"), [
    (["baseline", "int8"], [("baseline", 100)], {"baseline": 100, "int8": 0}),
    (["baseline", "int8", "fp16"], [("fp16", 30), ("baseline", 70)],
     {"baseline": 70, "int8": 0, "fp16": 30}),
    (["baseline", "int8"], [("baseline", 50), ("int8", 50)], {"baseline": 50, "int8": 50}),
    (["baseline", "int8"], None, {"baseline": 100, "int8": 0}),  # no spec.traffic
    (["baseline", "int8"], [], {"baseline": 100, "int8": 0}),
])
def test_spec_traffic_as_weights_is_one_computation_every_caller_agrees_on(
        variants: list[str], traffic: list[tuple[str, int]] | None,
        expected: dict[str, int]) -> None:
    raw = body()
    del raw["spec"]["rollout"]
    raw["spec"]["variants"] = [{"name": v} for v in variants]
    if traffic is None:
        del raw["spec"]["traffic"]
    else:
        raw["spec"]["traffic"] = [{"variant": v, "weight": w} for v, w in traffic]
    spec = parse_spec(raw)
    assert ro.traffic_weights(variants, spec.traffic) == expected
    assert list(ro.traffic_weights(variants, spec.traffic)) == variants  # in spec order
    # the rollout without spec.rollout, the builders without effective weights, the status
    # of a spec as written (and of one that does not parse, below)
    assert ro.advance(spec, None, READY, None, {}, T0, routed=True).weights == expected
    assert builders.spec_serving(spec).weights == expected
    assert status.variant_weights(raw) == expected
    out = status.compute_status(raw, deployments={}, pods=[], now="2026-01-01T12:00:00Z",
                                observed_generation=1)
    assert out["traffic"] == ",".join(f"{v}={w}" for v, w in expected.items())


def test_weights_of_a_spec_that_does_not_parse_are_what_it_says() -> None:
    raw = {"spec": {"variants": [{"name": "a"}, {"name": "b"}, {"name": "a"}],
                    "traffic": [{"variant": "a", "weight": 60}, {"variant": "b", "weight": "x"},
                                {"variant": "a", "weight": 10}, {"variant": "zzz"}, 7]}}
    with pytest.raises(InvalidSpecError):
        parse_spec(raw)
    assert status.variant_weights(raw) == {"a": 70, "b": 0}
    assert ro.traffic_weights(["a", "b"], None) == {"a": 100, "b": 0}
    assert ro.traffic_weights([], None) == {}


def test_no_rollout_means_spec_weights() -> None:
    b = body()
    del b["spec"]["rollout"]
    d = ro.advance(parse_spec(b), None, READY, None, {}, T0, routed=True)
    assert d.status is None and d.weights == {"baseline": 100, "int8": 0} and not d.mirror


# ---- transitions -------------------------------------------------------------------------

def test_pending_until_the_candidate_has_a_ready_pod() -> None:
    d = step(None, 0, readiness={"baseline": ro.Readiness(1), "int8": ro.Readiness(0)})
    assert d.status is not None
    assert d.status["phase"] == ro.PENDING and d.status["step"] == 0
    assert d.weights == {"baseline": 100, "int8": 0}
    assert d.mirror  # the stable variant mirrors from the start: its env stays put
    assert [e[1] for e in d.events] == ["RolloutStarted"]
    d2 = step(d.status, 5)
    assert d2.status is not None and d2.status["phase"] == ro.PROGRESSING
    assert d2.status["step"] == 1 and d2.weights == {"baseline": 90, "int8": 10}
    assert [e[1] for e in d2.events] == ["RolloutStep"]


def test_a_good_candidate_goes_through_every_step_and_is_promoted() -> None:
    st = progressing()
    t = 0.0
    seen = []
    for _ in range(40):
        t += 15
        due = ro.analysis_due(SPEC, st, at(t))
        d = step(st, t, good() if due is not None else None)
        assert d.status is not None
        st = d.status
        seen.append((st["phase"], st["step"], d.weights["int8"]))
        if st["phase"] == ro.PROMOTED:
            break
    assert st["phase"] == ro.PROMOTED
    assert d.weights == {"baseline": 0, "int8": 100} and not d.mirror
    assert [w for _, _, w in seen if w] and {w for _, _, w in seen} >= {10, 50, 100}
    assert [e[1] for e in d.events] == ["RolloutPromoted"]
    assert "spec.traffic" in st["message"]
    assert [h["phase"] for h in st["history"]][-1] == ro.PROMOTED
    # promoted is terminal: nothing more happens
    again = step(st, t + 600, good())
    assert again.status == st and again.events == [] and again.requeue_after is None


def test_a_step_does_not_advance_before_its_duration_or_without_min_requests() -> None:
    st = progressing()
    d = step(st, 15, good())
    assert d.status is not None and d.status["step"] == 1
    assert d.status["lastAnalysis"]["verdict"] == "Passed"
    assert d.requeue_after == 15
    few = step(d.status, 61, good(requests=10))
    assert few.status is not None and few.status["step"] == 1
    assert few.status["lastAnalysis"]["verdict"] == "Inconclusive"
    assert "10 of 50" in few.status["message"] or "waiting" in few.status["message"]
    enough = step(few.status, 76, good())
    assert enough.status is not None and enough.status["step"] == 2
    assert enough.weights["int8"] == 50


def test_latency_gate_failure_past_the_limit_rolls_back_naming_gate_and_value() -> None:
    st = progressing()
    d1 = step(st, 15, good(p95=20.0))
    assert d1.status is not None and d1.status["phase"] == ro.PROGRESSING
    assert d1.status["failures"] == 1
    assert [e[1] for e in d1.events] == ["AnalysisFailed"]
    d2 = step(d1.status, 30, good(p95=20.0))
    assert d2.status is not None and d2.status["phase"] == ro.ROLLED_BACK
    assert d2.status["reason"] == "AnalysisFailed"
    assert "latency 2.0 (threshold <= 1.2)" in d2.status["message"]
    assert d2.weights == {"baseline": 100, "int8": 0} and not d2.mirror
    assert d2.events[-1][:2] == ("Warning", "RolloutRolledBack")
    gates = {g["name"]: g for g in d2.status["lastAnalysis"]["gates"]}
    assert gates["latency"]["passed"] is False and gates["latency"]["candidateP95Ms"] == 20.0


def test_agreement_and_error_rate_gates() -> None:
    st = progressing()
    d = step(st, 15, good(agreement=0.5, errors=0.2))
    assert d.status is not None
    failed = {g["name"] for g in d.status["lastAnalysis"]["gates"] if g["passed"] is False}
    assert failed == {"agreement", "errorRate"}
    d2 = step(d.status, 30, good(agreement=0.5))
    assert d2.status is not None and d2.status["phase"] == ro.ROLLED_BACK
    assert "agreement 0.5 (threshold >= 0.99)" in d2.status["message"]


def test_a_failed_analysis_under_the_limit_does_not_roll_back_and_the_count_persists() -> None:
    st = progressing()
    d = step(st, 15, good(p95=20.0))
    d = step(d.status, 30, good())
    assert d.status is not None and d.status["phase"] == ro.PROGRESSING
    assert d.status["failures"] == 1


def test_a_candidate_that_cannot_load_rolls_back_without_waiting_for_analysis() -> None:
    st = progressing()
    broken = {"baseline": ro.Readiness(1),
              "int8": ro.Readiness(0, failure="pod x: model server exited with code 4")}
    d = step(st, 1, readiness=broken)
    assert d.status is not None and d.status["phase"] == ro.ROLLED_BACK
    assert d.status["reason"] == "CandidateFailed" and "exited with code 4" in d.status["message"]
    assert d.weights == {"baseline": 100, "int8": 0}
    pending = step(None, 0, readiness=broken)
    assert pending.status is not None and pending.status["phase"] == ro.ROLLED_BACK


def test_prometheus_unreachable_pauses_and_resumes_when_metrics_are_back() -> None:
    st = progressing()
    d = step(st, 15, ro.Sample(error="Prometheus unreachable: connection refused"))
    assert d.status is not None
    assert (d.status["phase"], d.status["reason"]) == (ro.PAUSED, ro.METRICS_UNAVAILABLE)
    assert "never promotes blind" in d.status["message"]
    assert d.weights == {"baseline": 90, "int8": 10}  # held, not promoted
    assert d.requeue_after == 15
    assert ro.analysis_due(SPEC, d.status, at(30)) is not None
    # still unavailable long after the step duration: never promotes
    d2 = step(d.status, 300, ro.Sample(error="still down"))
    assert d2.status is not None and d2.status["phase"] == ro.PAUSED and d2.events == []
    d3 = step(d2.status, 315, good())
    assert d3.status is not None and d3.status["phase"] == ro.PROGRESSING
    assert [e[1] for e in d3.events] == ["RolloutResumed"]


def test_no_data_for_a_gate_with_enough_requests_pauses() -> None:
    st = progressing()
    d = step(st, 15, good(agreement=None))
    assert d.status is not None and d.status["reason"] == ro.METRICS_UNAVAILABLE
    assert "agreement" in d.status["message"]


def test_at_100_percent_the_last_stable_measurements_stand_in() -> None:
    spec = parse_spec(body(steps=[50, 100]))
    st = dict(step(None, 0, spec=spec).status or {}, step=2)  # at the 100% step
    d = step(st, 15, good(stable_p95=None, agreement=None), spec=spec)
    assert d.status is not None and d.status["lastAnalysis"]["verdict"] == "NoData"
    st2 = dict(d.status, phase=ro.PROGRESSING, reason="",
               reference={"stableP95Ms": 10.0, "agreement": 1.0, "agreementSamples": 1000})
    d2 = step(st2, 30, good(stable_p95=None, agreement=None), spec=spec)
    assert d2.status is not None and d2.status["lastAnalysis"]["verdict"] == "Passed"


# ---- the agreement gate's confidence interval ---------------------------------------------

AT_90 = parse_spec(body(analysis={"minAgreement": 0.9, "failureLimit": 1}))


def agreement_gate(d: ro.Decision) -> dict[str, Any]:
    assert d.status is not None
    return next(g for g in d.status["lastAnalysis"]["gates"] if g["name"] == "agreement")


def test_twenty_perfect_comparisons_leave_the_gate_undecided_with_what_it_needs() -> None:
    st = step(None, 0, spec=AT_90).status
    d = step(st, 15, good(agreement=1.0, compared=20), spec=AT_90)
    assert d.status is not None and d.status["lastAnalysis"]["verdict"] == "Undecided"
    g = agreement_gate(d)
    assert g["passed"] is None and g["value"] == 1.0 and g["samples"] == 20
    assert g["lowerBound"] == pytest.approx(0.8389, abs=1e-4) and g["upperBound"] == 1.0
    assert g["confidence"] == 0.95 and g["threshold"] == 0.9
    assert g["samplesNeeded"] == 15  # 35 comparisons at 100% put the low bound above 0.9
    assert "15 more comparisons" in d.status["message"]
    assert "[0.8389, 1.0] over 20 comparisons" in d.status["message"]
    assert d.status["failures"] == 0 and d.events == []


@pytest.mark.parametrize(("agreement", "compared", "verdict", "passed"), [
    (0.97, 200, "Passed", True), (0.5, 200, "Failed", False), (1.0, 35, "Passed", True),
    (1.0, 34, "Undecided", None)])
def test_fixed_counts_decide_on_the_bounds(agreement: float, compared: int, verdict: str,
                                          passed: bool | None) -> None:
    st = step(None, 0, spec=AT_90).status
    d = step(st, 15, good(agreement=agreement, compared=compared), spec=AT_90)
    assert d.status is not None and d.status["lastAnalysis"]["verdict"] == verdict
    g = agreement_gate(d)
    assert g["passed"] is passed and g["samples"] == compared
    assert ("samplesNeeded" in g) is (passed is None)
    if passed is True:
        assert g["lowerBound"] >= 0.9
    if passed is False:
        assert g["upperBound"] < 0.9 and d.status["failures"] == 1


def test_an_undecided_gate_holds_the_step_without_counting_a_failure() -> None:
    st = progressing()
    t, d = 0.0, None
    for _ in range(12):  # three minutes of undecided analyses, three times stepDuration
        t += 15
        d = step(st, t, good(agreement=1.0, compared=100))
        assert d.status is not None
        st = d.status
        assert st["phase"] == ro.PROGRESSING and st["step"] == 1 and st["failures"] == 0
        assert st["lastAnalysis"]["verdict"] == "Undecided"
        assert d.weights == {"baseline": 90, "int8": 10} and d.events == []
    assert d is not None and d.status is not None
    assert "duration reached" in d.status["message"]
    assert "281 more comparisons" in d.status["message"]  # 381 at 100% decide 0.99
    g = agreement_gate(d)
    assert g["samplesNeeded"] == 281 and g["passed"] is None
    # as comparisons accumulate the estimate falls, then a decided analysis moves on
    nearer = step(st, t + 15, good(agreement=1.0, compared=300))
    assert agreement_gate(nearer)["samplesNeeded"] == 81
    enough = step(nearer.status, t + 30, good(agreement=1.0, compared=381))
    assert enough.status is not None and enough.status["step"] == 2
    assert enough.status["lastAnalysis"]["verdict"] == "Passed"


def test_undecided_never_rolls_back_but_a_decided_failure_beside_it_counts() -> None:
    st = progressing()
    d = step(st, 15, good(agreement=0.99, compared=500))  # at the threshold: not reachable
    g = agreement_gate(d)
    assert g["passed"] is None and g["samplesNeeded"] is None
    assert d.status is not None and "not reachable" in d.status["message"]
    d = step(d.status, 30, good(p95=20.0, agreement=0.99, compared=500))
    assert d.status is not None and d.status["lastAnalysis"]["verdict"] == "Failed"
    assert d.status["failures"] == 1
    assert [e[1] for e in d.events] == ["AnalysisFailed"]


def test_an_agreement_without_its_count_is_no_data() -> None:
    st = progressing()
    d = step(st, 15, good(agreement=1.0, compared=None))
    assert d.status is not None and d.status["reason"] == ro.METRICS_UNAVAILABLE
    assert agreement_gate(d)["value"] is None


def test_at_100_percent_the_fading_window_does_not_replace_the_reference() -> None:
    spec = parse_spec(body(steps=[50, 100]))
    st = step(None, 0, spec=spec).status
    d = step(st, 15, good(agreement=1.0, compared=400), spec=spec)
    d = step(d.status, 61, good(agreement=1.0, compared=400), spec=spec)
    assert d.status is not None and d.status["step"] == 2 and d.weights["int8"] == 100
    assert d.status["reference"]["agreementSamples"] == 400
    # nothing is mirrored any more: the window holds fewer and fewer earlier comparisons
    d2 = step(d.status, 76, good(agreement=1.0, compared=60, stable_p95=None), spec=spec)
    assert d2.status is not None and d2.status["lastAnalysis"]["verdict"] == "Passed"
    assert agreement_gate(d2)["samples"] == 400
    assert d2.status["reference"] == d.status["reference"]


def test_a_higher_confidence_asks_for_more_comparisons() -> None:
    strict = parse_spec(body(analysis={"minAgreement": 0.9, "agreementConfidence": 0.999}))
    assert strict.rollout is not None and strict.rollout.analysis.agreement_confidence == 0.999
    usual = step(step(None, 0, spec=AT_90).status, 15, good(agreement=0.97, compared=100),
                 spec=AT_90)
    assert agreement_gate(usual)["passed"] is True
    st = step(None, 0, spec=strict).status
    d = step(st, 15, good(agreement=0.97, compared=100), spec=strict)
    assert agreement_gate(d)["passed"] is None and agreement_gate(d)["confidence"] == 0.999
    assert agreement_gate(d)["samplesNeeded"] == 99  # 199 in all, against 71 at 0.95


@pytest.mark.parametrize(("analysis", "message"), [
    ({"minAgreement": 1}, "1 cannot be shown"),
    ({"agreementConfidence": 0.5}, "outside"),
    ({"agreementConfidence": 1}, "outside"),
    ({"agreementConfidence": "high"}, "expected a number"),
])
def test_bad_agreement_settings_name_the_field(analysis: dict[str, Any], message: str) -> None:
    field = "spec.rollout.analysis." + next(iter(analysis))
    with pytest.raises(InvalidSpecError, match="^" + re.escape(field) + ".*" + message):
        parse_spec(body(analysis=analysis))


def test_pause_annotation_holds_weights_and_resume_restarts_the_step() -> None:
    st = progressing()
    paused = {ro.ANNOTATION_PAUSED: "true"}
    d = step(st, 15, good(), annotations=paused)
    assert d.status is not None
    assert (d.status["phase"], d.status["reason"]) == (ro.PAUSED, ro.PAUSED_BY_USER)
    assert d.weights == {"baseline": 90, "int8": 10} and d.requeue_after is None
    assert ro.analysis_due(SPEC, d.status, at(100)) is None
    held = step(d.status, 500, annotations=paused)
    assert held.status is not None and held.status["step"] == 1 and held.events == []
    resumed = step(held.status, 600)
    assert resumed.status is not None and resumed.status["phase"] == ro.PROGRESSING
    assert resumed.status["stepStartedAt"] == "2026-01-01T12:10:00Z"
    assert [e[1] for e in resumed.events] == ["RolloutResumed"]


def test_abort_action_is_handled_once_and_recorded() -> None:
    st = progressing()
    action = {ro.ANNOTATION_ACTION: "abort/2026-01-01T12:00:05Z"}
    d = step(st, 5, annotations=action)
    assert d.status is not None and d.status["phase"] == ro.ABORTED
    assert d.status["handledAction"] == "abort/2026-01-01T12:00:05Z"
    assert d.weights == {"baseline": 100, "int8": 0}
    again = step(d.status, 10, annotations=action)
    assert again.events == [] and again.status == d.status


def test_retry_restarts_a_rolled_back_rollout_and_promote_skips_the_gates() -> None:
    st = progressing()
    d = step(st, 1, annotations={ro.ANNOTATION_ACTION: "abort"})
    retry = step(d.status, 2, annotations={ro.ANNOTATION_ACTION: "retry/1"})
    assert retry.status is not None and retry.status["phase"] == ro.PROGRESSING
    assert retry.status["step"] == 1 and retry.status["failures"] == 0
    assert "RolloutRetried" in [e[1] for e in retry.events]
    promote = step(retry.status, 3, annotations={ro.ANNOTATION_ACTION: "promote/1"})
    assert promote.status is not None and promote.status["phase"] == ro.PROMOTED
    assert promote.weights["int8"] == 100


def test_actions_that_do_not_apply_are_reported_not_applied() -> None:
    st = progressing()
    d = step(st, 1, annotations={ro.ANNOTATION_ACTION: "retry"})
    assert d.status is not None and d.status["phase"] == ro.PROGRESSING
    assert d.events[0][1] == "RolloutActionIgnored"
    bogus = step(st, 1, annotations={ro.ANNOTATION_ACTION: "explode"})
    assert "expected abort, promote or retry" in bogus.events[0][2]
    down = {"baseline": ro.Readiness(1), "int8": ro.Readiness(0)}
    refused = step(st, 1, readiness=down, annotations={ro.ANNOTATION_ACTION: "promote"})
    assert refused.status is not None and refused.status["phase"] == ro.PROGRESSING
    assert refused.events[0][1] == "RolloutActionRefused"


def test_a_candidate_without_ready_pods_never_gets_traffic() -> None:
    st = progressing()
    down = {"baseline": ro.Readiness(1), "int8": ro.Readiness(0)}
    d = step(st, 70, good(), readiness=down)
    assert d.status is not None and d.status["phase"] == ro.PROGRESSING
    assert d.weights == {"baseline": 100, "int8": 0}
    assert "no ready pod" in d.status["message"]
    promoted = dict(st, phase=ro.PROMOTED)
    assert ro.effective_weights(SPEC, promoted, down) == {"baseline": 100, "int8": 0}


def test_restart_resumes_at_the_same_step_from_status_alone() -> None:
    st = progressing()
    d = step(st, 15, good())
    d = step(d.status, 61, good())
    assert d.status is not None and d.status["step"] == 2
    # a new operator process sees only the stored status (a JSON round trip)
    stored = json.loads(json.dumps(d.status))
    resumed = step(stored, 62)
    assert resumed.status is not None and resumed.status["step"] == 2
    assert resumed.weights == {"baseline": 50, "int8": 50} and resumed.events == []


def test_changing_the_candidate_or_stable_traffic_starts_a_new_rollout() -> None:
    st = progressing()
    b = body()
    b["spec"]["variants"].append({"name": "fp16"})
    b["spec"]["rollout"]["candidate"] = "fp16"
    spec = parse_spec(b)
    d = ro.advance(spec, st, {**READY, "fp16": ro.Readiness(0)}, None, {}, at(5),
                   routed=True)
    assert d.status is not None and d.status["candidate"] == "fp16"
    assert d.status["phase"] == ro.PENDING and d.events[0][1] == "RolloutStarted"


def test_analysis_due_follows_the_interval() -> None:
    st = progressing()
    assert ro.analysis_due(SPEC, st, at(0)) == 0.0
    d = step(st, 15, good())
    assert ro.analysis_due(SPEC, d.status, at(20)) is None
    assert ro.analysis_due(SPEC, d.status, at(30)) == 30.0
    assert ro.analysis_due(SPEC, None, at(30)) is None
