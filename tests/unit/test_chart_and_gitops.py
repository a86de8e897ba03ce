"""The Helm chart (lint, template, schema, CRD copy) and the Argo CD health check (Lua)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_status import argocd_health

from localcluster import build, paths

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "modelservice-operator"
CRD_NAME = "modelservices.serving.modelservice.dev.yaml"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if "helm" in build.missing_binaries():
        pytest.fail("helm is not built; run: python -m localcluster build", pytrace=False)
    return subprocess.run([str(paths.helm()), *args], capture_output=True, text=True,
                          check=check)


def render(*sets: str, values: Path | None = None) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "-n", "msv-system"]
    for s in sets:
        args += ["--set", s]
    if values is not None:
        args += ["-f", str(values)]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return {e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def rules_of(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r, v) for rule in doc["rules"] for r in rule["resources"] for v in rule["verbs"]}


def test_crd_copy_in_the_chart_is_identical() -> None:
    source = (ROOT / "crds" / CRD_NAME).read_bytes()
    copy = (CHART / "files" / CRD_NAME).read_bytes()
    assert source == copy, "the chart's CRD differs from crds/: run scripts/sync-crds"


def _namespaced_rules() -> list[dict[str, Any]]:
    """The rules of ``msv.namespacedRules`` (_helpers.tpl): the ClusterRole of a cluster-wide
    install and the Role in each watched namespace both include them."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    found = re.search(r'define "msv\.namespacedRules" -}}\n(.*?)\n{{- end -}}', text, re.S)
    assert found, "msv.namespacedRules is not in _helpers.tpl"
    assert "{{" not in found.group(1), "the rules are plain YAML"
    return list(yaml.safe_load(found.group(1)))


