"""localcluster.addons: the add-on CRDs come from their Go modules."""

from __future__ import annotations

import shutil

import pytest
import yaml

from localcluster import addons


def test_unknown_addon_is_a_clear_error() -> None:
    with pytest.raises(addons.AddonError, match="unknown add-on 'nope'; known: gateway-api"):
        addons.crd_files("nope")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
@pytest.mark.parametrize(("name", "kind"), [("gateway-api", "HTTPRoute"),
                                            ("prometheus-operator", "ServiceMonitor")])
def test_addon_crds_come_from_the_go_module(name: str, kind: str) -> None:
    files = addons.crd_files(name)
    kinds = set()
    for f in files:
        # BaseLoader: the Prometheus Operator CRDs hold a bare `=` scalar, which PyYAML's
        # safe loader rejects as an unknown tag.
        for doc in yaml.load_all(f.read_text(), Loader=yaml.BaseLoader):
            assert doc["kind"] == "CustomResourceDefinition"
            kinds.add(doc["spec"]["names"]["kind"])
    assert kind in kinds


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_gateway_api_is_the_experimental_channel_with_httproute_retry() -> None:
    files = addons.crd_files("gateway-api")
    docs = [d for f in files for d in yaml.load_all(f.read_text(), Loader=yaml.BaseLoader)]
    assert {d["metadata"]["annotations"]["gateway.networking.k8s.io/channel"]
            for d in docs} == {"experimental"}
    assert {d["spec"]["group"] for d in docs} == {"gateway.networking.k8s.io"}
    (routes,) = [d for d in docs if d["spec"]["names"]["kind"] == "HTTPRoute"]
    (v1,) = [v for v in routes["spec"]["versions"] if v["name"] == "v1"]
    rule = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]
    assert {"attempts", "codes", "backoff"} <= set(
        rule["items"]["properties"]["retry"]["properties"])
