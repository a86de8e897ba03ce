"""state: the typed status.rollout, status.brownout and status.variants[] read and write every
stored status as it was (recorded, written by the machines, old, partial, with unknown keys)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from msv_operator import brownout as bo
from msv_operator import rollout as ro
from msv_operator import status as s
from msv_operator.spec import parse_spec
from msv_operator.state import (
    ABSENT,
    Analysis,
    BrownoutStatus,
    Gate,
    HistoryEntry,
    Reference,
    RolloutStatus,
    VariantStatus,
    present,
)
from test_kubectl_msv import RECORDED

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

# ---- recorded and hand-written statuses from the other tests ---------------------------------

RECORDED_ROLLOUT: dict[str, Any] = copy.deepcopy(RECORDED["status"]["rollout"])
"""What test_kubectl_msv renders: the latency gate without its p95s."""

PARTIAL_ROLLOUTS: list[dict[str, Any]] = [  # test_status, test_brownout: partial, old
    {"phase": "Progressing", "step": 1},
    {"phase": "Paused"},
    {"phase": "RolledBack", "reason": "AnalysisFailed", "message": "candidate int8 rolled back"},
    {},
    {"candidate": "int8", "stable": "baseline=100", "phase": "Progressing", "step": 1,
     "reference": {"stableP95Ms": 10.0, "agreement": 1.0}},
]

RECORDED_BROWNOUT: dict[str, Any] = {  # test_kubectl_msv
    "variant": "int8", "stable": "baseline", "phase": "Engaged",
    "reason": "MetricsUnavailable", "since": "2026-11-30T14:00:00Z",
    "share": 40, "maxShare": 40, "p95Ms": 310.2, "objectiveMs": 200.0,
    "releaseBelowMs": 160.0, "stableReplicas": 2,
    "stableMaxReplicas": 2, "message": "metrics unavailable"}

GPU_VARIANT: dict[str, Any] = {
    "name": "int8", "replicas": 2, "readyReplicas": 2, "weight": 50, "p95Ms": 31.5, "rps": 40.0,
    "agreement": 0.997, "optimization": "dynamic-int8",
    "gpuMemory": {"source": "safetensors-header", "totalBytes": 20937965568,
                  "weightBytes": 13535580160, "artifactWeightBytes": 26031728640,
                  "loadPeakBytes": 13535580160, "activationBytes": 6328156160,
                  "kvCacheBytes": 0, "overheadBytes": 1073741824, "rows": 8, "tokens": 4096,
                  "parameters": 13015864320, "measuredBytes": 15032385536},
    "placement": {"product": "NVIDIA-L4", "resource": "nvidia.com/gpu", "count": 1,
                  "deviceMemoryBytes": 24152899584, "pinned": False, "checked": True,
                  "pricePerHour": 0.8},
    "costPerHour": 1.6, "costPer1kRequests": 0.011111, "pareto": "dominated",
    "dominatedBy": ["fp16"]}
"""A GPU variant's entry with every GPU fit field (recorded from the status tests)."""

RECORDED_VARIANTS: list[dict[str, Any]] = [  # test_kubectl_msv, test_status
    {"name": "baseline", "replicas": 1, "readyReplicas": 1, "weight": 75,
     "p95Ms": 8.1, "rps": 12.5, "errorRate": 0.0, "parameters": 4386,
     "sizeBytes": 17544, "cpuMillicores": 210, "memoryBytes": 314572800},
    {"name": "int8", "replicas": 1, "readyReplicas": 1, "weight": 25,
     "p95Ms": 8.9, "rps": 4.1, "errorRate": 0.0, "agreement": 0.9981,
     "optimization": "dynamic-int8", "sizeBytes": 6000},
    {"name": "baseline", "replicas": 2, "readyReplicas": 1,
     "desiredReplicas": 2, "minReplicas": 1, "maxReplicas": 2, "weight": 60},
    {"name": "distilled", "replicas": 0, "readyReplicas": 0, "desiredReplicas": 0, "weight": 0,
     "derivedFrom": "s3://m/bert-base"},
    GPU_VARIANT,
]

# ---- statuses the machines write -----------------------------------------------------------


def rollout_body(steps: list[int]) -> dict[str, Any]:
    return {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"},
            "spec": {"model": {"uri": "s3://m/x", "framework": "transformers",
                               "task": "text-classification"},
                     "variants": [{"name": "baseline"}, {"name": "int8"}],
                     "traffic": [{"variant": "baseline", "weight": 100}],
                     "rollout": {"candidate": "int8", "steps": steps, "stepDuration": "1m",
                                 "minRequests": 50,
                                 "analysis": {"interval": "15s", "minAgreement": 0.99,
                                              "mirrorPercent": 10, "failureLimit": 1}},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 2,
                                     "brownout": {"variant": "int8", "latencyObjectiveMs": 100,
                                                  "engageAfter": "60s",
                                                  "releaseAfter": "120s"}}}}


