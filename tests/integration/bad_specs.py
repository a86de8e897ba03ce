"""Bad ModelServices for the admission/Stalled tests: (id, spec overrides, field the refusal
must name). Overrides replace top-level keys of ``manifests.modelservice``'s spec."""

from __future__ import annotations

from typing import Any

from manifests import model


def one(variant: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"variants": [{"name": "v", **variant}], **spec}


AB = [{"name": "a"}, {"name": "b"}]

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("weights-90", {"variants": AB, "traffic": [{"variant": "a", "weight": 50},
                                                {"variant": "b", "weight": 40}]},
     "spec.traffic"),
    ("traffic-unknown-variant", {"variants": [{"name": "a"}],
                                 "traffic": [{"variant": "zzz", "weight": 100}]},
     "spec.traffic"),
    ("traffic-listed-twice", {"variants": AB, "traffic": [{"variant": "a", "weight": 50},
                                                          {"variant": "a", "weight": 50}]},
     "spec.traffic"),
    ("traffic-weight-101", {"variants": [{"name": "a"}],
                            "traffic": [{"variant": "a", "weight": 101}]},
     "spec.traffic[0].weight"),
    ("traffic-weight-string", {"variants": [{"name": "a"}],
                               "traffic": [{"variant": "a", "weight": "100"}]},
     "spec.traffic[0].weight"),
    ("variants-duplicate", {"variants": [{"name": "a"}, {"name": "a"}]}, "spec.variants"),
    ("variant-name-upper", {"variants": [{"name": "Int8"}]}, "spec.variants[0].name"),
    ("variant-name-too-long", {"variants": [{"name": "v" * 62}]}, "spec.variants[0].name"),
    ("variant-not-an-object", {"variants": ["a"]}, "spec.variants[0]"),
    ("quantization-int4", one({"optimization": {"quantization": "int4"}}),
     "spec.variants[0].optimization.quantization"),
    ("pruning-method-random", one({"optimization": {"pruning": {"method": "random",
                                                                "amount": 0.2}}}),
     "spec.variants[0].optimization.pruning.method"),
    ("pruning-amount-1", one({"optimization": {"pruning": {"method": "unstructured",
                                                           "amount": 1.0}}}),
     "spec.variants[0].optimization.pruning.amount"),
    ("pruning-amount-negative", one({"optimization": {"pruning": {"method": "unstructured",
                                                                  "amount": -0.1}}}),
     "spec.variants[0].optimization.pruning.amount"),
    ("torchscript-int8", one({"optimization": {"quantization": "dynamic-int8"}},
                             model=model(framework="torchscript", task=None)),
     "spec.variants[0].optimization"),
    ("tensorflow-bfloat16", one({"optimization": {"quantization": "bfloat16"}},
                                model=model(framework="tensorflow", task=None)),
     "spec.variants[0].optimization"),
    ("tensorflow-structured", one({"optimization": {"pruning": {"method": "structured",
                                                                "amount": 0.3}}},
                                  model=model(framework="tensorflow", task=None)),
     "spec.variants[0].optimization"),
    ("variant-replicas-negative", one({"replicas": -1}), "spec.variants[0].replicas"),
    ("variant-model-gopher", one({"model": {"uri": "gopher://host/x"}}),
     "spec.variants[0].model.uri"),
    ("uri-ftp", {"model": model(uri="ftp://models/x")}, "spec.model.uri"),
    ("uri-no-scheme", {"model": model(uri="models/x")}, "spec.model.uri"),
    ("uri-pvc-bad-claim", {"model": model(uri="pvc://Bad_Claim/x")}, "spec.model.uri"),
    ("uri-s3-no-bucket", {"model": model(uri="s3:///x")}, "spec.model.uri"),
    ("framework-onnx", {"model": model(framework="onnx")}, "spec.model.framework"),
    ("task-missing", {"model": model(task=None)}, "spec.model.task"),
    ("task-fill-mask", {"model": model(task="fill-mask")}, "spec.model.task"),
    ("replicas-negative", {"replicas": -1}, "spec.replicas"),
    ("replicas-5000", {"replicas": 5000}, "spec.replicas"),
    ("gpu-zero", {"gpu": {"count": 0}}, "spec.gpu.count"),
    ("gpu-17", {"gpu": {"count": 17}}, "spec.gpu.count"),
    ("autoscaling-min-over-max", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
     "spec.autoscaling"),
    ("autoscaling-idle-10s", {"autoscaling": {"minReplicas": 0, "maxReplicas": 2,
                                              "idleAfter": "10s"}},
     "spec.autoscaling.idleAfter"),
    ("batch-size-0", {"server": {"batching": {"maxBatchSize": 0}}},
     "spec.server.batching.maxBatchSize"),
    ("batch-delay-2000", {"server": {"batching": {"maxDelayMs": 2000}}},
     "spec.server.batching.maxDelayMs"),
    ("token-secret-bad-name", {"server": {"auth": {"tokenSecret": "Bad_Secret"}}},
     "spec.server.auth.tokenSecret"),
    ("tls-secret-bad-name", {"server": {"tls": {"secretName": "-x"}}},
     "spec.server.tls.secretName"),
    ("brownout-candidate-unknown", {"variants": AB, "autoscaling": {"brownout": {
        "candidates": ["zzz"], "latencyObjectiveMs": 200}}},
     "spec.autoscaling.brownout.candidates"),
    ("brownout-candidate-stable", {"variants": AB, "autoscaling": {"brownout": {
        "candidates": ["a"], "latencyObjectiveMs": 200}}},
     "spec.autoscaling.brownout.candidates"),
    ("brownout-variant-and-candidates", {"variants": AB, "autoscaling": {"brownout": {
        "variant": "b", "candidates": ["b"], "latencyObjectiveMs": 200}}},
     "spec.autoscaling.brownout"),
    ("brownout-floor-with-variant", {"variants": AB, "autoscaling": {"brownout": {
        "variant": "b", "minAgreement": 0.9, "latencyObjectiveMs": 200}}},
     "spec.autoscaling.brownout.minAgreement"),
    ("brownout-nothing-to-choose", {"variants": AB, "traffic": [
        {"variant": "a", "weight": 50}, {"variant": "b", "weight": 50}],
        "autoscaling": {"brownout": {"latencyObjectiveMs": 200}}},
     "spec.autoscaling.brownout"),
]
