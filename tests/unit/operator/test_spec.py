"""msv_operator.spec: the typed view of a ModelService and its semantic checks; an invalid spec
is an InvalidSpecError naming the field, and the builders (which parse first) refuse it too."""

from __future__ import annotations

from typing import Any

import pytest
from manifests import manifest
from msv_operator import builders as b
from msv_operator.config import uniform_images
from msv_operator.spec import InvalidSpecError, parse_spec

OPTS = b.BuildOptions(images=uniform_images("ms:cpu", "ms:cuda"),
                      service_monitor=False, gateway_api=False)
MODEL = {"uri": "s3://models/sst2", "framework": "transformers", "task": "text-classification"}


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {"uri": "ftp://x/y", "framework": "transformers", "task": "t"}},
     "scheme 'ftp' is not supported"),
    ({"model": {"uri": "s3://b/k", "framework": "transformers"}}, "spec.model.task: required"),
    ({"model": {"uri": "s3://b/k", "framework": "transformers", "task": "fill-mask"}},
     "spec.model.task: 'fill-mask' is not served by the model server"),
    ({"model": {"uri": "s3://b/k", "framework": "torchscript"},
      "variants": [{"name": "q", "optimization": {"quantization": "dynamic-int8"}}]},
     "TorchScript models have compiled layer shapes"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "p", "optimization": {"pruning": {"method": "structured",
                                                                "amount": 0.2}}}]},
     "TensorFlow variants support"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "a"}], "traffic": [{"variant": "a", "weight": 60}]},
     "weights sum to 60, expected 100"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "x" * 60}]}, "longer than 63 characters"),
    ({"model": {"uri": "file://relative", "framework": "tensorflow"}}, "absolute path"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "autoscaling": {"minReplicas": 4, "maxReplicas": 2}}, "must not exceed maxReplicas"),
])
def test_invalid_specs_name_the_field(spec: dict[str, Any], message: str) -> None:
    body = {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}, "spec": spec}
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(body)
    with pytest.raises(InvalidSpecError):
        b.build_all(body, OPTS)


def test_bad_secret_names_name_the_field() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.server\.tls\.secretName"):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL,
                                                 "server": {"tls": {"secretName": "Not_Valid"}}}))
    with pytest.raises(InvalidSpecError, match=r"spec\.server\.auth\.tokenSecret"):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL,
                                                 "server": {"auth": {"tokenSecret": "-x"}}}))


@pytest.mark.parametrize(("value", "message"), [
    ("5s", r"spec\.server\.startupTimeout: '5s' is outside \[10s, 24h\]"),
    ("25h", r"spec\.server\.startupTimeout: '25h' is outside"),
    ("soon", r"spec\.server\.startupTimeout: 'soon' is not a duration"),
    (600, r"spec\.server\.startupTimeout: 600 is not a duration"),
])
def test_bad_startup_timeout_names_the_field(value: Any, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL,
                                                 "server": {"startupTimeout": value}}))


def test_startup_timeout_default_and_value() -> None:
    assert parse_spec(manifest("sentiment", "ml", {"model": MODEL})).startup_timeout_seconds \
        == 30 * 60
    assert parse_spec(manifest("sentiment", "ml", {"model": MODEL, "server": {
        "startupTimeout": "90s"}})).startup_timeout_seconds == 90


def test_spec_tasks_are_the_tasks_the_model_server_serves() -> None:
    from msv_operator import spec

    from model_server.backends import transformers_backend

    assert spec.TASKS == transformers_backend.TASKS