def sample(p95: float | None = 10.0, agreement: float | None = 1.0, stable: float | None = 10.0,
           requests: float = 100, compared: float = 1000) -> ro.Sample:
    return ro.Sample(variants={"baseline": ro.VariantMetrics(p95_ms=stable, error_rate=0.0),
                               "int8": ro.VariantMetrics(p95_ms=p95, error_rate=0.0,
                                                         agreement=agreement,
                                                         agreement_samples=compared)},
                     step_requests={"int8": requests})


def rollout_statuses() -> list[dict[str, Any]]:
    """Every status.rollout of a few runs: each phase, each verdict, each action."""
    ready = {"baseline": ro.Readiness(1), "int8": ro.Readiness(1)}
    not_ready = {"baseline": ro.Readiness(1), "int8": ro.Readiness(0)}
    script: list[tuple[float, ro.Sample | None, dict[str, str]]] = [
        (0, None, {}), (1, None, {}), (15, sample(), {}), (20, sample(compared=20), {}),
        (25, sample(agreement=0.99, compared=5000), {}), (30, sample(agreement=None), {}),
        (45, ro.Sample(error="Prometheus unreachable"), {}), (61, sample(requests=10), {}),
        (76, sample(p95=20.0), {}), (90, sample(), {ro.ANNOTATION_PAUSED: "true"}),
        (100, None, {}), (115, sample(), {}), (180, sample(), {}),
        (240, sample(stable=None, agreement=None), {}), (300, sample(p95=30.0), {}),
        (301, None, {ro.ANNOTATION_ACTION: "retry/1"}),
        (302, None, {ro.ANNOTATION_ACTION: "promote/1"}),
    ]
    out = []
    for steps in ([10, 50, 100], [50, 100]):
        spec = parse_spec(rollout_body(steps))
        st: dict[str, Any] | None = None
        for seconds, smp, steering in script:
            d = ro.advance(spec, st, not_ready if seconds == 0 else ready, smp, steering,
                           T0 + timedelta(seconds=seconds), routed=True)
            assert d.status is not None
            st = d.status
            out.append(st)
    return out


def brownout_statuses() -> list[dict[str, Any]]:
    """Every status.brownout of a run that engages, steps, loses its metrics and releases."""
    spec = parse_spec(rollout_body([10]))
    at_max = bo.HpaState(current=2, desired=2, min_replicas=1, max_replicas=2)
    ready = {"baseline": ro.Readiness(2), "int8": ro.Readiness(1)}
    script: list[tuple[float, ro.Sample | None]] = [
        (0, ro.Sample(variants={"baseline": ro.VariantMetrics(p95_ms=250.0)})),
        (60, ro.Sample(variants={"baseline": ro.VariantMetrics(p95_ms=250.0)})),
        (75, ro.Sample(variants={"baseline": ro.VariantMetrics()})),  # p95 null
        (90, ro.Sample(error="Prometheus unreachable")),
        (100, None),
        (110, ro.Sample(variants={"baseline": ro.VariantMetrics(p95_ms=40.0)})),
        (300, ro.Sample(variants={"baseline": ro.VariantMetrics(p95_ms=40.0)})),
    ]
    out = []
    st: dict[str, Any] | None = None
    for seconds, smp in script:
        d = bo.advance(spec, st, {"baseline": 100, "int8": 0}, {"phase": "RolledBack"}, at_max,
                       ready, smp, T0 + timedelta(seconds=seconds))
        assert d.status is not None
        st = d.status
        out.append(st)
    return out


def variant_entries() -> list[dict[str, Any]]:
    """The status.variants that compute_status writes (HPA bounds, provenance, measured)."""
    body = rollout_body([10])
    body["spec"]["variants"][1]["optimization"] = {"quantization": "dynamic-int8"}
    deps = {"baseline": {"spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}},
            "int8": None}
    out = s.compute_status(
        body, deployments=deps, pods=[], now="2026-01-01T12:00:00Z", observed_generation=1,
        measured={"baseline": {"p95Ms": 12.5, "rps": 3.0, "cpuMillicores": 200, "bogus": 1}},
        hpas={"baseline": bo.HpaState(2, 2, 1, 3)})
    return list(out["variants"])


def merge_patched(d: Any) -> Any:
    """What the API server keeps after a merge patch: a null at an object's key removes it
    (inside a list it stays)."""
    if isinstance(d, dict):
        return {k: merge_patched(v) for k, v in d.items() if v is not None}
    return d


def with_unknown_keys(d: dict[str, Any]) -> dict[str, Any]:
    """An older or newer operator's fields, at the top and in every nested object."""
    out = copy.deepcopy(d)
    for value in out.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                item["futureNested"] = "x"
                for gate in item.get("gates") or ():
                    gate["futureGate"] = True
    out["futureField"] = {"nested": [1, None]}
    out["nullField"] = None
    return out


ROLLOUTS = [RECORDED_ROLLOUT, *PARTIAL_ROLLOUTS, *rollout_statuses()]
BROWNOUTS = [RECORDED_BROWNOUT, {"phase": "Inactive"}, *brownout_statuses()]
VARIANTS = [*RECORDED_VARIANTS, *variant_entries(), {"name": "v"}]


def cases(dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in dicts:
        out += [d, json.loads(json.dumps(d)), merge_patched(d), with_unknown_keys(d)]
    return out


# ---- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "dicts"), [(RolloutStatus, ROLLOUTS),
                                             (BrownoutStatus, BROWNOUTS),
                                             (VariantStatus, VARIANTS)])