def test_the_operator_role_grants_every_kind_the_builders_write() -> None:
    """Every kind a ModelService can get (all optional APIs served, every feature on) may be
    created, patched (server-side apply), read, listed, watched and deleted (pruned), by a
    cluster-wide install and by a namespaced one alike."""
    from msv_operator import builders, kube
    from msv_operator.config import uniform_images

    ms = {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
          "metadata": {"name": "m", "namespace": "n", "uid": "u"},
          "spec": {"model": {"uri": "s3://b/m", "framework": "transformers",
                             "task": "text-classification"},
                   "variants": [{"name": "a"}, {"name": "b"}],
                   "traffic": [{"variant": "a", "weight": 100}],
                   "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
                   "gateway": {"parentRefs": [{"name": "gw"}]}}}
    opts = builders.BuildOptions(uniform_images("i"), service_monitor=True, gateway_api=True,
                                 gateway_retry=True, retry_budget=True)
    written = {(str(o["apiVersion"]).rpartition("/")[0], kube.plural_of(o["kind"]))
               for o in builders.build_all(ms, opts)}
    assert ("gateway.networking.x-k8s.io", "xbackendtrafficpolicies") in written
    granted = {(group, resource, verb) for rule in _namespaced_rules()
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    for group, plural in sorted(written):
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert (group, plural, verb) in granted, f"{verb} {plural}.{group or 'core'}"
    # both install modes grant exactly these rules: the ClusterRole, and the Role per namespace
    for docs, kind in ((render(), "ClusterRole"), (render("watchNamespaces={team-a}"), "Role")):
        (role,) = [d for d in docs if d["kind"] == kind and not d["metadata"]["name"].endswith(
            ("-discovery", "-leader-election"))]
        assert all(rule in role["rules"] for rule in _namespaced_rules()), kind


def test_helm_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out.stdout


def test_cluster_mode_renders_clusterrole_and_kept_crd() -> None:
    docs = render()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ClusterRole", "rel-modelservice-operator") in kinds
    assert ("ClusterRoleBinding", "rel-modelservice-operator") in kinds
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    source = yaml.safe_load((ROOT / "crds" / CRD_NAME).read_text())
    assert crd["spec"] == source["spec"]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "secrets" not in resources
    assert "*" not in resources and all("*" not in rule["verbs"] for rule in role["rules"])


def test_namespaced_mode_renders_roles_per_namespace_only() -> None:
    docs = render("watchNamespaces={team-a,team-b}")
    roles = sorted((d["kind"], d["metadata"]["namespace"]) for d in docs
                   if d["kind"] in ("Role", "RoleBinding")
                   and not d["metadata"]["name"].endswith("-leader-election"))
    assert roles == [("Role", "team-a"), ("Role", "team-b"),
                     ("RoleBinding", "team-a"), ("RoleBinding", "team-b")]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [d["metadata"]["name"] for d in cluster_roles] == ["rel-modelservice-operator-discovery"]
    assert rules_of(cluster_roles[0]) == {("customresourcedefinitions", "get"),
                                          ("customresourcedefinitions", "list"),
                                          ("customresourcedefinitions", "watch"),
                                          ("namespaces", "list"), ("namespaces", "watch"),
                                          ("nodes", "list"), ("nodes", "watch")}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value")
           for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MSV_NAMESPACES"] == "team-a,team-b"


def test_operator_deployment_is_restricted_and_configurable() -> None:
    docs = render("modelServer.images.torch.image=registry.local/ms:1", "crds.keep=false")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MSV_TORCH_IMAGE"] == "registry.local/ms:1"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_several_replicas_get_leader_election_a_pdb_rbac_for_the_lease_and_spreading() -> None:
    docs = render("replicaCount=3")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MSV_LEADER_ELECTION"]["value"] == "true"
    assert env["MSV_LEASE_NAME"]["value"] == "rel-modelservice-operator"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"][
        "podAntiAffinity"], "a preference: one node must still run every replica"
    role = next(d for d in docs if d["kind"] == "Role"
                and d["metadata"]["name"].endswith("-leader-election"))
    assert role["metadata"]["namespace"] == "msv-system"
    rules = {(r, v, tuple(rule.get("resourceNames", ()))) for rule in role["rules"]
             for r in rule["resources"] for v in rule["verbs"]}
    assert rules == {("leases", "create", ()),
                     ("leases", "get", ("rel-modelservice-operator",)),
                     ("leases", "update", ("rel-modelservice-operator",))}
    binding = next(d for d in docs if d["kind"] == "RoleBinding"
                   and d["metadata"]["name"].endswith("-leader-election"))
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_one_replica_has_no_pdb_and_without_leader_election_no_lease_rights() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert "affinity" not in dep["spec"]["template"]["spec"]
    docs = render("leaderElection.enabled=false")
    assert not [d for d in docs if d["kind"] == "Role"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize(("value", "message"), [
    ("logFormat=xml", "value must be one of 'text', 'json'"),
    ("maxWorkers=0", "minimum"),
    ("unknownKey=1", "additional properties 'unknownKey' not allowed"),
    ("watchNamespaces={Bad_NS}", "does not match pattern"),
    ("replicaCount=2,leaderElection.enabled=false", "/replicaCount"),
    # a price table naming a product GPU feature discovery does not label: refused at install
    ("gpuPrices.products.NVIDIA-A100=4", "at '/gpuPrices/products': additional properties "
     "'NVIDIA-A100' not allowed"),
    ("gpuPrices.products.NVIDIA-L4=-1", "at '/gpuPrices/products/NVIDIA-L4': minimum"),
    ("gpuPrices.mig.NVIDIA-H100-80GB-HBM3.big=1", "at '/gpuPrices/mig/NVIDIA-H100-80GB-HBM3': "
     "additional properties 'big' not allowed"),
    ("gpuPrices.mig.H100.big=1", "additional properties 'H100' not allowed"),
    ("gpuPrices.cpu=-1", "at '/gpuPrices/cpu'"),
    ("gpuFit.enabled=maybe", "/gpuFit/enabled"),
])
def test_schema_rejects_bad_values(value: str, message: str) -> None:
    out = helm("template", "rel", str(CHART), "--set", value, check=False)
    assert out.returncode != 0
    assert message in out.stderr


def test_the_schema_knows_exactly_the_operators_gpu_products_profiles_and_price_limit() -> None:
    """The chart refuses at install what the operator would refuse at start (prices.py)."""
    from msv_operator import prices

    schema = json.loads((CHART / "values.schema.json").read_text())
    table = schema["properties"]["gpuPrices"]["properties"]
    assert list(table["products"]["properties"]) == list(prices.KNOWN_PRODUCTS)
    assert list(table["mig"]["properties"]) == list(prices.KNOWN_PRODUCTS)
    mig = schema["definitions"]["migPrices"]
    assert list(mig["patternProperties"]) == [prices.PROFILE.pattern]
    assert schema["definitions"]["price"]["exclusiveMaximum"] == prices.PRICE_LIMIT


def test_a_price_table_reaches_the_operator_as_the_table_it_parses(tmp_path: Path) -> None:
    from msv_operator import config

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"gpuPrices": {
        "products": {"NVIDIA-L4": 0.7}, "mig": {"NVIDIA-H100-80GB-HBM3": {"1g.10gb": 1.5}},
        "cpu": 0}}))
    env = operator_env(render(values=values))
    table = config.parse_gpu_prices(env["MSV_GPU_PRICES"])
    assert table.cpu == 0.0  # CPU is free
    assert table.products["NVIDIA-L4"] == 0.7
    assert table.products["NVIDIA-A100-SXM4-80GB"] == 5.12  # the list price, not overridden
    assert table.mig == {"NVIDIA-H100-80GB-HBM3": {"1g.10gb": 1.5}}
    assert (env["MSV_GPU_FIT"], env["MSV_GPU_FIT_READ_CREDENTIALS"]) == ("true", "false")
    # the defaults: an empty table, the list prices
    assert config.parse_gpu_prices(operator_env(render())["MSV_GPU_PRICES"]) == (
        config.prices.DEFAULT_PRICES)


