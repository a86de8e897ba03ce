"""The shared contract (msv_contract) is the one source of its facts.

- The CRD's enums and the defaults its descriptions state equal the capability table and
  the parser's defaults.
- docs/optimization.md carries the capability table as `python -m msv_contract` prints it.
- No product module outside msv_contract spells the API group, a framework or
  optimization name, or a metric name as a literal: each is read from the contract.
- Both sides agree: the server's settings accept exactly the table's values, the backend
  registry serves exactly its frameworks, and the server exposes every metric the operator
  and the metrics adapter read.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from msv_operator import spec

from msv_contract import api, capabilities, env, metrics, pipeline

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / f"{api.CRD_NAME}.yaml"
PRODUCT_DIRS = ("operator/msv_operator", "model_server", "localcluster")


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["names"]["kind"] == api.KIND
    assert crd["spec"]["names"]["plural"] == api.PLURAL
    assert api.SHORT_NAME in crd["spec"]["names"].get("shortNames", [])
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node = schema
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def test_crd_enums_are_the_capability_table() -> None:
    s = _crd_schema()
    assert _at(s, "model.framework")["enum"] == list(capabilities.FRAMEWORK_NAMES)
    assert _at(s, "model.task")["enum"] == list(capabilities.TASKS)
    optimization = "variants.[].optimization"
    assert _at(s, f"{optimization}.quantization")["enum"] == list(
        capabilities.QUANTIZATION_NAMES)
    assert _at(s, f"{optimization}.pruning.method")["enum"] == list(
        capabilities.PRUNING_METHODS)


def test_crd_build_enums_are_the_pipelines() -> None:
    build = _at(_crd_schema(), "variants.[].build")
    assert _at(build, "recipe")["enum"] == list(pipeline.RECIPES)
    ranking = _at(build, "pruning.ranking")
    assert ranking["enum"] == list(pipeline.RANKINGS)
    assert _default_in(ranking["description"]) == pipeline.DEFAULT_RANKING
    assert _at(build, "pruning.amount")["maximum"] == pipeline.MAX_PRUNE_AMOUNT


def _default_in(description: str) -> str:
    found = re.search(r"Default (.+?)\.?$", description.strip())
    assert found, f"no 'Default ...' in {description!r}"
    return found.group(1)


@pytest.mark.parametrize(("path", "defaults"), [
    ("rollout", spec.ROLLOUT_DEFAULTS),
    ("rollout.analysis", spec.ANALYSIS_DEFAULTS),
    ("autoscaling.brownout", spec.BROWNOUT_DEFAULTS),
    ("gateway.retry", spec.GATEWAY_RETRY_DEFAULTS),
    ("gateway.retry.budget", spec.RETRY_BUDGET_DEFAULTS),
    ("gateway.retry.budget.minRetryRate", spec.MIN_RETRY_RATE_DEFAULTS),
])
def test_crd_descriptions_state_the_parser_defaults(path: str, defaults: Mapping[str, Any]
                                                    ) -> None:
    props = _at(_crd_schema(), path)["properties"]
    for field, value in defaults.items():
        shown = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert _default_in(props[field]["description"]) == shown, f"spec.{path}.{field}"


def test_crd_bounds_the_agreement_gate_as_the_parser_does() -> None:
    props = _at(_crd_schema(), "rollout.analysis")["properties"]
    confidence = props["agreementConfidence"]
    assert (confidence["minimum"], confidence["maximum"]) == spec.AGREEMENT_CONFIDENCE_RANGE
    # no finite sample shows an agreement of 1: both refuse it
    assert props["minAgreement"]["maximum"] == 1 and props["minAgreement"]["exclusiveMaximum"]
    body = {"metadata": {"name": "m", "namespace": "n"}, "spec": {
        "model": {"uri": "file:///m", "framework": "transformers", "task": "text-generation"},
        "variants": [{"name": "a"}, {"name": "b"}],
        "traffic": [{"variant": "a", "weight": 100}],
        "rollout": {"candidate": "b", "analysis": {"minAgreement": 1}}}}
    with pytest.raises(spec.InvalidSpecError, match=r"^spec\.rollout\.analysis\.minAgreement"):
        spec.parse_spec(body)
    lo, hi = spec.AGREEMENT_CONFIDENCE_RANGE
    for level in (lo, hi):
        body["spec"]["rollout"]["analysis"] = {"agreementConfidence": level}
        parsed = spec.parse_spec(body).rollout
        assert parsed is not None and parsed.analysis.agreement_confidence == level


def test_parser_applies_the_defaults() -> None:
    body = {"metadata": {"name": "m", "namespace": "n"}, "spec": {
        "model": {"uri": "file:///m", "framework": "transformers", "task": "text-generation"},
        "variants": [{"name": "a"}, {"name": "b"}],
        "traffic": [{"variant": "a", "weight": 100}],
        "rollout": {"candidate": "b"},
        "autoscaling": {"brownout": {"variant": "b", "latencyObjectiveMs": 100}}}}
    parsed = spec.parse_spec(body)
    assert parsed.rollout == spec.Rollout(candidate="b")
    assert parsed.rollout.steps == spec.ROLLOUT_DEFAULTS["steps"]
    assert parsed.rollout.analysis.window_seconds == 60.0
    assert parsed.rollout.analysis.min_agreement == spec.ANALYSIS_DEFAULTS["minAgreement"]
    assert parsed.autoscaling is not None
    assert parsed.autoscaling.brownout == spec.Brownout(variant="b", objective_ms=100.0)
    assert parsed.autoscaling.brownout.release_seconds == 120.0


def test_crd_brownout_choice_fields_match_the_parser() -> None:
    """Variant optional; candidates and minAgreement bounded as parse_brownout checks them,
    with admission rules for what the parser refuses across fields."""
    s = _crd_schema()
    b = _at(s, "autoscaling.brownout")
    assert b["required"] == ["latencyObjectiveMs"]
    props = b["properties"]
    assert props["candidates"]["maxItems"] == _at(s, "variants")["maxItems"]
    assert props["candidates"]["x-kubernetes-list-type"] == "set"
    assert props["candidates"]["items"]["maxLength"] == props["variant"]["maxLength"]
    assert (props["minAgreement"]["minimum"], props["minAgreement"]["maximum"]) == (0, 1)
    rules = [r["message"] for r in b["x-kubernetes-validations"]] + [
        r["message"] for r in s["x-kubernetes-validations"]]
    for fragment in ("not both", "minAgreement applies only when the operator chooses",
                     "candidates: every entry must name a variant",
                     "candidates must not name the stable variant",
                     "without variant the operator chooses"):
        assert any(fragment in m for m in rules), fragment
    body = {"metadata": {"name": "m", "namespace": "n"}, "spec": {
        "model": {"uri": "file:///m", "framework": "transformers", "task": "text-generation"},
        "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "autoscaling": {"brownout": {"latencyObjectiveMs": 100}}}}
    parsed = spec.parse_spec(body)
    assert parsed.autoscaling is not None and parsed.autoscaling.brownout is not None
    assert parsed.autoscaling.brownout.candidates == ("b", "c")


def test_docs_carry_the_capability_table() -> None:
    text = (ROOT / "docs" / "optimization.md").read_text()
    assert capabilities.markdown_table() in text, (
        "docs/optimization.md: paste the output of `python -m msv_contract`")


def test_every_framework_names_its_runtime_extra_and_known_values() -> None:
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for fw in capabilities.FRAMEWORKS.values():
        assert fw.extra in extras, fw.name
        assert set(fw.quantizations) <= set(capabilities.QUANTIZATION_NAMES), fw.name
        assert set(fw.pruning) <= set(capabilities.PRUNING_METHODS), fw.name
        assert set(fw.tasks) <= set(capabilities.TASKS), fw.name
        assert capabilities.NONE in fw.quantizations, fw.name
        full = set(fw.quantizations) == set(capabilities.QUANTIZATION_NAMES) and set(
            fw.pruning) == set(capabilities.PRUNING_METHODS)
        assert full or fw.unsupported_optimization, f"{fw.name}: say why some are refused"
        assert fw.model_files, fw.name


def test_unsupported_optimizations_are_refused_with_the_table_message() -> None:
    for fw in capabilities.FRAMEWORKS.values():
        for quant in capabilities.QUANTIZATION_NAMES:
            for method in (capabilities.NONE, *capabilities.PRUNING_METHODS):
                variant: dict[str, Any] = {"name": "v", "optimization": {"quantization": quant}}
                if method != capabilities.NONE:
                    variant["optimization"]["pruning"] = {"method": method, "amount": 0.3}
                body = {"metadata": {"name": "m", "namespace": "n"}, "spec": {
                    "model": {"uri": "file:///m", "framework": fw.name,
                              "task": "text-classification"},
                    "variants": [variant]}}
                if capabilities.supports(fw.name, quant, method):
                    spec.parse_spec(body)
                else:
                    with pytest.raises(spec.InvalidSpecError) as err:
                        spec.parse_spec(body)
                    assert str(err.value) == (
                        f"spec.variants[0].optimization: {fw.unsupported_optimization}")


# -- one source: literals stay in the contract ------------------------------------------------


def _product_lines() -> Iterator[tuple[str, int, str]]:
    for top in PRODUCT_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            in_doc = False
            for n, line in enumerate(path.read_text().splitlines(), 1):
                stripped = line.strip()
                # docstrings and comments describe; code must read the contract
                quotes = stripped.count('"""')
                if in_doc or stripped.startswith(('"""', "#")):
                    if quotes == 1:
                        in_doc = not in_doc
                    continue
                yield str(path.relative_to(ROOT)), n, line


