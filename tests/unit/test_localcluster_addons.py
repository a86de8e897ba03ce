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