def test_gpu_fit_watches_nodes_and_reads_secrets_only_when_asked() -> None:
    role = next(d for d in render() if d["kind"] == "ClusterRole")
    assert {("nodes", "list"), ("nodes", "watch")} <= rules_of(role)
    assert not {r for r, _ in rules_of(role)} & {"secrets"}
    for docs, kind in ((render("gpuFit.readModelCredentials=true"), "ClusterRole"),
                       (render("gpuFit.readModelCredentials=true",
                               "watchNamespaces={team-a}"), "Role")):
        (granting,) = [d for d in docs if d["kind"] == kind and not d["metadata"][
            "name"].endswith(("-discovery", "-leader-election"))]
        assert {v for r, v in rules_of(granting) if r == "secrets"} == {"get"}, kind
    (granting,) = [d for d in render("optimization.readOutputCredentials=true")
                   if d["kind"] == "ClusterRole"]
    assert {v for r, v in rules_of(granting) if r == "secrets"} == {"get"}
    off = render("gpuFit.enabled=false", "gpuFit.readModelCredentials=true")
    assert operator_env(off)["MSV_GPU_FIT"] == "false"
    for doc in off:
        if doc["kind"] in ("ClusterRole", "Role"):
            assert not {r for r, _ in rules_of(doc)} & {"nodes", "secrets"}, doc["kind"]
    # the model cache's pre-warming lists the Nodes without GPU fit too
    for extra in ((), ("watchNamespaces={team-a}",)):
        cached = render("gpuFit.enabled=false", "modelCache.enabled=true", *extra)
        (cluster,) = [d for d in cached if d["kind"] == "ClusterRole"]
        assert ("nodes", "list") in rules_of(cluster), extra