def _literal_uses(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p}:{n}: {line.strip()}" for p, n, line in _product_lines() if rx.search(line)]


def test_api_group_is_spelled_only_in_the_contract() -> None:
    assert _literal_uses(re.escape(api.GROUP)) == []


def test_metric_names_are_spelled_only_in_the_contract() -> None:
    assert _literal_uses(r"[\"']" + metrics.PREFIX + r"\w+") == []


IMPLEMENTATIONS = re.compile(r"^model_server/(backends/\w+_backend\.py|optimize/)")
"""A framework's backend module names its own framework and the optimizations it applies,
and optimize/ implements them: that is where the code of a new framework or optimization
goes. Every other module reads the names from the capability table."""


def test_framework_and_quantization_names_are_spelled_only_in_the_contract() -> None:
    names = [*capabilities.FRAMEWORK_NAMES,
             *(q for q in capabilities.QUANTIZATION_NAMES if q != capabilities.NONE)]
    quoted = "|".join(re.escape(n) for n in names)
    uses = _literal_uses(rf"[\"']({quoted})[\"']")
    assert [u for u in uses if not IMPLEMENTATIONS.match(u)] == []


# -- both sides agree -------------------------------------------------------------------------


def test_server_settings_accept_exactly_the_table() -> None:
    from model_server.settings import Settings

    fields = Settings.model_fields
    assert typing.get_args(fields["framework"].annotation) == (
        "auto", *capabilities.FRAMEWORK_NAMES)
    assert typing.get_args(fields["quantization"].annotation) == capabilities.QUANTIZATION_NAMES
    assert typing.get_args(fields["pruning_method"].annotation) == (
        capabilities.NONE, *capabilities.PRUNING_METHODS)
    assert typing.get_args(fields["device"].annotation) == ("auto", *capabilities.DEVICES)
    for name in ("MODEL_NAME", "MODEL_DIR", "FRAMEWORK", "QUANTIZATION", "MIRROR_FILE"):
        setting = getattr(env, name).removeprefix(env.PREFIX).lower()
        assert setting in fields, name


