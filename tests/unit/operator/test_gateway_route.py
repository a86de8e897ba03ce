"""The HTTPRoute the operator writes (weights from every source, retries, the header canary)
and the XBackendTrafficPolicy with its retry budget, the spec fields behind them
(spec.gateway.retry with its budget, spec.gateway.variantHeader: parser, CRD, the example),
and the discovery of rules[].retry in the cluster's HTTPRoute CRD."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from msv_operator import builders as b
from msv_operator import kube, rollout
from msv_operator import spec as sp
from msv_operator.config import uniform_images
from msv_operator.spec import InvalidSpecError, parse_spec

from msv_contract import api

ROOT = Path(__file__).resolve().parents[3]
WITH_RETRY = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=False, gateway_api=True,
                            gateway_retry=True)
NO_RETRY = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=False, gateway_api=True,
                          gateway_retry=False)
TWO = {"variants": [{"name": "baseline"},
                    {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}],
       "traffic": [{"variant": "baseline", "weight": 100}]}


def ms(gateway: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "s3://models/sst2", "framework": "transformers",
                  "task": "text-classification"},
        "gateway": {"parentRefs": [{"name": "msv-gateway", "namespace": "msv-gateway"}],
                    **(gateway or {})}}
    base.update(spec)
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "uid-1"}, "spec": base}


def route_of(body: dict[str, Any], opts: b.BuildOptions = WITH_RETRY,
             weights: dict[str, int] | None = None) -> dict[str, Any]:
    spec = parse_spec(body)
    serving = b.Serving(weights) if weights is not None else None
    (route,) = [o for o in b.build_all(body, opts, spec, serving) if o["kind"] == "HTTPRoute"]
    return dict(route["spec"])


def weighted(route: dict[str, Any]) -> dict[str, int]:
    """The last rule's backends (the weighted rule) as name -> weight."""
    return {r["name"]: r["weight"] for r in route["rules"][-1]["backendRefs"]}


# ---- weights ----------------------------------------------------------------------------------

def test_spec_weights_reach_the_route_and_a_variant_at_zero_is_listed_at_zero() -> None:
    body = ms(variants=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
              traffic=[{"variant": "a", "weight": 70}, {"variant": "b", "weight": 30}])
    # c has no spec.traffic entry: it is listed at weight 0 (Gateway API: no request to it)
    assert weighted(route_of(body)) == {"sentiment-a": 70, "sentiment-b": 30, "sentiment-c": 0}


def test_rollout_step_and_brownout_weights_reach_the_route() -> None:
    body = ms(**TWO, rollout={"candidate": "int8"})
    spec = parse_spec(body)
    # the rollout's first step: 10% to the candidate, the rest to the stable variant
    step = rollout.step_weights(spec, "int8", spec.rollout.steps[0])  # type: ignore[union-attr]
    assert weighted(route_of(body, weights=step)) == {
        "sentiment-baseline": 90, "sentiment-int8": 10}
    promoted = rollout.step_weights(spec, "int8", 100)
    assert weighted(route_of(body, weights=promoted)) == {
        "sentiment-baseline": 0, "sentiment-int8": 100}
    # a brownout's share (brownout.shifted_weights is the same split)
    brown = ms(**TWO, autoscaling={"brownout": {"variant": "int8", "latencyObjectiveMs": 50}})
    from msv_operator import brownout
    bspec = parse_spec(brown)
    assert bspec.autoscaling is not None and bspec.autoscaling.brownout is not None
    shifted = brownout.shifted_weights(bspec, bspec.autoscaling.brownout, 40)
    assert weighted(route_of(brown, weights=shifted)) == {
        "sentiment-baseline": 60, "sentiment-int8": 40}


def test_one_variant_routes_to_the_stable_service() -> None:
    route = route_of(ms())
    assert route["parentRefs"] == [{"name": "msv-gateway", "namespace": "msv-gateway"}]
    assert route["rules"][-1]["backendRefs"] == [{"name": "sentiment", "port": 80,
                                                  "weight": 100}]


# ---- retries ----------------------------------------------------------------------------------

