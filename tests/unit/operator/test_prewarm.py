"""Pre-warming the node-local model cache: which nodes, the Job, the status, what is reported
in FieldsIgnored, and whole passes with a fake Kube (Jobs created, finished, failed, replaced)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakekube import FakeKube
from msv_operator import builders, kubectl_msv, optimize, pools, prewarm, reconcile, spec
from msv_operator import kube as kubeapi
from msv_operator.config import OperatorConfig

from msv_contract import api, modelcache

NOW = "2026-01-01T12:00:00Z"
UID = "0b6f6a2e-0000-4000-8000-000000000020"
SHA = "d" * 64
CACHE = "http://rel-model-cache.msv-system.svc:8090"
ROOT = Path(__file__).resolve().parents[3]


def body(prewarm_on: bool = True, **model: Any) -> dict[str, Any]:
    m = {"uri": "s3://models/bert.tar.gz", "sha256": SHA, "framework": "transformers",
         "task": "text-classification", "credentialsSecret": "store-creds",
         "prewarm": prewarm_on, **model}
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "s", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": {"model": m}}


def node(name: str, *, ready: bool = True, cordoned: bool = False,
         taints: list[dict[str, Any]] | None = None, gpus: int = 0,
         product: str | None = None, hostname: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": hostname or name}
    if product:
        labels[pools.PRODUCT_LABEL] = product
    out: dict[str, Any] = {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints or [], **({"unschedulable": True} if cordoned else {})},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "allocatable": {"cpu": "4", **({pools.GPU_RESOURCE: str(gpus)}
                                                  if gpus else {})}}}
    return out


def trimmed(*nodes: dict[str, Any]) -> list[prewarm.Node]:
    return [prewarm.trim_node(n) for n in nodes]


def opts(cache: str | None = CACHE) -> builders.BuildOptions:
    return reconcile.build_options(OperatorConfig(model_cache_url=cache or ""),
                                   kubeapi.CapabilityAnswer(service_monitor=False,
                                                            gateway_api=False))


# ---- which nodes ----------------------------------------------------------------------------

CONTROL_PLANE = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


def test_a_cpu_modelservice_warms_ready_schedulable_nodes_whose_taints_it_tolerates() -> None:
    nodes = trimmed(
        node("b"), node("a"), node("down", ready=False), node("cordoned", cordoned=True),
        node("cp", taints=[CONTROL_PLANE]),
        node("soft", taints=[{"key": "x", "effect": "PreferNoSchedule"}]),
        node("gpu", gpus=1, product="NVIDIA-L4",
             taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]))
    parsed = spec.parse_spec(body())
    assert [n.name for n in prewarm.eligible_nodes(parsed, nodes, {})] == ["a", "b", "soft"]


def test_a_gpu_variant_warms_the_nodes_of_its_placement_and_tolerates_the_gpu_taint() -> None:
    gpu_taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    nodes = trimmed(node("cpu"), node("l4", gpus=1, product="NVIDIA-L4", taints=gpu_taint),
                    node("l4-full", gpus=1, product="NVIDIA-L4", taints=gpu_taint),
                    node("a100", gpus=2, product="NVIDIA-A100", taints=gpu_taint),
                    node("dedicated", gpus=4, product="NVIDIA-L4",
                         taints=[{"key": "team", "value": "ml", "effect": "NoExecute"}]))
    ms = body()
    ms["spec"]["gpu"] = {"count": 1}
    parsed = spec.parse_spec(ms)
    # GPU fit chose L4: only L4 nodes (not the one tainted for another team)
    placed = {"baseline": pools.Target(pools.GPU_RESOURCE, 1, ("NVIDIA-L4",))}
    assert [n.name for n in prewarm.eligible_nodes(parsed, nodes, placed)] == ["l4", "l4-full"]
    # no placement (fit off): spec.gpu as written, any product with a GPU
    assert [n.name for n in prewarm.eligible_nodes(parsed, nodes, {})] == [
        "a100", "l4", "l4-full"]
    # two GPUs per pod: only a node holding two
    two = {"baseline": pools.Target(pools.GPU_RESOURCE, 2)}
    assert [n.name for n in prewarm.eligible_nodes(parsed, nodes, two)] == ["a100"]
    # the spec's own tolerations count
    ms["spec"]["gpu"]["tolerations"] = [{"key": "team", "operator": "Equal", "value": "ml"}]
    assert "dedicated" in [n.name for n in prewarm.eligible_nodes(
        spec.parse_spec(ms), nodes, placed)]


def test_only_variants_that_pull_spec_model_and_are_not_withheld_count() -> None:
    ms = body()
    ms["spec"]["variants"] = [{"name": "own", "model": {"uri": "s3://m/other.tar.gz"}},
                              {"name": "baseline"}]
    ms["spec"]["traffic"] = [{"variant": "own", "weight": 100}]
    parsed = spec.parse_spec(ms)
    assert [v.name for v in prewarm.serving_variants(parsed)] == ["baseline"]
    nodes = trimmed(node("a"))
    assert prewarm.eligible_nodes(parsed, nodes, {}, withheld={"baseline"}) == []
    assert [n.name for n in prewarm.eligible_nodes(parsed, nodes, {})] == ["a"]


@pytest.mark.parametrize(("toleration", "taint", "matches"), [
    ({"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
    ({"key": "k", "operator": "Exists", "effect": "NoExecute"},
     {"key": "k", "effect": "NoSchedule"}, False),
    ({"key": "other", "operator": "Exists"}, {"key": "k", "effect": "NoSchedule"}, False),
])
def test_tolerations_match_as_kubernetes_matches_them(toleration: dict[str, Any],
                                                      taint: dict[str, Any],
                                                      matches: bool) -> None:
    assert prewarm.tolerates([toleration], taint) is matches


# ---- the Job --------------------------------------------------------------------------------

def test_the_job_pins_the_node_and_runs_exactly_the_variants_pull() -> None:
    ms = body()
    parsed = spec.parse_spec(ms)
    n = prewarm.trim_node(node("worker-1", hostname="worker-1.example"))
    job = prewarm.build_job(ms, parsed, n, opts())
    pod = job["spec"]["template"]["spec"]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-1.example"]}]}]}
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == builders.pod_security()
    assert "tolerations" not in pod  # a CPU ModelService's pods tolerate nothing either
    (container,) = pod["containers"]
    deployment = builders.build_deployment(ms, parsed, parsed.variants[0], opts(), 1, False)
    (pull,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert container == pull
    assert container["args"] == ["pull", "s3://models/bert.tar.gz", builders.MODEL_DIR,
                                 "--sha256", SHA, "--cache", CACHE]
    assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
    assert container["securityContext"] == builders.container_security()
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"] == {"name": "model", "emptyDir": {}} and "tmp" in volumes
    spec_ = job["spec"]
    assert (spec_["backoffLimit"], spec_["ttlSecondsAfterFinished"],
            spec_["activeDeadlineSeconds"]) == (2, 600, 1800)
    meta = job["metadata"]
    assert meta["ownerReferences"] == [builders.owner_reference(ms)]
    assert meta["labels"][api.LABEL_MODELSERVICE] == "s"
    assert meta["labels"][api.LABEL_PREWARM] == prewarm.artifact_label(parsed.model)
    assert meta["annotations"] == {api.ANNOTATION_PREWARM_NODE: "worker-1"}
    # the pod is no server of the ModelService: no ModelService label
    assert api.LABEL_MODELSERVICE not in job["spec"]["template"]["metadata"]["labels"]
    assert meta["name"] == prewarm.job_name("s", "worker-1", parsed.model)
    assert meta["name"].startswith("s-prewarm-") and len(meta["name"]) == len("s-prewarm-") + 10


def test_a_gpu_modelservices_job_carries_its_pods_tolerations() -> None:
    ms = body()
    ms["spec"]["gpu"] = {"tolerations": [{"key": "team", "operator": "Exists"}]}
    parsed = spec.parse_spec(ms)
    job = prewarm.build_job(ms, parsed, prewarm.trim_node(node("g")), opts())
    assert job["spec"]["template"]["spec"]["tolerations"] == builders.tolerations(parsed)
    assert {"key": "team", "operator": "Exists"} in builders.tolerations(parsed)


def test_job_names_are_stable_short_and_change_with_node_and_artifact() -> None:
    src = spec.ModelSource("s3://m/a.tar.gz", SHA)
    name = prewarm.job_name("s", "n1", src)
    assert name == prewarm.job_name("s", "n1", src)
    assert len({name, prewarm.job_name("s", "n2", src),
                prewarm.job_name("s", "n1", spec.ModelSource("s3://m/b.tar.gz", SHA)),
                prewarm.job_name("s", "n1", spec.ModelSource("s3://m/a.tar.gz", "e" * 64))}) == 4
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"
    for ms_name in (long_a, long_b):
        assert len(prewarm.job_name(ms_name, "n" * 253, src)) <= 63
    assert prewarm.job_name(long_a, "n1", src) != prewarm.job_name(long_b, "n1", src)


# ---- the status -----------------------------------------------------------------------------

def finished(kind: str, **extra: Any) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": kind, "status": "True", **extra}]}}


def test_the_status_counts_the_jobs_and_lists_the_pending_nodes() -> None:
    jobs: dict[str, Mapping[str, Any] | None] = {
        "a": finished("Complete"), "b": finished("Failed", reason="BackoffLimitExceeded"),
        "c": {"status": {"active": 1}}, "d": None, "e": None}
    got = prewarm.summarize(SHA, 5, jobs, warmed={"e"})
    assert got == {"artifact": SHA, "nodes": 5, "succeeded": 2, "failed": 1,
                   "pending": ["c", "d"]}
    assert not prewarm.complete(got)
    capped = prewarm.summarize(SHA, 30, {f"n{i:02}": None for i in range(prewarm.MAX_NODES)})
    assert capped["limitedTo"] == prewarm.MAX_NODES and capped["nodes"] == 30
    assert capped["pending"] == [f"n{i:02}" for i in range(prewarm.PENDING_SHOWN)]
    done = prewarm.summarize(SHA, 2, {"a": finished("Complete"), "b": finished("Complete")})
    assert prewarm.complete(done)
    assert not prewarm.complete(prewarm.summarize(SHA, 0, {}))


# ---- FieldsIgnored --------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "cache", "says"), [
    ({}, None, "chart value modelCache.enabled"),
    ({"uri": "pvc://models/bert"}, CACHE, "pvc:// is not cached"),
    ({"uri": "file:///models/bert.tar.gz"}, CACHE, "file:// is not cached"),
    ({"uri": "s3://models/bert/"}, CACHE, "an S3 prefix"),
])
def test_prewarm_that_cannot_act_is_named_in_fields_ignored(
        model: dict[str, Any], cache: str | None, says: str) -> None:
    parsed = spec.parse_spec(body(**model))
    ((reason, message),) = prewarm.ignored(parsed, opts(cache))
    assert reason == prewarm.UNAVAILABLE
    assert message.startswith("spec.model.prewarm: ") and says in message


def test_prewarm_is_ignored_when_no_variant_pulls_spec_model() -> None:
    ms = body()
    ms["spec"]["variants"] = [{"name": "own", "model": {"uri": "s3://m/other.tar.gz"}}]
    ms["spec"]["traffic"] = [{"variant": "own", "weight": 100}]
    ((_, message),) = prewarm.ignored(spec.parse_spec(ms), opts())
    assert "no variant serves spec.model" in message


def test_nothing_is_ignored_when_prewarm_can_act_or_is_off() -> None:
    assert prewarm.ignored(spec.parse_spec(body()), opts()) == []
    assert prewarm.ignored(spec.parse_spec(body(False)), opts(None)) == []
    assert prewarm.ignored(spec.parse_spec(body(uri="https://h/m.tar.gz")), opts()) == []


@pytest.mark.parametrize(("uri", "cached"), [
    ("s3://b/k.tar.gz", True), ("https://h/m.tar.gz", True), ("http://h/m", True),
    ("s3://b/", False), ("s3://b/dir/", False), ("s3://b", False), ("pvc://c/m", False),
    ("file:///m.tar.gz", False), ("https:///m", False)])
def test_what_the_cache_takes(uri: str, cached: bool) -> None:
    assert (modelcache.not_cached(uri) is None) is cached


def test_prewarm_must_be_a_boolean() -> None:
    with pytest.raises(spec.InvalidSpecError, match=r"^spec\.model\.prewarm: 'yes'"):
        spec.parse_spec(body(prewarm="yes"))  # type: ignore[arg-type]
    assert spec.parse_spec(body(False)).prewarm is False
    ms = body()
    del ms["spec"]["model"]["prewarm"]
    assert spec.parse_spec(ms).prewarm is False


# ---- the CRD --------------------------------------------------------------------------------

def _crd_version() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"{api.CRD_NAME}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    return dict(version["schema"]["openAPIV3Schema"]["properties"])


def test_the_crd_has_the_field_and_the_status_keys_the_operator_writes() -> None:
    props = _crd_version()
    field = props["spec"]["properties"]["model"]["properties"]["prewarm"]
    assert field["type"] == "boolean" and field["description"].endswith("Default false.")
    shown = props["status"]["properties"]["modelCache"]["properties"]["prewarm"]["properties"]
    written = prewarm.summarize(SHA, 30, {f"n{i}": None for i in range(prewarm.MAX_NODES)})
    assert set(shown) == set(written)


# ---- whole passes ---------------------------------------------------------------------------

def cluster(*nodes: dict[str, Any]) -> FakeKube:
    """An API whose cluster has ``nodes``."""
    return FakeKube(*({"kind": "Node", **n} for n in nodes))


class Caps:
    def get(self) -> kubeapi.CapabilityAnswer:
        return kubeapi.CapabilityAnswer(service_monitor=False, gateway_api=False)


def context(kube: FakeKube, cache: str | None = CACHE) -> reconcile.Context:
    return reconcile.Context(config=OperatorConfig(model_cache_url=cache or ""),
                             kube=kube, capabilities=Caps())  # type: ignore[arg-type]


def run(ctx: reconcile.Context, ms: dict[str, Any]) -> reconcile.Result:
    result = reconcile.reconcile(ctx, ms, reconcile.Observed(), NOW)
    ms["status"] = copy.deepcopy(ctx.kube.status)  # type: ignore[attr-defined]
    return result


def condition(ms: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in ms["status"]["conditions"] if c["type"] == type_)


def events(result: reconcile.Result, reason: str) -> list[str]:
    return [m for _, r, m in result.events if r == reason]


def test_a_pass_creates_one_job_per_node_and_reports_progress_then_success_once() -> None:
    kube = cluster(node("w1"), node("w2"), node("cp", taints=[CONTROL_PLANE]))
    ctx = context(kube)
    ms = body()
    first = run(ctx, ms)
    src = spec.parse_spec(ms).model
    names = {prewarm.job_name("s", n, src) for n in ("w1", "w2")}
    assert set(kube.jobs) == names
    assert {j["metadata"]["annotations"][api.ANNOTATION_PREWARM_NODE]
            for j in kube.jobs.values()} == {"w1", "w2"}
    assert ms["status"]["modelCache"]["prewarm"] == {
        "artifact": SHA, "nodes": 2, "succeeded": 0, "failed": 0, "pending": ["w1", "w2"]}
    assert first.requeue_after is not None and first.requeue_after <= prewarm.POLL_SECONDS
    assert condition(ms, "FieldsIgnored")["status"] == "False"
    ready = condition(ms, "Ready")
    # a pass without prewarm says the same of Ready
    plain = body(False)
    run(context(cluster(node("w1"))), plain)
    assert (ready["status"], ready["reason"]) == (condition(plain, "Ready")["status"],
                                                  condition(plain, "Ready")["reason"])
    for name in names:
        kube.finish(name)
    done = run(ctx, ms)
    assert ms["status"]["modelCache"]["prewarm"]["succeeded"] == 2
    assert len(events(done, prewarm.PREWARMED)) == 1
    assert events(run(ctx, ms), prewarm.PREWARMED) == []  # once
    # the TTL removes the finished Jobs: not made again, still counted
    kube.jobs.clear()
    again = run(ctx, ms)
    assert kube.jobs == {} and ms["status"]["modelCache"]["prewarm"]["succeeded"] == 2
    assert events(again, prewarm.PREWARMED) == []
    assert kube.listed.count("Node") == 1  # the Node LIST is reused


def test_a_failed_job_is_reported_once_naming_the_node_and_the_reason() -> None:
    kube = cluster(node("w1"))
    ctx = context(kube)
    ms = body()
    run(ctx, ms)
    (name,) = kube.jobs
    kube.finish(name, "Failed", reason="BackoffLimitExceeded")
    kube.put({"kind": "Pod", "metadata": {
                  "name": f"{name}-x", "creationTimestamp": NOW,
                  "labels": {optimize.JOB_NAME_SELECTOR: name}},
                  "status": {"containerStatuses": [{"name": builders.PULL_CONTAINER, "state": {
                      "terminated": {"exitCode": 1, "message": "403 Forbidden"}}}]}})
    result = run(ctx, ms)
    (message,) = events(result, prewarm.PREWARM_FAILED)
    assert "node w1" in message and "failed 3 times" in message and "403 Forbidden" in message
    assert ms["status"]["modelCache"]["prewarm"]["failed"] == 1
    assert events(run(ctx, ms), prewarm.PREWARM_FAILED) == []
    assert condition(ms, "Degraded")["status"] == "False"


def test_a_new_artifact_gets_new_jobs_and_the_running_old_ones_go() -> None:
    kube = cluster(node("w1"), node("w2"))
    ctx = context(kube)
    ms = body()
    run(ctx, ms)
    old = dict(kube.jobs)
    kube.finish(sorted(old)[0])  # finished: left to its TTL
    ms["spec"]["model"]["sha256"] = "e" * 64
    ms["metadata"]["generation"] = 2
    run(ctx, ms)
    assert kube.deleted == [("Job", sorted(old)[1])]
    assert set(kube.jobs) - set(old) == {
        prewarm.job_name("s", n, spec.parse_spec(ms).model) for n in ("w1", "w2")}
    assert ms["status"]["modelCache"]["prewarm"]["artifact"] == "e" * 64


def test_turning_prewarm_off_removes_its_status_and_running_jobs() -> None:
    kube = cluster(node("w1"))
    ctx = context(kube)
    ms = body()
    run(ctx, ms)
    assert kube.jobs
    ms["spec"]["model"]["prewarm"] = False
    run(ctx, ms)
    assert kube.jobs == {} and "modelCache" not in ms["status"]
    run(ctx, ms)  # nothing left to look at: no LIST of Jobs needed
    assert kube.deleted and len(kube.deleted) == 1


def test_a_refused_job_is_reported_once_and_tried_again() -> None:
    kube = cluster(node("w1"))
    kube.errors["apply"] = kubeapi.Rejected("jobs.batch is forbidden: exceeded quota")
    ctx = context(kube)
    ms = body()
    (message,) = events(run(ctx, ms), prewarm.PREWARM_FAILED)
    assert "node w1" in message and "was refused" in message and "exceeded quota" in message
    assert ms["status"]["modelCache"]["prewarm"]["pending"] == ["w1"]
    assert events(run(ctx, ms), prewarm.PREWARM_FAILED) == []


def test_without_a_model_cache_no_job_is_made_and_fields_ignored_says_why() -> None:
    kube = cluster(node("w1"))
    ms = body()
    run(context(kube, cache=None), ms)
    assert kube.jobs == {} and kube.listed.count("Node") == 0 and "modelCache" not in ms["status"]
    ignored = condition(ms, "FieldsIgnored")
    assert ignored["status"] == "True" and ignored["reason"] == prewarm.UNAVAILABLE
    assert "spec.model.prewarm" in ignored["message"] and "modelCache.enabled" in ignored["message"]
    assert condition(ms, "Ready")["reason"] != prewarm.UNAVAILABLE


def test_the_jobs_are_capped_and_the_status_says_so() -> None:
    kube = cluster(*[node(f"w{i:02}") for i in range(prewarm.MAX_NODES + 5)])
    ms = body()
    run(context(kube), ms)
    assert len(kube.jobs) == prewarm.MAX_NODES
    st = ms["status"]["modelCache"]["prewarm"]
    assert (st["nodes"], st["limitedTo"]) == (prewarm.MAX_NODES + 5, prewarm.MAX_NODES)
    assert len(st["pending"]) == prewarm.PENDING_SHOWN


def test_kubectl_msv_shows_the_progress() -> None:
    ms = body()
    ms["status"] = {"modelCache": {"prewarm": {
        "artifact": SHA, "nodes": 3, "succeeded": 1, "failed": 1, "pending": ["w3"]}}}
    text = kubectl_msv.render(ms)
    assert ("Model cache prewarm: 1/3 node(s) hold dddddddddddd, 1 failed (see the "
            "ModelCachePrewarmFailed Events), pending on w3") in text