def test_backend_registry_serves_the_table() -> None:
    from model_server import backends

    assert backends.FRAMEWORKS == capabilities.FRAMEWORK_NAMES
    with pytest.raises(Exception, match="unknown framework 'onnx'"):
        backends.create_backend("onnx")


def test_server_exposes_what_the_operator_and_adapter_read() -> None:
    from msv_operator import builders, prom
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest

    from localcluster import monitoring
    from model_server.metrics import MirrorMetrics, ServerMetrics

    registry = CollectorRegistry()
    server = ServerMetrics(registry, "m", "v", process_metrics=False)
    server.hot.observe("infer", 200, 0.01)
    MirrorMetrics(registry, "m", "v", "c").agreement.observe(1.0)
    exposed = generate_latest(registry).decode()
    series = set(re.findall(r"^(\w+)\{", exposed, re.M))
    for name in (prom.REQUESTS, prom.DURATION, f"{prom.AGREEMENT}_sum", prom.PARAMETERS,
                 prom.SIZE, builders.INFLIGHT_METRIC):
        assert name in series, name
    for rule in monitoring.ADAPTER_CONFIG["rules"]:
        assert rule["seriesQuery"].split("{")[0] in series
    labels = set(re.findall(r"(\w+)=\"", exposed))
    assert {metrics.LABEL_MODEL, metrics.LABEL_VARIANT, metrics.LABEL_STATUS,
            metrics.LABEL_TARGET} <= labels