def _lua_health(obj: dict[str, Any]) -> dict[str, str]:
    return argocd_health(obj)


def _ms(generation: int, observed: int | None, *conditions: dict[str, str]) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "m", "generation": generation}, "status": status}


@pytest.mark.parametrize(("obj", "expected"), [
    ({"metadata": {"generation": 1}}, "Progressing"),
    (_ms(2, 2, {"type": "Ready", "status": "True", "reason": "AllVariantsReady"}), "Healthy"),
    (_ms(3, 2, {"type": "Ready", "status": "True", "reason": "AllVariantsReady"}), "Progressing"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "Unschedulable",
                "message": "Insufficient nvidia.com/gpu"}), "Degraded"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "InvalidSpec"}), "Degraded"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "RollingOut"},
         {"type": "Progressing", "status": "True"}), "Progressing"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "X"},
         {"type": "Degraded", "status": "True", "reason": "ModelLoadFailed"}), "Degraded"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "RollingOut"},
         {"type": "Stalled", "status": "True", "reason": "ProgressDeadlineExceeded"}),
     "Degraded"),
    (_ms(1, 1, {"type": "Ready", "status": "True", "reason": "AllVariantsReady"},
         {"type": "Reconciling", "status": "True", "reason": "RollingOut"},
         {"type": "Stalled", "status": "False"}), "Progressing"),
    (_ms(1, 1, {"type": "Ready", "status": "False", "reason": "Unschedulable"},
         {"type": "Stalled", "status": "False"}), "Progressing"),
])
def test_argocd_health_check(obj: dict[str, Any], expected: str) -> None:
    assert _lua_health(obj)["status"] == expected


def test_argocd_health_message_carries_the_reason() -> None:
    got = _lua_health(_ms(1, 1, {"type": "Ready", "status": "False", "reason": "Unschedulable",
                                 "message": "0/5 nodes: Insufficient nvidia.com/gpu"}))
    assert got["message"] == "Unschedulable: 0/5 nodes: Insufficient nvidia.com/gpu"


def test_the_model_cache_renders_agents_a_node_local_service_and_the_operators_url() -> None:
    assert not [d for d in render() if "model-cache" in d["metadata"]["name"]]
    docs = render("modelCache.enabled=true", "modelCache.maxBytes=1073741824")
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    (svc,) = [d for d in docs if d["kind"] == "Service" and "model-cache" in d["metadata"]["name"]]
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert svc["spec"]["selector"] == ds["spec"]["template"]["metadata"]["labels"]
    # The operator's own Service and Deployment do not select the agents.
    (op_svc,) = [d for d in docs if d["metadata"]["name"] == "rel-modelservice-operator-metrics"]
    assert not set(op_svc["spec"]["selector"].items()) <= set(svc["spec"]["selector"].items())
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert agent["command"] == ["python3", "-m", "msv_operator.cache_agent"]
    assert "--max-bytes=1073741824" in agent["args"] and "--verify" in agent["args"]
    assert agent["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"] == [{"name": "cache", "hostPath": {
        "path": "/var/cache/modelservice/models", "type": "DirectoryOrCreate"}}]
    assert pod["automountServiceAccountToken"] is False
    env = operator_env(docs)
    assert env["MSV_MODEL_CACHE_URL"] == (
        f"http://{svc['metadata']['name']}.msv-system.svc:{svc['spec']['ports'][0]['port']}")
    assert "MSV_MODEL_CACHE_URL" not in operator_env(render())
    # a cluster without DNS: a fixed address for the Service, and the pulls use it
    docs = render("modelCache.enabled=true", "modelCache.clusterIP=10.96.0.85")
    (svc,) = [d for d in docs if d["kind"] == "Service" and "model-cache" in d["metadata"]["name"]]
    assert svc["spec"]["clusterIP"] == "10.96.0.85"
    assert operator_env(docs)["MSV_MODEL_CACHE_URL"] == "http://10.96.0.85:8090"
