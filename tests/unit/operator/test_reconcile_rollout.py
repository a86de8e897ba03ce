"""reconcile's rollout glue: the mirror target, measurements on the analysis interval, pod
usage from metrics.k8s.io (recorded PodMetrics objects)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fakekube import FakeKube
from msv_operator import builders, measure, reconcile, rollout
from msv_operator.config import OperatorConfig
from msv_operator.spec import parse_spec

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def body(**rollout_spec: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://m/x", "framework": "transformers", "task": "text-classification"},
        "variants": [{"name": "baseline"}, {"name": "int8"}],
        "traffic": [{"variant": "baseline", "weight": 100}]}
    if rollout_spec:
        spec["rollout"] = rollout_spec
    return {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}, "spec": spec}


def recorded(items: list[dict[str, Any]]) -> FakeKube:
    """An API answering pod_metrics with recorded metrics.k8s.io PodMetrics objects."""
    kube = FakeKube()
    kube.metrics = items
    return kube

class CountingAnalyzer:
    def __init__(self, sample: rollout.Sample) -> None:
        self.result = sample
        self.calls: list[tuple[float, float | None]] = []

    def sample(self, namespace: str, model: str, variants: Sequence[str],
               window_seconds: float, step_seconds: float | None) -> rollout.Sample:
        self.calls.append((window_seconds, step_seconds))
        return self.result


def pod_metrics(pod: str, variant: str, cpu: str, memory: str) -> dict[str, Any]:
    return {"metadata": {"name": pod, "labels": {builders.LABEL_MODELSERVICE: "sentiment",
                                                 builders.LABEL_VARIANT: variant}},
            "containers": [{"name": "model-server", "usage": {"cpu": cpu, "memory": memory}}]}


def ctx(kube: Any, analyzer: Any) -> reconcile.Context:
    return reconcile.Context(config=OperatorConfig(measure_seconds=60), kube=kube,
                             capabilities=None, analyzer=analyzer)  # type: ignore[arg-type]


def test_mirror_target_is_the_candidate_service_cluster_ip_once_it_exists() -> None:
    spec = parse_spec(body(candidate="int8"))
    decision = rollout.Decision(status={}, weights={}, mirror=True)
    assert reconcile.mirror_for(spec, decision, {}) is None
    live = {("Service", "sentiment-int8"): {"spec": {"clusterIP": "10.96.1.2"}}}
    mirror = reconcile.mirror_for(spec, decision, live)
    assert mirror is not None
    assert (mirror.url, mirror.percent, mirror.variant) == ("http://10.96.1.2:80", 10, "int8")
    tls = body(candidate="int8")
    tls["spec"]["server"] = {"tls": {"secretName": "t"}}
    v6 = {("Service", "sentiment-int8"): {"spec": {"clusterIP": "fd00::5"}}}
    assert reconcile.mirror_for(parse_spec(tls), decision, v6).url == "https://[fd00::5]:80"
    assert reconcile.mirror_for(spec, rollout.Decision({}, {}, mirror=False), live) is None


def test_pod_usage_averages_per_pod_of_each_variant() -> None:
    kube = recorded([pod_metrics("a", "baseline", "250m", "200Mi"),
                         pod_metrics("b", "baseline", "150000000n", "100Mi"),
                         pod_metrics("c", "int8", "100m", "64Mi")])
    usage = measure.pod_usage(ctx(kube, None), parse_spec(body()))
    assert usage == {"baseline": {"cpuMillicores": 200, "memoryBytes": 150 * 2**20},
                     "int8": {"cpuMillicores": 100, "memoryBytes": 64 * 2**20}}
    assert kube.metric_reads == [("ml", f"{builders.LABEL_MODELSERVICE}=sentiment")]
    assert measure.pod_usage(ctx(recorded([]), None), parse_spec(body())) == {}


def test_measurements_refresh_on_the_interval_not_every_pass() -> None:
    sample = rollout.Sample(variants={"int8": rollout.VariantMetrics(p95_ms=12.34, rps=2.0)})
    analyzer = CountingAnalyzer(sample)
    c = ctx(recorded([pod_metrics("c", "int8", "100m", "64Mi")]), analyzer)
    spec = parse_spec(body())
    measured: dict[str, dict[str, Any]] = {}
    m = measure.measure(c, spec, {}, T0, measured)
    assert m.for_rollout is None and m.wait == 60  # no rollout: nothing for the state machine
    assert measured["int8"] == {"p95Ms": 12.3, "rps": 2.0, "cpuMillicores": 100,
                                "memoryBytes": 64 * 2**20}
    again: dict[str, dict[str, Any]] = {}
    m = measure.measure(c, spec, {}, T0 + timedelta(seconds=20), again)
    assert len(analyzer.calls) == 1 and again == {} and m.wait == 40 and m.taken is None
    measure.measure(c, spec, {}, T0 + timedelta(seconds=61), again)
    assert len(analyzer.calls) == 2


def test_a_value_prometheus_no_longer_has_is_dropped_and_an_error_keeps_the_last() -> None:
    stale = {"int8": {"p95Ms": 9.0, "rps": 3.0, "cpuMillicores": 100}}
    now_idle = rollout.Sample(variants={"int8": rollout.VariantMetrics(rps=0.0)})
    c = ctx(recorded([]), CountingAnalyzer(now_idle))
    measured = {v: dict(f) for v, f in stale.items()}
    measure.measure(c, parse_spec(body()), {}, T0, measured)
    assert measured["int8"] == {"rps": 0.0, "cpuMillicores": 100}
    down = ctx(recorded([]), CountingAnalyzer(rollout.Sample(error="unreachable")))
    measured = {v: dict(f) for v, f in stale.items()}
    measure.measure(down, parse_spec(body()), {}, T0, measured)
    assert measured == stale


def test_a_due_analysis_is_measured_with_the_step_age_and_handed_to_the_rollout() -> None:
    analyzer = CountingAnalyzer(rollout.Sample())
    c = ctx(recorded([]), analyzer)
    b = body(candidate="int8")
    spec = parse_spec(b)
    prior = {"rollout": rollout.advance(spec, None, {"int8": rollout.Readiness(1)}, None, {},
                                        T0, routed=True).status}
    got = measure.measure(c, spec, prior, T0 + timedelta(seconds=30), {}).for_rollout
    assert got is not None and analyzer.calls == [(60.0, 30.0)]


def test_without_prometheus_a_due_analysis_is_an_error_sample_that_pauses() -> None:
    b = body(candidate="int8")
    spec = parse_spec(b)
    prior = {"rollout": rollout.advance(spec, None, {"int8": rollout.Readiness(1)}, None, {},
                                        T0, routed=True).status}
    m = measure.measure(ctx(recorded([]), None), spec, prior,
                        T0 + timedelta(seconds=30), {})
    got = m.for_rollout
    assert got is not None and got.error == measure.NO_PROMETHEUS and m.wait is None
    d = rollout.advance(spec, prior["rollout"], {"int8": rollout.Readiness(1)}, got, {},
                        T0 + timedelta(seconds=30), routed=True)
    assert d.status is not None and d.status["reason"] == rollout.METRICS_UNAVAILABLE
    assert "MSV_PROMETHEUS_URL" in d.status["message"]


class RecordedPatches:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)


def test_a_removed_rollout_is_deleted_from_the_status_with_an_explicit_null() -> None:
    kube = RecordedPatches()
    c = ctx(kube, None)
    ms = {**body(), "status": {"traffic": "baseline=100,int8=0",
                               "rollout": {"phase": "Promoted"}}}
    result = reconcile.Result(status={"traffic": "baseline=100,int8=0"})
    reconcile.write_status(c, ms, result)
    assert kube.patches == [{"traffic": "baseline=100,int8=0", "rollout": None}]
    # nothing changed: nothing written
    unchanged = reconcile.Result(status={"traffic": "baseline=100,int8=0"})
    reconcile.write_status(c, {**body(), "status": {"traffic": "baseline=100,int8=0"}},
                           unchanged)
    assert len(kube.patches) == 1 and not unchanged.status_written


def test_a_field_cleared_deep_in_the_status_is_nulled_so_it_does_not_outlive_its_state() -> None:
    """An undecided analysis had a note; the passing one after it has none: the patch must
    remove it (a merge patch keeps what it does not name), at any depth, and leave lists and
    keys the operator does not own alone."""
    kube = RecordedPatches()
    c = ctx(kube, None)
    before = {"rollout": {"phase": "Progressing", "lastAnalysis": {
        "verdict": "Undecided", "message": "undecided: 42 comparisons", "gates": [{"a": 1}]}},
        "somebodyElses": {"x": 1}}
    after = {"rollout": {"phase": "Progressing", "lastAnalysis": {
        "verdict": "Passed", "gates": [{"b": 2}]}}}
    reconcile.write_status(c, {**body(), "status": before}, reconcile.Result(status=after))
    assert kube.patches == [{"rollout": {"phase": "Progressing", "lastAnalysis": {
        "verdict": "Passed", "message": None, "gates": [{"b": 2}]}}}]


def test_every_measured_field_is_one_the_status_writes() -> None:
    from msv_operator import prom, status
    assert set(prom.FIELDS) | {"cpuMillicores", "memoryBytes"} == set(status.MEASURED_KEYS)
