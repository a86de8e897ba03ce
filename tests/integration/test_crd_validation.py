"""Invalid ModelServices are stopped by the real API server with a message a user understands.

Each case is a bad spec and a fragment of the message the API server must answer with
(CEL rules, enums, bounds and list-map keys of crds/). Cases the schema cannot express are
unit-tested against `msv_operator.spec.parse_spec` (InvalidSpec) in tests/unit/operator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import manifest, model, modelservice

from localcluster import cluster as lc

ROOT = Path(__file__).resolve().parents[2]
MODEL = model(uri="s3://models/x")


def with_model(**spec: Any) -> dict[str, Any]:
    return {"model": dict(MODEL), **spec}


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no-model", {"replicas": 1}, "spec.model: Required value"),
    ("no-uri", {"model": {"framework": "transformers", "task": "text-classification"}},
     "spec.model.uri: Required value"),
    ("bad-scheme", {"model": {**MODEL, "uri": "ftp://host/x"}},
     "spec.model.uri must start with pvc://, file://, http://, https:// or s3://"),
    ("bad-framework", {"model": {**MODEL, "framework": "onnx"}},
     'spec.model.framework: Unsupported value: "onnx"'),
    ("transformers-without-task", {"model": {"uri": "s3://m/x", "framework": "transformers"}},
     "spec.model.task is required when framework is transformers"),
    ("bad-task", {"model": {**MODEL, "task": "translation-xx"}},
     'spec.model.task: Unsupported value: "translation-xx"'),
    ("unserved-task-token-classification", {"model": {**MODEL, "task": "token-classification"}},
     'spec.model.task: Unsupported value: "token-classification"'),
    ("unserved-task-fill-mask", {"model": {**MODEL, "task": "fill-mask"}},
     'spec.model.task: Unsupported value: "fill-mask"'),
    ("unserved-task-feature-extraction", {"model": {**MODEL, "task": "feature-extraction"}},
     'spec.model.task: Unsupported value: "feature-extraction"'),
    ("bad-pvc-claim", {"model": {**MODEL, "uri": "pvc://Bad_Claim/x"}},
     "needs a valid PersistentVolumeClaim name"),
    ("bad-sha256", {"model": {**MODEL, "sha256": "abc"}}, "spec.model.sha256"),
    ("weights-not-100", with_model(
        variants=[{"name": "a"}, {"name": "b"}],
        traffic=[{"variant": "a", "weight": 50}, {"variant": "b", "weight": 40}]),
     "spec.traffic: weights must sum to 100"),
    ("traffic-unknown-variant", with_model(
        variants=[{"name": "a"}], traffic=[{"variant": "zzz", "weight": 100}]),
     "every entry must name a variant listed in spec.variants"),
    ("duplicate-variant", with_model(variants=[{"name": "a"}, {"name": "a"}]),
     "Duplicate value"),
    ("duplicate-traffic", with_model(
        variants=[{"name": "a"}],
        traffic=[{"variant": "a", "weight": 50}, {"variant": "a", "weight": 50}]),
     "Duplicate value"),
    ("variant-uppercase", with_model(variants=[{"name": "Int8"}]),
     "variant names must be lowercase letters, digits and '-'"),
    ("variant-too-long", with_model(variants=[{"name": "a" * 30}]),
     "may not be more than 24"),
    ("no-variants", with_model(variants=[]), "should have at least 1 items"),
    ("weight-over-100", with_model(variants=[{"name": "a"}],
                                   traffic=[{"variant": "a", "weight": 150}]),
     "should be less than or equal to 100"),
    ("min-over-max", with_model(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas must not exceed maxReplicas"),
    ("idle-after-10s", with_model(autoscaling={"minReplicas": 0, "maxReplicas": 2,
                                               "idleAfter": "10s"}),
     "spec.autoscaling.idleAfter must be a duration from 30s to 24h"),
    ("negative-min-replicas", with_model(autoscaling={"minReplicas": -1, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas: Invalid value: -1"),
    ("gpu-count-zero", with_model(gpu={"count": 0}), "spec.gpu.count: Invalid value: 0"),
    ("gpu-bad-resource", with_model(gpu={"count": 1, "resourceName": "gpu"}),
     "must be an extended resource name like nvidia.com/gpu"),
    ("bad-quantization", with_model(variants=[{"name": "a", "optimization":
                                               {"quantization": "int4"}}]),
     'Unsupported value: "int4"'),
    ("pruning-amount-too-big", with_model(variants=[{"name": "a", "optimization": {
        "pruning": {"method": "structured", "amount": 1.5}}}]),
     "should be less than or equal to 0.95"),
    ("pruning-bad-method", with_model(variants=[{"name": "a", "optimization": {
        "pruning": {"method": "random", "amount": 0.3}}}]),
     'Unsupported value: "random"'),
    ("bad-monitoring", with_model(monitoring={"serviceMonitor": "yes"}),
     'Unsupported value: "yes"'),
    ("bad-interval", with_model(monitoring={"interval": "fast"}), "spec.monitoring.interval"),
    ("gateway-without-parents", with_model(gateway={}), "spec.gateway.parentRefs: Required"),
    ("retry-attempts-over-5", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                                  "retry": {"attempts": 6}}),
     "spec.gateway.retry.attempts: Invalid value: 6"),
    ("retry-code-not-5xx", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                               "retry": {"codes": [404]}}),
     "spec.gateway.retry.codes[0]: Invalid value: 404"),
    ("retry-backoff-zero", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                               "retry": {"backoff": "0s"}}),
     "spec.gateway.retry.backoff must be a duration above zero"),
    ("retry-budget-percent-101", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                                     "retry": {"budget": {"percent": 101}}}),
     "spec.gateway.retry.budget.percent: Invalid value: 101"),
    ("retry-budget-interval-2h", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                                     "retry": {"budget": {"interval": "2h"}}}),
     "spec.gateway.retry.budget.interval must be a duration from 1s to 1h"),
    ("retry-budget-floor-interval-0s", with_model(gateway={
        "parentRefs": [{"name": "gw"}],
        "retry": {"budget": {"minRetryRate": {"count": 1, "interval": "0s"}}}}),
     "spec.gateway.retry.budget.minRetryRate.interval must be a duration above zero"),
    ("retry-budget-floor-count-0", with_model(gateway={
        "parentRefs": [{"name": "gw"}], "retry": {"budget": {"minRetryRate": {"count": 0}}}}),
     "spec.gateway.retry.budget.minRetryRate.count: Invalid value: 0"),
    ("variant-header-uppercase", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                                     "variantHeader": "X-Variant"}),
     "spec.gateway.variantHeader must be a lower-case HTTP header name"),
    ("variant-header-host", with_model(gateway={"parentRefs": [{"name": "gw"}],
                                                "variantHeader": "host"}),
     "spec.gateway.variantHeader names a header with a meaning of its own"),
    ("negative-replicas", with_model(replicas=-1), "spec.replicas: Invalid value: -1"),
    ("batch-size-zero", with_model(server={"batching": {"maxBatchSize": 0}}),
     "spec.server.batching.maxBatchSize"),
    ("unknown-field", with_model(replicaz=3), 'unknown field "spec.replicaz"'),
    ("rollout-unknown-candidate", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}], rollout={"candidate": "fp16"}),
     "spec.rollout.candidate must name a variant listed in spec.variants"),
    ("rollout-candidate-is-stable", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 50}, {"variant": "int8", "weight": 50}],
        rollout={"candidate": "int8"}),
     "spec.rollout.candidate must not be a stable variant"),
    ("rollout-candidate-is-implicit-stable", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}], rollout={"candidate": "baseline"}),
     "spec.rollout.candidate must not be a stable variant"),
    ("rollout-steps-not-increasing", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        rollout={"candidate": "int8", "steps": [10, 50, 50, 100]}),
     "spec.rollout.steps must be strictly increasing"),
    ("rollout-steps-decreasing", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        rollout={"candidate": "int8", "steps": [50, 10]}),
     "spec.rollout.steps must be strictly increasing"),
    ("rollout-step-over-100", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        rollout={"candidate": "int8", "steps": [10, 120]}),
     "spec.rollout.steps[1]: Invalid value: 120"),
    ("rollout-bad-duration", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        rollout={"candidate": "int8", "stepDuration": "soon"}),
     "spec.rollout.stepDuration"),
    ("rollout-agreement-without-mirror", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        rollout={"candidate": "int8", "analysis": {"mirrorPercent": 0}}),
     "spec.rollout.analysis.mirrorPercent: the agreement gate needs mirrored requests"),
    ("rollout-without-candidate", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}], rollout={"steps": [50, 100]}),
     "spec.rollout.candidate: Required value"),
    ("brownout-unknown-variant", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "fp16", "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.variant must name a variant listed in spec.variants"),
    ("brownout-variant-is-stable", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 30}, {"variant": "int8", "weight": 70}],
        autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.variant must not be the stable variant"),
    ("brownout-variant-is-implicit-stable", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "baseline", "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.variant must not be the stable variant"),
    ("brownout-without-objective", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8"}}),
     "spec.autoscaling.brownout.latencyObjectiveMs: Required value"),
    ("brownout-share-over-100", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 200,
                                  "maxShare": 120}}),
     "spec.autoscaling.brownout.maxShare"),
    ("brownout-step-zero", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 200, "step": 0}}),
     "spec.autoscaling.brownout.step"),
    ("brownout-zero-objective", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 0}}),
     "spec.autoscaling.brownout.latencyObjectiveMs"),
    ("brownout-bad-duration", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 200,
                                  "releaseAfter": "later"}}),
     "spec.autoscaling.brownout.releaseAfter"),
    ("brownout-candidate-unknown", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"candidates": ["fp16"], "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.candidates: every entry must name a variant listed in "
     "spec.variants"),
    ("brownout-candidate-is-stable", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"candidates": ["int8", "baseline"],
                                  "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.candidates must not name the stable variant"),
    ("brownout-candidates-duplicate", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"candidates": ["int8", "int8"], "latencyObjectiveMs": 200}}),
     "Duplicate value"),
    ("brownout-variant-and-candidates", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "candidates": ["int8"],
                                  "latencyObjectiveMs": 200}}),
     "set variant (a fixed choice) or candidates (the operator chooses among them), not both"),
    ("brownout-floor-with-variant", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"variant": "int8", "minAgreement": 0.9,
                                  "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.minAgreement applies only when the operator chooses"),
    ("brownout-floor-over-1", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        autoscaling={"brownout": {"minAgreement": 1.5, "latencyObjectiveMs": 200}}),
     "spec.autoscaling.brownout.minAgreement"),
    ("brownout-nothing-to-choose", with_model(
        variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic=[{"variant": "baseline", "weight": 50}, {"variant": "int8", "weight": 50}],
        autoscaling={"brownout": {"latencyObjectiveMs": 200}}),
     "without variant the operator chooses among the variants other than the stable one"),
]



@pytest.fixture(scope="module")
def ns(crd: None, cluster: lc.Cluster) -> Iterator[str]:
    name = f"t-crd-validation-{uuid.uuid4().hex[:6]}"
    cluster.kubectl_run("create", "namespace", name, check=False)
    yield name
    cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize(("case", "spec", "message"), CASES, ids=[c[0] for c in CASES])
def test_invalid_manifest_is_rejected(case: str, spec: dict[str, Any], message: str,
                                      cluster: lc.Cluster, ns: str) -> None:
    body = manifest(f"bad-{case}"[:60], ns, spec)
    result = cluster.kubectl_run("apply", "--validate=strict", "-f", "-",
                                 input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert message in result.stderr, result.stderr


def test_valid_manifest_is_accepted_with_defaults(cluster: lc.Cluster, ns: str) -> None:
    body = modelservice("good", ns, model=MODEL, variants=None)  # the CRD's defaults apply
    cluster.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(body))
    ms = cluster.kubectl_json("get", "modelservice", "good", "-n", ns)
    assert ms["spec"]["variants"] == [{"name": "baseline"}]
    assert ms["spec"]["replicas"] == 1
    cluster.kubectl_run("delete", "modelservice", "good", "-n", ns)


def test_valid_rollout_is_accepted(cluster: lc.Cluster, ns: str) -> None:
    body = modelservice(
        "rollout", ns, model=MODEL, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic={"baseline": 100, "int8": 0},
        rollout={"candidate": "int8", "steps": [10, 25, 50, 100], "stepDuration": "1m",
                 "minRequests": 50,
                 "analysis": {"interval": "15s", "window": "1m", "maxLatencyRatio": 1.2,
                              "maxErrorRate": 0.01, "minAgreement": 0.99,
                              "mirrorPercent": 10, "failureLimit": 2}})
    cluster.kubectl_run("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(body))
    ms = cluster.kubectl_json("get", "modelservice", "rollout", "-n", ns)
    assert ms["spec"]["rollout"]["analysis"]["minAgreement"] == 0.99
    wide = cluster.kubectl_run("get", "msv", "rollout", "-n", ns, "-o", "wide").stdout
    assert "ROLLOUT" in wide and "STEP" in wide
    cluster.kubectl_run("delete", "modelservice", "rollout", "-n", ns)


def test_valid_brownout_is_accepted_and_shown(cluster: lc.Cluster, ns: str) -> None:
    body = modelservice(
        "brownout", ns, model=MODEL, variants=[{"name": "baseline"}, {"name": "int8"}],
        traffic={"baseline": 90, "int8": 10},
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "brownout": {
            "variant": "int8", "maxShare": 40, "step": 20, "latencyObjectiveMs": 250.5,
            "engageAfter": "1m", "releaseAfter": "2m", "releaseBelow": 0.8,
            "interval": "15s", "window": "30s"}})
    cluster.kubectl_run("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(body))
    ms = cluster.kubectl_json("get", "modelservice", "brownout", "-n", ns)
    assert ms["spec"]["autoscaling"]["brownout"]["latencyObjectiveMs"] == 250.5
    table = cluster.kubectl_run("get", "msv", "brownout", "-n", ns).stdout
    assert "REPLICAS" in table and "BROWNOUT" in table
    cluster.kubectl_run("delete", "modelservice", "brownout", "-n", ns)


def test_brownout_left_to_the_operator_is_accepted(cluster: lc.Cluster, ns: str) -> None:
    body = modelservice(
        "brownout-chosen", ns, model=MODEL,
        variants=[{"name": "baseline"}, {"name": "int8"}, {"name": "fp16"}],
        traffic={"baseline": 100},
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "brownout": {
            "candidates": ["fp16", "int8"], "minAgreement": 0.95, "latencyObjectiveMs": 250}})
    cluster.kubectl_run("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(body))
    ms = cluster.kubectl_json("get", "modelservice", "brownout-chosen", "-n", ns)
    assert ms["spec"]["autoscaling"]["brownout"]["candidates"] == ["fp16", "int8"]
    assert "variant" not in ms["spec"]["autoscaling"]["brownout"]
    cluster.kubectl_run("delete", "modelservice", "brownout-chosen", "-n", ns)