def test_retries_are_on_by_default_with_two_attempts_on_503() -> None:
    route = route_of(ms(**TWO, gateway={"variantHeader": "x-msv-variant"}))
    assert [r["retry"] for r in route["rules"]] == [{"attempts": 2, "codes": [503]}] * 3


def test_retry_settings_reach_every_rule() -> None:
    route = route_of(ms(gateway={"retry": {"attempts": 5, "codes": [502, 503, 504],
                                           "backoff": "100ms"}}))
    assert route["rules"][0]["retry"] == {"attempts": 5, "codes": [502, 503, 504],
                                          "backoff": "100ms"}
    # no codes: connection failures only
    route = route_of(ms(gateway={"retry": {"codes": []}}))
    assert route["rules"][0]["retry"] == {"attempts": 2}


def test_retries_off_or_not_in_the_crd_are_not_written() -> None:
    off = route_of(ms(gateway={"retry": {"attempts": 0}}))
    assert all("retry" not in r for r in off["rules"])
    standard = route_of(ms(gateway={"variantHeader": "x-v"}, **TWO), opts=NO_RETRY)
    assert all("retry" not in r for r in standard["rules"])


# ---- header canary ----------------------------------------------------------------------------

def test_header_rules_come_first_one_per_variant_to_its_own_service() -> None:
    route = route_of(ms(gateway={"variantHeader": "x-msv-variant"}, **TWO))
    rules = route["rules"]
    assert len(rules) == 3
    for rule, variant in zip(rules[:2], ("baseline", "int8"), strict=True):
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [
            {"type": "Exact", "name": "x-msv-variant", "value": variant}]}]
        assert rule["backendRefs"] == [{"name": f"sentiment-{variant}", "port": 80}]
    # the weighted rule last, matching every request without a header condition: a header
    # that names no variant matches no header rule and gets normal routing
    assert rules[2]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert weighted(route) == {"sentiment-baseline": 100, "sentiment-int8": 0}


def test_no_header_rules_unless_asked() -> None:
    route = route_of(ms(**TWO))
    assert len(route["rules"]) == 1
    assert "headers" not in route["rules"][0]["matches"][0]


def test_header_rule_of_a_single_variant_uses_the_stable_service() -> None:
    route = route_of(ms(gateway={"variantHeader": "x-msv-variant"}))
    assert route["rules"][0]["backendRefs"] == [{"name": "sentiment", "port": 80}]


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_route_is_valid_against_gateway_api_crds() -> None:
    """The built route (header rules, retries) validates against the experimental-channel
    HTTPRoute CRD of the pinned Gateway API module, and without retry against the standard
    channel's (jsonschema: the structural parts; CEL rules are the API server's)."""
    import jsonschema

    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "sentiment"},
             "spec": route_of(ms(gateway={"variantHeader": "x-msv-variant",
                                          "retry": {"backoff": "100ms"}}, **TWO))}
    plain = {**route, "spec": route_of(ms(gateway={"variantHeader": "x-msv-variant"}, **TWO),
                                       opts=NO_RETRY)}
    for channel, obj in (("experimental", route), ("standard", plain)):
        crd = _gateway_crd(channel)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        jsonschema.validate(obj, schema)
        _known_fields(obj["spec"], schema["properties"]["spec"], f"{channel}: spec")
        assert kube.http_route_retry(crd) is (channel == "experimental")
        assert crd["metadata"]["annotations"][kube.GATEWAY_CHANNEL_ANNOTATION] == channel


