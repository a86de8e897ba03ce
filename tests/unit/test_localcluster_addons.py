"""localcluster.addons: the add-on CRDs come from their Go modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from localcluster import addons


def test_unknown_addon_is_a_clear_error() -> None:
    with pytest.raises(addons.AddonError, match="unknown add-on 'nope'; known: gateway-api"):
        addons.crd_files("nope")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
@pytest.mark.parametrize(("name", "kind"), [("gateway-api", "HTTPRoute"),
                                            ("prometheus-operator", "ServiceMonitor"),
                                            ("keda", "ScaledObject")])
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
    kinds_by_group: dict[str, set[str]] = {}
    for d in docs:
        kinds_by_group.setdefault(d["spec"]["group"], set()).add(d["spec"]["names"]["kind"])
    assert kinds_by_group["gateway.networking.x-k8s.io"] == {"XBackendTrafficPolicy"}
    assert set(kinds_by_group) == {"gateway.networking.k8s.io", "gateway.networking.x-k8s.io"}
    (policy,) = [d for d in docs if d["spec"]["names"]["kind"] == "XBackendTrafficPolicy"]
    (alpha,) = [v for v in policy["spec"]["versions"] if v["name"] == "v1alpha1"]
    spec = alpha["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"budget", "minRetryRate"} <= set(spec["retryConstraint"]["properties"])
    (routes,) = [d for d in docs if d["spec"]["names"]["kind"] == "HTTPRoute"]
    (v1,) = [v for v in routes["spec"]["versions"] if v["name"] == "v1"]
    rule = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]
    assert {"attempts", "codes", "backoff"} <= set(
        rule["items"]["properties"]["retry"]["properties"])


def test_the_gateway_api_globs_take_the_k8s_io_crds_and_only_the_retry_policy_of_x_k8s_io(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
    exp = tmp_path / "config" / "crd" / "experimental"
    exp.mkdir(parents=True)
    for name in ("gateway.networking.k8s.io_httproutes.yaml",
                 "gateway.networking.k8s.io_gateways.yaml",
                 "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml",
                 "gateway.networking.x-k8s.io_xmeshes.yaml",
                 "gateway.networking.x-k8s.io_xbackends.yaml"):
        (exp / name).write_text(crd)
    (exp / "gateway.networking.k8s.io_vap_safeupgrades.yaml").write_text(
        "kind: ValidatingAdmissionPolicy\n")
    (exp / "kustomization.yaml").write_text("resources: []\n")
    monkeypatch.setattr(addons, "module_dir", lambda module, version: tmp_path)
    assert [f.name for f in addons.crd_files("gateway-api")] == [
        "gateway.networking.k8s.io_gateways.yaml", "gateway.networking.k8s.io_httproutes.yaml",
        "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml"]
    (exp / "gateway.networking.x-k8s.io_xbackendtrafficpolicies.yaml").unlink()
    with pytest.raises(addons.AddonError, match=r"no CRD file matching .*xbackendtrafficpolicies"):
        addons.crd_files("gateway-api")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_keda_crds_are_every_kind_its_operator_watches() -> None:
    docs = [yaml.safe_load(f.read_text()) for f in addons.crd_files("keda")]
    kinds = {(d["spec"]["group"], d["spec"]["names"]["kind"]) for d in docs}
    assert kinds == {("keda.sh", k) for k in (
        "ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication")
    } | {("eventing.keda.sh", k) for k in ("CloudEventSource", "ClusterCloudEventSource")}