@pytest.mark.parametrize(("server", "message"), [
    ({"auth": {"tokenSecret": ""}},
     "spec.server.auth.tokenSecret: empty; it must name a Secret (the pods would otherwise "
     "serve without authentication); remove spec.server.auth to serve without authentication"),
    ({"auth": {"tokenSecret": "  "}}, "spec.server.auth.tokenSecret: empty;"),
    ({"auth": {"protectMetrics": True}}, "spec.server.auth.tokenSecret: missing;"),
    ({"auth": {}}, "spec.server.auth.tokenSecret: missing;"),
    ({"auth": "tokens"}, "spec.server.auth: expected an object with tokenSecret"),
    ({"tls": {"secretName": ""}},
     "spec.server.tls.secretName: empty; it must name a Secret (the pods would otherwise "
     "serve without TLS); remove spec.server.tls to serve without TLS"),
    ({"tls": {}}, "spec.server.tls.secretName: missing;"),
    ({"auth": {"tokenSecret": "t", "metricsTokenKey": "a/b"}},
     "spec.server.auth.metricsTokenKey: 'a/b' is not a valid Secret key"),
])
def test_secret_fields_must_name_a_secret(server: dict[str, Any], message: str) -> None:
    """An empty or missing name is a templating slip: refused, never read as "off"."""
    body = manifest("sentiment", "ml", {"model": MODEL, "server": server})
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(body)
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(InvalidSpecError):
        b.build_all(body, OPTS)


def test_secret_fields_parse() -> None:
    spec = parse_spec(manifest("sentiment", "ml", {"model": MODEL, "server": {
        "auth": {"tokenSecret": "toks", "protectMetrics": True}, "tls": {"secretName": "t"}}}))
    assert (spec.auth_token_secret, spec.auth_protect_metrics, spec.auth_metrics_token_key,
            spec.tls_secret) == ("toks", True, "token", "t")
    keyed = parse_spec(manifest("sentiment", "ml", {"model": MODEL, "server": {
        "auth": {"tokenSecret": "toks", "metricsTokenKey": "prom.token"}}}))
    assert keyed.auth_metrics_token_key == "prom.token" and keyed.tls_secret is None
    plain = parse_spec(manifest("sentiment", "ml", {"model": MODEL, "server": {}}))
    assert plain.auth_token_secret is None and plain.tls_secret is None


def test_gpu_resource_name_is_a_pin_only_when_set() -> None:
    model = {"uri": "s3://b/m", "framework": "transformers", "task": "text-classification"}
    chosen = parse_spec(manifest("m", "ns", {"model": model, "gpu": {"count": 2}}))
    assert chosen.gpu is not None
    assert (chosen.gpu.resource_name, chosen.gpu.count, chosen.gpu.products) == (None, 2, ())
    pinned = parse_spec(manifest("m", "ns", {"model": model, "gpu": {
        "resourceName": "nvidia.com/mig-1g.10gb", "products": ["NVIDIA-A100-SXM4-80GB"]}}))
    assert pinned.gpu is not None
    assert (pinned.gpu.resource_name, pinned.gpu.products) == (
        "nvidia.com/mig-1g.10gb", ("NVIDIA-A100-SXM4-80GB",))


def test_crd_startup_timeout_is_the_parsers() -> None:
    import re
    from pathlib import Path

    import yaml
    from msv_operator import spec as sp

    from msv_contract import api

    root = Path(__file__).resolve().parents[3]
    crd = yaml.safe_load((root / "crds" / f"{api.CRD_NAME}.yaml").read_text())
    server = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["server"]["properties"]
    field = server["startupTimeout"]
    assert field["default"] == sp.STARTUP_TIMEOUT_DEFAULT
    (rule,) = field["x-kubernetes-validations"]
    assert re.search(r"matches\('([^']*)'\)", rule["rule"]).group(1) == (  # type: ignore[union-attr]
        sp.GATEWAY_DURATION.pattern)
    assert re.findall(r"duration\('([^']*)'\)", rule["rule"]) == list(sp.STARTUP_TIMEOUT_RANGE)
    assert rule["message"].startswith("spec.server.startupTimeout")
    with pytest.raises(InvalidSpecError, match="at most 5 digits"):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL, "server": {
            "startupTimeout": "123456s"}}))