def _known_fields(value: Any, schema: dict[str, Any], where: str) -> None:
    """Every key of ``value`` is in ``schema`` (the API server would drop it silently, and
    every pass would then find the route drifted)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in value.items():
            assert key in props, f"{where}.{key} is not in the HTTPRoute schema"
            _known_fields(sub, props[key], f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _known_fields(item, schema.get("items") or {}, f"{where}[{i}]")


def _gateway_crd(channel: str) -> dict[str, Any]:
    from localcluster import addons, versions

    root = addons.module_dir("sigs.k8s.io/gateway-api", versions.GATEWAY_API)
    path = root / "config" / "crd" / channel / "gateway.networking.k8s.io_httproutes.yaml"
    return dict(yaml.safe_load(path.read_text()))


def test_retry_discovery_reads_the_v1_schema() -> None:
    def crd(rule_props: dict[str, Any], version: str = "v1") -> dict[str, Any]:
        return {"spec": {"versions": [{"name": version, "schema": {"openAPIV3Schema": {
            "properties": {"spec": {"properties": {"rules": {"items": {
                "properties": rule_props}}}}}}}}]}}

    assert kube.http_route_retry(crd({"matches": {}, "retry": {}}))
    assert not kube.http_route_retry(crd({"matches": {}}))
    assert not kube.http_route_retry(crd({"retry": {}}, version="v1beta1"))
    assert not kube.http_route_retry({})


# ---- spec parsing -----------------------------------------------------------------------------

def test_parser_defaults_and_values() -> None:
    parsed = parse_spec(ms())
    assert parsed.gateway_retry == sp.Retry(attempts=2, codes=(503,), backoff=None)
    assert parsed.variant_header is None
    parsed = parse_spec(ms(gateway={"variantHeader": "x-msv-variant", "retry": {
        "attempts": 0, "codes": [500, 503], "backoff": "1s"}}))
    assert parsed.gateway_retry == sp.Retry(attempts=0, codes=(500, 503), backoff="1s")
    assert parsed.variant_header == "x-msv-variant"


@pytest.mark.parametrize(("gateway", "message"), [
    ({"retry": {"attempts": 6}}, "spec.gateway.retry.attempts: 6 is outside [0, 5]"),
    ({"retry": {"attempts": -1}}, "spec.gateway.retry.attempts: -1 is outside [0, 5]"),
    ({"retry": {"attempts": "2"}}, "spec.gateway.retry.attempts: expected an integer"),
    ({"retry": {"codes": [404]}}, "spec.gateway.retry.codes[0]: 404 is outside [500, 599]"),
    ({"retry": {"codes": [503, 503]}}, "spec.gateway.retry.codes[1]: 503 is listed twice"),
    ({"retry": {"codes": 503}}, "spec.gateway.retry.codes: expected a list"),
    ({"retry": {"backoff": "fast"}}, "spec.gateway.retry.backoff: 'fast' is not a duration"),
    ({"retry": {"backoff": "0ms"}}, "spec.gateway.retry.backoff: '0ms' must be longer"),
    ({"retry": {"backoff": "100000ms"}}, "spec.gateway.retry.backoff: '100000ms' has more"),
    ({"retry": 3}, "spec.gateway.retry: expected an object"),
    ({"variantHeader": "X-Msv-Variant"}, "spec.gateway.variantHeader: 'X-Msv-Variant' is not "
                                         "a lower-case HTTP header name"),
    ({"variantHeader": "x msv"}, "is not a lower-case HTTP header name"),
    ({"variantHeader": "-x"}, "is not a lower-case HTTP header name"),
    ({"variantHeader": "x" * 65}, "at most 64 characters"),
    ({"variantHeader": 7}, "spec.gateway.variantHeader: 7 is not"),
    ({"variantHeader": "host"}, "spec.gateway.variantHeader: 'host' has a meaning of its own"),
    ({"variantHeader": "authorization"}, "has a meaning of its own"),
])
def test_bad_gateway_fields_name_the_field(gateway: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpecError) as e:
        parse_spec(ms(gateway=gateway))
    assert message in str(e.value)


def test_gateway_that_is_not_an_object_is_refused() -> None:
    body = ms()
    body["spec"]["gateway"] = "msv-gateway"
    with pytest.raises(InvalidSpecError, match=r"spec\.gateway: expected an object"):
        parse_spec(body)


# ---- the CRD says the same at admission -------------------------------------------------------

def _gateway_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"{api.CRD_NAME}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "gateway"])


def _cel_regex(rule: str) -> str:
    found = re.search(r"matches\('([^']*)'\)", rule)
    assert found, rule
    return found.group(1)


def test_crd_retry_bounds_are_the_parsers() -> None:
    retry = _gateway_schema()["properties"]["retry"]["properties"]
    assert (retry["attempts"]["minimum"], retry["attempts"]["maximum"]) == (
        0, sp.RETRY_MAX_ATTEMPTS)
    assert (retry["codes"]["items"]["minimum"], retry["codes"]["items"]["maximum"]) == (500, 599)
    assert retry["codes"]["x-kubernetes-list-type"] == "set"  # duplicates refused
    (rule,) = retry["backoff"]["x-kubernetes-validations"]
    assert _cel_regex(rule["rule"]) == sp.GATEWAY_DURATION.pattern
    assert rule["message"].startswith("spec.gateway.retry.backoff")


@pytest.mark.parametrize(("retry", "valid"), [
    ({"attempts": 0}, True), ({"attempts": 5, "codes": [500, 599]}, True),
    ({"attempts": 6}, False), ({"attempts": -1}, False), ({"codes": [404]}, False),
    ({"codes": [600]}, False), ({"codes": ["503"]}, False),
])
def test_crd_schema_admits_what_the_parser_admits(retry: dict[str, Any], valid: bool) -> None:
    import jsonschema

    schema = _gateway_schema()
    gateway = {"parentRefs": [{"name": "gw"}], "retry": retry}
    try:
        jsonschema.validate(gateway, schema)
        admitted = True
    except jsonschema.ValidationError:
        admitted = False
    assert admitted is valid
    try:
        parse_spec(ms(gateway={"retry": retry}))
        parsed = True
    except InvalidSpecError:
        parsed = False
    assert parsed is valid


def test_crd_variant_header_rules_are_the_parsers() -> None:
    header = _gateway_schema()["properties"]["variantHeader"]
    assert header["maxLength"] == sp.HEADER_NAME_MAX
    shape, reserved = header["x-kubernetes-validations"]
    assert _cel_regex(shape["rule"]) == sp.HEADER_NAME.pattern
    listed = re.findall(r"'([^']*)'", reserved["rule"])
    assert tuple(listed) == sp.RESERVED_HEADERS
    for rule in (shape, reserved):
        assert rule["message"].startswith("spec.gateway.variantHeader")
    pattern = re.compile(_cel_regex(shape["rule"]))
    for good in ("x-msv-variant", "variant", "x1"):
        assert pattern.match(good)
    for bad in ("X-Msv-Variant", "x_msv", "-x", "x-", "x msv", ""):
        assert not pattern.match(bad)


def test_crd_copy_in_the_chart_carries_the_new_fields() -> None:
    chart = yaml.safe_load((ROOT / "helm" / "modelservice-operator" / "files" /
                            f"{api.CRD_NAME}.yaml").read_text())
    (version,) = [v for v in chart["spec"]["versions"] if v["name"] == api.VERSION]
    gateway = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gateway"]
    assert {"retry", "variantHeader"} <= set(gateway["properties"])


# ---- the retry budget (XBackendTrafficPolicy) -------------------------------------------------

BUDGETED = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=False, gateway_api=True,
                          gateway_retry=True, retry_budget=True)
OWNER = {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "sentiment", "uid": "uid-1",
         "controller": True, "blockOwnerDeletion": True}


def policies_of(body: dict[str, Any], opts: b.BuildOptions = BUDGETED) -> list[dict[str, Any]]:
    return [o for o in b.build_all(body, opts) if o["kind"] == "XBackendTrafficPolicy"]


def test_two_variants_get_one_policy_with_gateway_apis_defaults() -> None:
    (policy,) = policies_of(ms(**TWO))
    assert policy == {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackendTrafficPolicy",
        "metadata": {"name": "sentiment", "namespace": "ml",
                     "labels": {"app.kubernetes.io/name": "modelservice",
                                "app.kubernetes.io/instance": "sentiment",
                                "app.kubernetes.io/managed-by": api.MANAGED_BY,
                                api.LABEL_MODELSERVICE: "sentiment"},
                     "ownerReferences": [OWNER]},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "sentiment-baseline"},
                                {"group": "", "kind": "Service", "name": "sentiment-int8"}],
                 "retryConstraint": {"budget": {"percent": 20, "interval": "10s"},
                                     "minRetryRate": {"count": 10, "interval": "1s"}}}}
    # what discovery asks for and the LIST/apply paths use is this kind
    assert (policy["apiVersion"], kube.plural_of(policy["kind"])) == kube.RETRY_BUDGET_API


def test_the_policy_targets_exactly_the_services_the_route_names() -> None:
    for body in (ms(**TWO), ms(), ms(gateway={"variantHeader": "x-v"}, **TWO),
                 ms(variants=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
                    traffic=[{"variant": "a", "weight": 100}])):
        (policy,) = policies_of(body)
        route = route_of(body, BUDGETED)
        named = {ref["name"] for rule in route["rules"] for ref in rule["backendRefs"]}
        targets = [t["name"] for t in policy["spec"]["targetRefs"]]
        assert sorted(targets) == sorted(named) and len(targets) == len(set(targets))
    # one variant: the stable Service, which the route names
    (policy,) = policies_of(ms())
    assert policy["spec"]["targetRefs"] == [{"group": "", "kind": "Service", "name": "sentiment"}]


def test_the_spec_budget_is_written_and_the_policy_comes_before_the_route() -> None:
    body = ms(gateway={"retry": {"budget": {"percent": 5, "interval": "1m",
                                            "minRetryRate": {"count": 3, "interval": "500ms"}}}},
              **TWO)
    kinds = [o["kind"] for o in b.build_all(body, BUDGETED)]
    assert kinds.index("XBackendTrafficPolicy") == kinds.index("HTTPRoute") - 1
    (policy,) = policies_of(body)
    assert policy["spec"]["retryConstraint"] == {
        "budget": {"percent": 5, "interval": "1m"},
        "minRetryRate": {"count": 3, "interval": "500ms"}}


@pytest.mark.parametrize(("body", "opts"), [
    (ms(gateway={"retry": {"attempts": 0, "budget": {"percent": 5}}}, **TWO), BUDGETED),
    (ms(gateway={"retry": {"budget": {"percent": 5}}}, **TWO), WITH_RETRY),  # kind not served
    ({**ms(**TWO), "spec": {k: v for k, v in ms(**TWO)["spec"].items() if k != "gateway"}},
     BUDGETED),
    (ms(**TWO), b.BuildOptions(uniform_images("ms:cpu"), service_monitor=False,
                               gateway_api=False, retry_budget=True)),
])
def test_no_policy_without_retries_route_or_kind(body: dict[str, Any],
                                                 opts: b.BuildOptions) -> None:
    assert policies_of(body, opts) == []


def test_more_services_than_a_policy_holds_are_cut_at_sixteen() -> None:
    names = [f"v{i}" for i in range(b.POLICY_TARGETS_MAX + 2)]
    body = ms(variants=[{"name": n} for n in names], traffic=[{"variant": "v0", "weight": 100}])
    (policy,) = policies_of(body)
    assert [t["name"] for t in policy["spec"]["targetRefs"]] == [
        f"sentiment-{n}" for n in names[:b.POLICY_TARGETS_MAX]]


def test_budget_parser_defaults_explicit_and_values() -> None:
    default = parse_spec(ms()).gateway_retry.budget
    assert default == sp.RetryBudget(percent=20, interval="10s",
                                     min_retry_rate=sp.RetryRate(count=10, interval="1s"))
    assert not default.explicit
    empty = parse_spec(ms(gateway={"retry": {"budget": {}}})).gateway_retry.budget
    assert empty.explicit and (empty.percent, empty.interval, empty.min_retry_rate) == (
        20, "10s", sp.RetryRate())
    set_ = parse_spec(ms(gateway={"retry": {"budget": {
        "percent": 0, "interval": "1h", "minRetryRate": {"count": 1000000, "interval": "1h"}}}}))
    assert set_.gateway_retry.budget == sp.RetryBudget(
        percent=0, interval="1h", min_retry_rate=sp.RetryRate(1000000, "1h"), explicit=True)
    # half of minRetryRate: the other half is Gateway API's default
    half = parse_spec(ms(gateway={"retry": {"budget": {"minRetryRate": {"count": 2}}}}))
    assert half.gateway_retry.budget.min_retry_rate == sp.RetryRate(count=2, interval="1s")
    # attempts 0 keeps the budget as written (nothing is built from it)
    off = parse_spec(ms(gateway={"retry": {"attempts": 0, "budget": {"percent": 5}}}))
    assert off.gateway_retry.budget.percent == 5


B = "spec.gateway.retry.budget"


@pytest.mark.parametrize(("budget", "message"), [
    ({"percent": 101}, f"{B}.percent: 101 is outside [0, 100]"),
    ({"percent": -1}, f"{B}.percent: -1 is outside [0, 100]"),
    ({"percent": "20"}, f"{B}.percent: expected an integer"),
    ({"percent": 20.5}, f"{B}.percent: expected an integer"),
    ({"interval": "999ms"}, f"{B}.interval: '999ms' is outside the bounds (from 1s to 1h)"),
    ({"interval": "61m"}, f"{B}.interval: '61m' is outside the bounds (from 1s to 1h)"),
    ({"interval": "0s"}, f"{B}.interval: '0s' must be longer than zero"),
    ({"interval": "10"}, f"{B}.interval: '10' is not a duration"),
    ({"interval": "1m30s"}, f"{B}.interval: '1m30s' is not a duration"),
    ({"interval": "100000ms"}, f"{B}.interval: '100000ms' has more than 5 digits"),
    ({"minRetryRate": {"count": 0}}, f"{B}.minRetryRate.count: 0 is outside [1, 1000000]"),
    ({"minRetryRate": {"count": 1000001}},
     f"{B}.minRetryRate.count: 1000001 is outside [1, 1000000]"),
    ({"minRetryRate": {"interval": "0ms"}}, f"{B}.minRetryRate.interval: '0ms' must be longer"),
    ({"minRetryRate": {"interval": "2h"}},
     f"{B}.minRetryRate.interval: '2h' is outside the bounds (above zero, at most 1h)"),
    ({"minRetryRate": 10}, f"{B}.minRetryRate: expected an object with count, interval"),
])
def test_bad_budget_fields_name_the_field(budget: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpecError) as e:
        parse_spec(ms(gateway={"retry": {"budget": budget}}))
    assert message in str(e.value)


def test_a_budget_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match=rf"^{B}: expected an object"):
        parse_spec(ms(gateway={"retry": {"budget": 20}}))


def test_crd_budget_bounds_and_rules_are_the_parsers() -> None:
    budget = _gateway_schema()["properties"]["retry"]["properties"]["budget"]
    props = budget["properties"]
    assert (props["percent"]["minimum"], props["percent"]["maximum"]) == (0, 100)
    rate = props["minRetryRate"]["properties"]
    assert (rate["count"]["minimum"], rate["count"]["maximum"]) == (
        1, sp.MIN_RETRY_RATE_COUNT_MAX)
    least, most = sp.RETRY_BUDGET_INTERVAL
    for node, where, bounds in (
            (props["interval"], f"{B}.interval",
             (f"duration(self) >= duration('{least}')", f"duration(self) <= duration('{most}')")),
            (rate["interval"], f"{B}.minRetryRate.interval",
             ("duration(self) > duration('0s')",
              f"duration(self) <= duration('{sp.MIN_RETRY_RATE_INTERVAL_MAX}')"))):
        (rule,) = node["x-kubernetes-validations"]
        assert _cel_regex(rule["rule"]) == sp.GATEWAY_DURATION.pattern
        assert all(b_ in rule["rule"] for b_ in bounds), rule["rule"]
        assert rule["message"].startswith(where)
        assert node["maxLength"] == 24
    # no schema defaults: the parser holds them, and an unset budget stays told apart
    assert "default" not in budget and all("default" not in p for p in props.values())


@pytest.mark.parametrize(("budget", "valid"), [
    ({}, True), ({"percent": 0}, True), ({"percent": 100, "interval": "1h"}, True),
    ({"minRetryRate": {"count": 1, "interval": "1ms"}}, True),
    ({"percent": 101}, False), ({"percent": -1}, False), ({"percent": "5"}, False),
    ({"minRetryRate": {"count": 0}}, False), ({"minRetryRate": {"count": 1000001}}, False),
    ({"minRetryRate": 3}, False),
])
def test_crd_budget_schema_admits_what_the_parser_admits(budget: dict[str, Any],
                                                         valid: bool) -> None:
    """The structural part (jsonschema); the durations' CEL rules are checked above."""
    import jsonschema

    gateway = {"parentRefs": [{"name": "gw"}], "retry": {"budget": budget}}
    try:
        jsonschema.validate(gateway, _gateway_schema())
        admitted = True
    except jsonschema.ValidationError:
        admitted = False
    assert admitted is valid
    try:
        parse_spec(ms(gateway={"retry": {"budget": budget}}))
        parsed = True
    except InvalidSpecError:
        parsed = False
    assert parsed is valid


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_policy_is_valid_against_the_gateway_api_crd() -> None:
    """The built policy validates against the pinned Gateway API's XBackendTrafficPolicy CRD
    (jsonschema and every field known to it; its duration pattern), and the CRD is the kind,
    plural and version the operator discovers."""
    import jsonschema

    from localcluster import addons, versions

    root = addons.module_dir("sigs.k8s.io/gateway-api", versions.GATEWAY_API)
    crd = yaml.safe_load((root / "config" / "crd" / "experimental" /
                          "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml").read_text())
    group_version, plural = kube.RETRY_BUDGET_API
    assert (f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}",
            crd["spec"]["names"]["plural"], crd["spec"]["names"]["kind"]) == (
        group_version, plural, b.RETRY_BUDGET_POLICY[1])
    assert kube.plural_of(b.RETRY_BUDGET_POLICY[1]) == plural
    (version,) = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}"
                  == b.RETRY_BUDGET_POLICY[0]]
    schema = version["schema"]["openAPIV3Schema"]
    spec_schema = schema["properties"]["spec"]
    assert spec_schema["properties"]["targetRefs"]["maxItems"] == b.POLICY_TARGETS_MAX
    constraint = spec_schema["properties"]["retryConstraint"]["properties"]
    assert constraint["budget"]["default"] == dict(sp.RETRY_BUDGET_DEFAULTS)
    assert constraint["minRetryRate"]["default"] == dict(sp.MIN_RETRY_RATE_DEFAULTS)
    pattern = re.compile(constraint["budget"]["properties"]["interval"]["pattern"])
    for body in (ms(**TWO), ms(gateway={"retry": {"budget": {
            "percent": 0, "interval": "3600s", "minRetryRate": {"count": 1, "interval": "5ms"}}}})):
        (policy,) = policies_of(body)
        obj = {**policy, "metadata": {"name": policy["metadata"]["name"]}}
        jsonschema.validate(obj, schema)
        _known_fields(policy["spec"], spec_schema, "spec")
        written = policy["spec"]["retryConstraint"]
        assert pattern.match(written["budget"]["interval"])
        assert pattern.match(written["minRetryRate"]["interval"])


def test_the_examples_gateway_block_is_valid_once_uncommented() -> None:
    """examples/sentiment-rollout.yaml shows spec.gateway commented out (it needs a Gateway):
    uncommented, it passes the CRD's structure and the parser, budget included."""
    import jsonschema

    lines = (ROOT / "examples" / "sentiment-rollout.yaml").read_text().splitlines()
    start = lines.index("  # gateway:")
    block = ["  gateway:"]
    for line in lines[start + 1:]:
        if not line.startswith("  #   "):
            break
        block.append("  " + line[len("  # "):])
    body = yaml.safe_load("\n".join(["spec:", *block]))
    gateway = body["spec"]["gateway"]
    assert "budget" in gateway["retry"]
    jsonschema.validate(gateway, _gateway_schema())
    example = yaml.safe_load("\n".join(lines))
    example["metadata"].update(namespace="ml", uid="u")
    example["spec"]["gateway"] = gateway
    parsed = parse_spec(example)
    assert parsed.gateway_retry.budget == sp.RetryBudget(explicit=True)
    (policy,) = policies_of(example)
    assert [t["name"] for t in policy["spec"]["targetRefs"]] == [
        "sentiment-rollout-baseline", "sentiment-rollout-int8"]