def test_every_stored_status_round_trips(kind: Any, dicts: list[dict[str, Any]]) -> None:
    for d in cases(dicts):
        typed = kind.from_dict(d)
        assert typed.to_dict() == d
        assert kind.from_dict(typed.to_dict()) == typed


def test_the_machines_wrote_what_the_round_trips_need() -> None:
    """The generated cases hold what makes a round trip hard (else the test above is weak)."""
    last = [st["lastAnalysis"] for st in ROLLOUTS if "lastAnalysis" in st]
    assert {a["verdict"] for a in last} >= {"Passed", "Failed", "Inconclusive", "Undecided",
                                            "NoData"}
    assert any(g["value"] is None for a in last for g in a["gates"])
    needed = [g["samplesNeeded"] for a in last for g in a["gates"] if "samplesNeeded" in g]
    assert None in needed and any(isinstance(n, int) for n in needed)
    assert any("agreementSamples" in st.get("reference", {}) for st in ROLLOUTS)
    assert any(a["gates"] == [] for a in last)
    assert {st["phase"] for st in ROLLOUTS if "phase" in st} >= {
        "Pending", "Progressing", "Paused", "Promoted", "RolledBack"}
    assert any("reference" in st and "handledAction" in st for st in ROLLOUTS)
    assert any(b.get("p95Ms", 0) is None for b in BROWNOUTS)
    assert any("pressureSince" in b for b in BROWNOUTS)
    assert any("calmSince" in b for b in BROWNOUTS)
    assert any("metricsError" in b for b in BROWNOUTS)
    assert {b["phase"] for b in BROWNOUTS} == {"Inactive", "Engaged"}
    assert any("maxReplicas" in v and "cpuMillicores" in v and "optimization" not in v
               for v in VARIANTS)
    assert any("optimization" in v and "p95Ms" not in v for v in variant_entries())


def test_typed_objects_round_trip() -> None:
    gate = Gate(name="latency", value=None, threshold=1.2, comparison="<=",
                candidate_p95_ms=None, stable_p95_ms=10.0, passed=None)
    rollout = RolloutStatus(
        candidate="int8", stable="baseline=100", phase="Progressing", reason="", step=1,
        steps=[10, 100], failures=0,
        history=[HistoryEntry(time="t", phase="Pending", step=0, message="started")],
        last_analysis=Analysis(time="t", step=1, verdict="NoData", gates=[gate]),
        reference=Reference(stable_p95_ms=10.0), handled_action="abort/1",
        extra={"futureField": [1]})
    brownout = BrownoutStatus(variant="int8", phase="Engaged", share=50, p95_ms=None)
    variant = VariantStatus(name="int8", weight=10, p95_ms=12.5, extra={"x": {"y": 1}})
    for x in (rollout, brownout, variant, gate, RolloutStatus(), BrownoutStatus()):
        assert type(x).from_dict(x.to_dict()) == x


# ---- what the types say --------------------------------------------------------------------

def test_fields_read_the_camel_case_keys() -> None:
    r = RolloutStatus.from_dict(RECORDED_ROLLOUT)
    assert (r.phase, r.step, r.steps, r.failures) == ("Progressing", 2, [10, 25, 50, 100], 1)
    assert r.step_started_at == "2026-11-30T13:59:30Z"
    assert r.handled_action == "retry/2026-11-30T13:57:00Z"
    assert r.last_analysis is not None and r.last_analysis.min_requests == 50
    gates = r.last_analysis.gates or []
    assert [(g.name, g.passed) for g in gates] == [
        ("latency", False), ("errorRate", True), ("agreement", None)]
    assert r.history is not None and r.history[1].message == "step 2/4: candidate int8 at 25%"
    b = BrownoutStatus.from_dict(RECORDED_BROWNOUT)
    assert (b.share, b.max_share, b.release_below_ms, b.stable_max_replicas) == (40, 40, 160.0, 2)
    v = VariantStatus.from_dict(RECORDED_VARIANTS[0])
    assert (v.ready_replicas, v.error_rate, v.size_bytes, v.memory_bytes) == (
        1, 0.0, 17544, 314572800)
    assert v.measured() == {k: RECORDED_VARIANTS[0][k] for k in s.MEASURED_KEYS
                            if k in RECORDED_VARIANTS[0]}


