"""tests/manifests.py: the one ModelService factory of the integration and e2e tests."""

from __future__ import annotations

from manifests import INT8, MODEL, MS_API, manifest, model, modelservice


def test_defaults_one_baseline_variant_of_the_s3_sentiment_model() -> None:
    assert modelservice("m", "ns") == {
        "apiVersion": MS_API, "kind": "ModelService",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": {"uri": "s3://models/sentiment", "framework": "transformers",
                           "task": "text-classification"},
                 "variants": [{"name": "baseline"}]}}


def test_keywords_set_spec_fields_traffic_as_a_mapping_or_a_list() -> None:
    spec = modelservice("m", "ns", variants=[{"name": "baseline"}, INT8],
                        traffic={"baseline": 75, "int8": 25}, replicas=2,
                        gpu={"count": 1})["spec"]
    assert spec["variants"][1] == {"name": "int8",
                                   "optimization": {"quantization": "dynamic-int8"}}
    assert spec["traffic"] == [{"variant": "baseline", "weight": 75},
                               {"variant": "int8", "weight": 25}]
    assert (spec["replicas"], spec["gpu"]) == (2, {"count": 1})
    raw = [{"variant": "a", "weight": 50}, {"variant": "a", "weight": 50}]  # kept as given
    assert modelservice("m", "ns", traffic=raw)["spec"]["traffic"] == raw


def test_none_leaves_a_field_out_and_model_changes_the_default_model() -> None:
    assert modelservice("m", "ns", variants=None)["spec"] == {"model": MODEL}
    assert model(uri="s3://m/x", task=None, sha256="ab") == {
        "uri": "s3://m/x", "framework": "transformers", "sha256": "ab"}
    assert modelservice("m", "ns", model=None, variants=None)["spec"] == {}


def test_every_manifest_is_new_so_tests_can_change_and_reapply_it() -> None:
    server = {"resources": {"requests": {"cpu": "50m"}}}
    body = modelservice("m", "ns", server=server)
    body["spec"]["server"]["resources"]["requests"]["cpu"] = "1"
    body["spec"]["model"]["uri"] = "changed"
    body["spec"]["variants"].append(INT8)
    assert server == {"resources": {"requests": {"cpu": "50m"}}}
    assert MODEL["uri"] == "s3://models/sentiment"
    assert modelservice("m", "ns")["spec"]["variants"] == [{"name": "baseline"}]


def test_manifest_wraps_a_spec_exactly() -> None:
    spec = {"replicas": 1}
    body = manifest("bad", "ns", spec)
    assert body == {"apiVersion": MS_API, "kind": "ModelService",
                    "metadata": {"name": "bad", "namespace": "ns"}, "spec": {"replicas": 1}}
    assert body["spec"] is not spec