def test_gpu_fields_read_their_keys_and_only_the_measured_memory_is_carried() -> None:
    v = VariantStatus.from_dict(GPU_VARIANT)
    assert (v.cost_per_hour, v.cost_per_1k_requests, v.pareto, v.dominated_by) == (
        1.6, 0.011111, "dominated", ["fp16"])
    assert v.placement is not None and v.placement["product"] == "NVIDIA-L4"
    # the estimate is computed again by every pass: only what was measured is carried
    assert v.measured()["gpuMemory"] == {"measuredBytes": 15032385536}
    assert "gpuMemory" not in VariantStatus.from_dict(
        {**GPU_VARIANT, "gpuMemory": {"totalBytes": 1}}).measured()


def test_null_and_missing_differ_where_null_means_something() -> None:
    gates = RolloutStatus.from_dict(RECORDED_ROLLOUT).last_analysis.gates  # type: ignore[union-attr]
    assert gates is not None
    latency, agreement = gates[0], gates[2]
    assert latency.candidate_p95_ms is ABSENT and present(latency.candidate_p95_ms) is None
    assert agreement.value is None and "value" in agreement.to_dict()
    assert "candidateP95Ms" not in latency.to_dict()
    measured_nothing = BrownoutStatus.from_dict({"p95Ms": None, "measuredAt": "t"})
    never_measured = BrownoutStatus.from_dict({"measuredAt": "t"})
    assert measured_nothing.p95_ms is None and never_measured.p95_ms is ABSENT
    assert measured_nothing.to_dict() == {"p95Ms": None, "measuredAt": "t"}
    assert never_measured.to_dict() == {"measuredAt": "t"}


def test_unknown_keys_nulls_and_odd_shapes_are_kept_and_read_as_missing() -> None:
    odd = {"phase": "Progressing", "reason": None, "history": "not a list",
           "lastAnalysis": [1], "reference": {"stableP95Ms": 3.0, "older": 1}, "newer": {"a": 1}}
    r = RolloutStatus.from_dict(odd)
    assert r.reason is None and r.history is None and r.last_analysis is None
    assert r.reference == Reference(stable_p95_ms=3.0, extra={"older": 1})
    assert r.extra == {"reason": None, "history": "not a list", "lastAnalysis": [1],
                       "newer": {"a": 1}}
    assert r.to_dict() == odd
    r.history = [HistoryEntry(message="m")]  # a field set later is written over the odd value
    assert r.to_dict()["history"] == [{"message": "m"}]


def test_reading_and_writing_share_nothing_with_the_dicts() -> None:
    stored = copy.deepcopy(RECORDED_ROLLOUT)
    stored["futureField"] = {"n": [1]}
    r = RolloutStatus.from_dict(stored)
    assert r.steps is not None and r.history is not None
    r.steps.append(999)
    r.history[0].message = "changed"
    r.extra["futureField"]["n"].append(2)
    assert stored["steps"] == [10, 25, 50, 100] and stored["futureField"] == {"n": [1]}
    assert stored["history"][0]["message"] == "rollout of int8 started"
    written = r.to_dict()
    written["futureField"]["n"].append(3)
    written["steps"].append(1000)
    assert r.extra["futureField"] == {"n": [1, 2]} and r.steps[-1] == 999


def test_the_machines_keep_keys_they_do_not_know() -> None:
    spec = parse_spec(rollout_body([10, 100]))
    ready = {"baseline": ro.Readiness(1), "int8": ro.Readiness(1)}
    first = ro.advance(spec, None, ready, None, {}, T0, routed=True).status
    assert first is not None
    prior = with_unknown_keys(first)
    d = ro.advance(spec, prior, ready, sample(), {}, T0 + timedelta(seconds=15), routed=True)
    assert d.status is not None and d.status["futureField"] == {"nested": [1, None]}
    assert d.status["history"][0]["futureNested"] == "x"
    assert d.status["lastAnalysis"]["verdict"] == "Passed"
    assert prior == with_unknown_keys(first)  # the caller's dict is untouched
    typed = RolloutStatus.from_dict(prior)
    again = ro.advance(spec, typed, ready, sample(), {}, T0 + timedelta(seconds=15),
                       routed=True)
    assert again.status == d.status and typed == RolloutStatus.from_dict(prior)
    b = brownout_statuses()[0]
    shed = bo.advance(spec, {**b, "futureField": 1}, {"baseline": 100, "int8": 0}, None,
                      None, {"int8": ro.Readiness(1)}, None, T0)
    assert shed.status is not None and shed.status["futureField"] == 1
