"""The optimization pipeline in whole passes (a fake Kube, a double for the store): the key,
the Job, reuse of a published artifact, progress, failure, and that nothing unfinished is
served."""

from __future__ import annotations

import concurrent.futures
import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from fakekube import FakeKube
from msv_operator import artifacts, optimize, placement, reconcile, spec
from msv_operator import kube as kubeapi
from msv_operator.config import OperatorConfig

from msv_contract import pipeline

NOW = "2026-01-01T12:00:00Z"
SRC = "a" * 64
DATA = "b" * 64
ART = "c" * 64
UID = "0b6f6a2e-0000-4000-8000-000000000019"


def body(**build: Any) -> dict[str, Any]:
    b = {"recipe": "prune-recover",
         "data": {"uri": "s3://data/sst2/train.txt", "sha256": DATA},
         "pruning": {"amount": 0.3}, "budget": {"steps": 200},
         "output": {"uri": "s3://out/built/", "credentialsSecret": "out-creds"}}
    b.update(build)
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "s", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": {"model": {"uri": "s3://models/bert.tar.gz", "sha256": SRC,
                               "framework": "transformers", "task": "text-classification"},
                     "variants": [{"name": "baseline"}, {"name": "small", "build": b}],
                     "traffic": [{"variant": "baseline", "weight": 100}]}}


class Inline(concurrent.futures.Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


class Store:
    """``artifacts.read_small`` over a dict of URI -> bytes; counts reads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.reads: list[str] = []

    def __call__(self, uri: str, *, s3: artifacts.S3Access | None = None
                 ) -> artifacts.SmallFile | artifacts.NotChecked:
        self.reads.append(uri)
        return artifacts.SmallFile(uri, self.files.get(uri))

    def publish(self, key: str, report: Mapping[str, Any] | None = None) -> None:
        prefix = f"s3://out/built/{key}/"
        self.files[prefix + pipeline.MANIFEST_FILE] = json.dumps(
            {"key": key, "sha256": ART, "sizeBytes": 1000}).encode()
        if report is not None:
            self.files[prefix + pipeline.REPORT_FILE] = json.dumps(report).encode()


class Caps:
    def get(self) -> kubeapi.CapabilityAnswer:
        return kubeapi.CapabilityAnswer(service_monitor=False, gateway_api=False)


def context(kube: FakeKube, store: Store) -> reconcile.Context:
    return reconcile.Context(
        config=OperatorConfig(), kube=kube, capabilities=Caps(),  # type: ignore[arg-type]
        pipeline=optimize.PipelineState(reader=store,
                                        reads=placement.HeaderReads(executor=Inline())))


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def ctx(kube: FakeKube, store: Store) -> reconcile.Context:
    """One operator's context over ``kube`` and ``store``, kept across a test's passes."""
    return context(kube, store)


def run(ctx: reconcile.Context, ms: dict[str, Any]) -> reconcile.Result:
    result = reconcile.reconcile(ctx, ms, reconcile.Observed(), NOW)
    ms["status"] = copy.deepcopy(ctx.kube.status)  # type: ignore[attr-defined]
    return result


def start(ctx: reconcile.Context, ms: dict[str, Any]) -> str:
    """A first pass over ``ms``, which starts its one build Job: that Job's name."""
    run(ctx, ms)
    (name,) = ctx.kube.jobs  # type: ignore[attr-defined]
    return str(name)


def key_for(ms: Mapping[str, Any]) -> str:
    parsed = spec.parse_spec(ms)
    build = parsed.variants[1].build
    assert build is not None
    return optimize.key_of(parsed, build)


def recipe_for(ms: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe the built variant's Job runs and its key hashes."""
    parsed = spec.parse_spec(ms)
    build = parsed.variants[1].build
    assert build is not None
    return optimize.recipe_of(parsed, build)


def entry(ms: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in ms["status"]["variants"] if v["name"] == name)


def condition(ms: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in ms["status"]["conditions"] if c["type"] == type_)


def test_key_is_stable_and_changes_with_the_recipe_not_with_the_output() -> None:
    a = key_for(body())
    assert a == key_for(body())
    assert key_for(body(output={"uri": "s3://elsewhere/x/"})) == a
    assert key_for(body(deadline="3h")) == a
    assert key_for(body(budget={"steps": 201})) != a
    assert key_for(body(pruning={"amount": 0.4})) != a
    other = body()
    other["spec"]["model"]["sha256"] = "d" * 64
    assert key_for(other) != a


def test_job_is_restricted_and_runs_the_agreed_command(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    ms = body()
    run(ctx, ms)
    key = key_for(ms)
    (job,) = kube.jobs.values()
    assert job["metadata"]["name"] == f"s-small-build-{key[:10]}"
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    source, data = pod["initContainers"]
    assert source["args"] == ["pull", "s3://models/bert.tar.gz", "/mnt/source",
                              "--sha256", SRC]
    assert data["args"] == ["pull", "s3://data/sst2/train.txt", "/mnt/data", "--sha256", DATA]
    (c,) = pod["containers"]
    recipe = optimize.recipe_of(spec.parse_spec(ms), spec.parse_spec(ms).variants[1].build)
    assert c["args"] == ["optimize", "build", "--source", "/mnt/source",
                         "--data", "/mnt/data/train.txt",
                         "--recipe-json", pipeline.canonical(recipe),
                         "--source-sha256", SRC, "--data-sha256", DATA,
                         "--publish", "s3://out/built/", "--work", "/tmp/work"]
    assert c["envFrom"] == [{"secretRef": {"name": "out-creds"}}]
    # nothing is served from an unfinished artifact: no Deployment for the variant
    assert ("Deployment", "s-small") not in kube.applied
    assert ("Deployment", "s-baseline") in kube.applied
    assert entry(ms, "small")["build"]["phase"] == "Pending"
    assert condition(ms, "Built")["reason"] == "Building"


def test_an_image_archive_is_read_from_the_directory_its_pull_unpacks(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    # the data pull unpacks an archive and drops it: the build reads the directory
    ms = body(data={"uri": "s3://data/images/colours.tar.gz", "sha256": DATA})
    ms["spec"]["model"]["task"] = "image-classification"
    run(ctx, ms)
    (job,) = kube.jobs.values()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--data") + 1] == optimize.DATA_DIR


def test_the_pruning_amount_is_bounded_as_the_build_bounds_it() -> None:
    at_most = spec.parse_spec(body(pruning={"amount": pipeline.MAX_PRUNE_AMOUNT}))
    assert at_most.variants[1].build is not None
    assert at_most.variants[1].build.pruning_amount == pipeline.MAX_PRUNE_AMOUNT
    with pytest.raises(spec.InvalidSpecError, match=r"build\.pruning\.amount"):
        spec.parse_spec(body(pruning={"amount": pipeline.MAX_PRUNE_AMOUNT + 0.01}))


def job_recipe(kube: FakeKube) -> str:
    """The ``--recipe-json`` the one build Job's container runs with."""
    (job,) = kube.jobs.values()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return str(c["args"][c["args"].index("--recipe-json") + 1])


def test_the_pruning_ranking_reaches_the_build_and_only_a_non_default_one_changes_the_key(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    from model_server.optimize.recipe import parse_recipe

    build = spec.parse_spec(body()).variants[1].build
    assert build is not None and build.pruning_ranking == pipeline.DEFAULT_RANKING
    # naming the default builds the same artifact as leaving it out (as specs from before the
    # field do): the recipe does not carry it, and the build applies it
    named = body(pruning={"amount": 0.3, "ranking": pipeline.DEFAULT_RANKING})
    assert key_for(named) == key_for(body())
    assert "ranking" not in recipe_for(named)
    assert parse_recipe(pipeline.canonical(recipe_for(named))).ranking == \
        pipeline.DEFAULT_RANKING
    # another ranking is a new artifact, and the Job's build is told it
    (other,) = set(pipeline.RANKINGS) - {pipeline.DEFAULT_RANKING}
    ms = body(pruning={"amount": 0.3, "ranking": other})
    assert key_for(ms) != key_for(body())
    run(ctx, ms)
    recipe = job_recipe(kube)
    assert recipe == pipeline.canonical(recipe_for(ms))
    assert json.loads(recipe)["ranking"] == other
    assert parse_recipe(recipe).ranking == other


def test_published_artifact_is_served_without_a_job(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body()
    key = key_for(ms)
    store.publish(key, {"summary": {"agreement": 0.995, "latencyRatio": 0.6,
                                    "sizeBytes": 1000, "parameters": 10}})
    run(ctx, ms)
    assert kube.jobs == {}
    dep = kube.applied[("Deployment", "s-small")]
    (pull,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert pull["args"][:2] == ["pull", f"s3://out/built/{key}/model.tar.gz"]
    assert pull["args"][pull["args"].index("--sha256") + 1] == ART
    assert pull["envFrom"] == [{"secretRef": {"name": "out-creds"}}]
    small = entry(ms, "small")
    assert small["provenance"]["artifactSha256"] == ART
    assert small["provenance"]["sourceSha256"] == SRC
    assert small["provenance"]["dataSha256"] == DATA
    assert small["provenance"]["report"]["agreement"] == 0.995
    assert small["derivedFrom"] == f"s3://models/bert.tar.gz@sha256:{SRC}"
    assert small["build"]["readyToRollOut"] is True
    assert condition(ms, "Built")["status"] == "True"
    # the next pass, by a new operator (no cache of its own), trusts the verified record in
    # status: no second MANIFEST read
    reads = len(store.reads)
    run(context(kube, store), ms)
    assert len(store.reads) == reads


def test_progress_comes_from_the_newest_line() -> None:
    log = "\n".join(["hello", pipeline.PROGRESS_PREFIX + json.dumps(
        {"phase": "training", "step": 10, "total": 200, "etaSeconds": 95.04}),
        "x " + pipeline.PROGRESS_PREFIX + "not json", pipeline.PROGRESS_PREFIX + json.dumps(
        {"phase": "training", "step": 20, "total": 200, "etaSeconds": 80})])
    assert optimize.parse_progress(log) == {"stage": "training", "step": 20, "total": 200,
                                            "etaSeconds": 80.0}
    assert optimize.parse_progress("no progress here") is None


def running_pod(job: str, **state: Any) -> dict[str, Any]:
    return {"kind": "Pod",
            "metadata": {"name": f"{job}-x", "labels": {optimize.JOB_NAME_SELECTOR: job},
                         "creationTimestamp": "2026-01-01T11:00:00Z"},
            "status": {"containerStatuses": [{"name": "optimize", "state": state}]}}


def test_running_job_reports_progress_and_serves_nothing(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    ms = body()
    name = start(ctx, ms)
    kube.put(running_pod(name, running={}))
    kube.logs["optimize"] = pipeline.PROGRESS_PREFIX + json.dumps(
        {"phase": "training", "step": 50, "total": 200, "etaSeconds": 30})
    result = run(ctx, ms)
    build = entry(ms, "small")["build"]
    assert build == {"phase": "Running", "key": key_for(ms), "job": name, "stage": "training",
                     "step": 50, "total": 200, "etaSeconds": 30.0}
    assert result.requeue_after is not None
    assert ("Deployment", "s-small") not in kube.applied


def test_failed_job_names_the_cause_with_log_lines_and_stable_keeps_serving(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    ms = body()
    name = start(ctx, ms)
    kube.jobs[name]["status"] = {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}]}
    kube.put(running_pod(name, terminated={"exitCode": 137, "reason": "Error"}))
    kube.logs["optimize"] = "loading\nstep 3\nRuntimeError: out of patience"
    result = run(ctx, ms)
    built = condition(ms, "Built")
    assert built["status"] == "False" and built["reason"] == "BuildFailed"
    assert "deadline" in built["message"]
    assert "RuntimeError: out of patience" in built["message"]
    assert any(e[1] == "BuildFailed" for e in result.events)
    assert ("Deployment", "s-small") not in kube.applied
    assert condition(ms, "Ready")["status"] == "False"  # the baseline has no pods in the fake
    assert ("Deployment", "s-baseline") in kube.applied
    # the same generation does not retry; a new one does
    run(ctx, ms)
    assert ("Job", name) not in kube.deleted
    ms["metadata"]["generation"] = 2
    run(ctx, ms)
    assert ("Job", name) in kube.deleted


def test_a_changed_recipe_keeps_the_previous_artifact_serving(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body()
    store.publish(key_for(ms))
    run(ctx, ms)
    before = kube.applied[("Deployment", "s-small")]
    ms["spec"]["variants"][1]["build"]["budget"] = {"steps": 400}
    ms["metadata"]["generation"] = 2
    kube.applied.clear()
    run(ctx, ms)
    assert len(kube.jobs) == 1  # the new key's Job
    # the Deployment is unchanged: it still pulls the old artifact
    assert ("Deployment", "s-small") not in kube.applied or kube.applied[
        ("Deployment", "s-small")]["spec"] == before["spec"]
    assert entry(ms, "small")["provenance"]["key"] == key_for(body())


def test_a_manifest_of_another_key_is_not_served(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body()
    key = key_for(ms)
    store.files[f"s3://out/built/{key}/MANIFEST"] = json.dumps(
        {"key": "0" * 64, "sha256": ART}).encode()
    run(ctx, ms)
    assert ("Deployment", "s-small") not in kube.applied
    assert condition(ms, "Built")["reason"] == "BuildFailed"


@pytest.mark.parametrize(("change", "field"), [
    ({"recipe": "quantum"}, "build.recipe"),
    ({"data": {"uri": "s3://data/x.txt"}}, "build.data.sha256"),
    ({"budget": {}}, "build.budget"),
    ({"output": {"uri": "http://store/x/"}}, "build.output.uri"),
    ({"output": {"uri": "file:///x/"}}, "build.output.uri"),
    ({"output": {"uri": "pvc://Not_A_Claim/x"}}, "build.output.uri"),
    ({"output": {"uri": "pvc://claim/../x"}}, "build.output.uri"),
    ({"output": {"uri": "pvc://claim/x", "credentialsSecret": "c"}},
     "build.output.credentialsSecret"),
    ({"recipe": "distill"}, "build.pruning"),
    ({"pruning": {"amount": 0.3, "ranking": "random"}}, "build.pruning.ranking"),
    ({"pruning": {"amount": 0.3, "ranking": ["weight"]}}, "build.pruning.ranking"),
])
def test_spec_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(spec.InvalidSpecError, match=field.replace(".", r"\.")):
        spec.parse_spec(body(**change))


def test_a_framework_that_cannot_build_is_refused() -> None:
    ms = body()
    ms["spec"]["model"]["framework"] = "torchscript"
    del ms["spec"]["model"]["task"]
    with pytest.raises(spec.InvalidSpecError, match=r"build\.recipe.*transformers"):
        spec.parse_spec(ms)
    ms = body(recipe="static-int8")
    ms["spec"]["model"]["task"] = "text-generation"
    with pytest.raises(spec.InvalidSpecError, match="static-int8"):
        spec.parse_spec(ms)


def test_exactly_the_capability_tables_framework_task_pairs_build() -> None:
    def tf(task: str | None, **build: Any) -> dict[str, Any]:
        ms = body(recipe="static-int8", pruning=None, **build)
        del ms["spec"]["variants"][1]["build"]["pruning"]
        ms["spec"]["model"].update(framework="tensorflow", uri="s3://models/cnn.tar.gz")
        ms["spec"]["model"].pop("task")
        if task:
            ms["spec"]["model"]["task"] = task
        return ms

    images = {"uri": "s3://data/colours.tar.gz", "sha256": DATA, "inputRange": [-1, 1]}
    parsed = spec.parse_spec(tf("image-classification", data=images))
    build = parsed.variants[1].build
    assert build is not None and build.input_range == (-1.0, 1.0)
    assert optimize.recipe_of(parsed, build)["inputRange"] == [-1.0, 1.0]
    with pytest.raises(spec.InvalidSpecError,
                       match=r"build\.recipe: static-int8 does not produce tensorflow task-less"):
        spec.parse_spec(tf(None))
    ms = tf("image-classification")
    ms["spec"]["variants"][1]["build"].update(recipe="distill", student={"layers": 1})
    with pytest.raises(spec.InvalidSpecError,
                       match=r"build\.recipe: distill needs .*framework transformers, not "
                             "tensorflow"):
        spec.parse_spec(ms)
    ms = body()
    ms["spec"]["model"]["task"] = "text-generation"
    with pytest.raises(spec.InvalidSpecError, match=r"prune-recover does not produce"):
        spec.parse_spec(ms)
    with pytest.raises(spec.InvalidSpecError, match=r"build\.data\.inputRange: applies to "
                                                    "framework torchscript or tensorflow only"):
        spec.parse_spec(body(data=images))
    with pytest.raises(spec.InvalidSpecError, match=r"build\.data\.inputRange: expected"):
        spec.parse_spec(tf("image-classification", data={**images, "inputRange": [1, 0]}))


def test_a_build_needs_the_source_sha256_and_no_model_of_its_own() -> None:
    ms = body()
    del ms["spec"]["model"]["sha256"]
    with pytest.raises(spec.InvalidSpecError, match=r"spec\.model\.sha256"):
        spec.parse_spec(ms)
    ms = body()
    ms["spec"]["variants"][1]["model"] = {"uri": "s3://x/y"}
    with pytest.raises(spec.InvalidSpecError, match=r"variants\[1\]\.model"):
        spec.parse_spec(ms)


def test_a_finished_job_is_served_once_its_manifest_is_read(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body()
    name = start(ctx, ms)
    key = key_for(ms)
    kube.jobs[name]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.put(running_pod(name, terminated={"exitCode": 0, "message": json.dumps(
        {"key": key, "sha256": ART, "artifactUri": "x", "sizeBytes": 1, "reportUri": "y"})}))
    store.publish(key)
    run(ctx, ms)  # the "missing" answer is dropped: read again
    run(ctx, ms)
    assert entry(ms, "small")["provenance"]["artifactSha256"] == ART
    assert entry(ms, "small")["provenance"]["job"] == name
    assert ("Deployment", "s-small") in kube.applied


# ---- a pvc:// output: the Job mounts the claim, the operator records what the Job reports ----

PVC_OUTPUT = {"uri": "pvc://built/models"}


def finish(kube: FakeKube, name: str, result: Mapping[str, Any] | None) -> None:
    """The Job ``name`` completed; its build container's termination message is ``result``."""
    kube.jobs[name]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    term: dict[str, Any] = {"exitCode": 0}
    if result is not None:
        term["message"] = json.dumps(result)
    kube.put(running_pod(name, terminated=term))


def job_result(key: str, **summary: Any) -> dict[str, Any]:
    """What ``model-server optimize build`` reports publishing to the claim."""
    base = f"file:///mnt/output/models/{key}/"
    return {"key": key, "artifactUri": base + pipeline.ARTIFACT_FILE, "sha256": ART,
            "sizeBytes": 1000, "reportUri": base + pipeline.REPORT_FILE, "summary": summary}


def test_a_pvc_output_is_accepted_with_its_claim_and_prefix() -> None:
    build = spec.parse_spec(body(output=PVC_OUTPUT)).variants[1].build
    assert build is not None
    assert (build.output, build.output_secret) == ("pvc://built/models/", None)
    assert optimize.publish_target(build) == "file:///mnt/output/models/"
    bare = spec.parse_spec(body(output={"uri": "pvc://built"})).variants[1].build
    assert bare is not None and optimize.publish_target(bare) == "file:///mnt/output/"


def test_a_pvc_output_job_mounts_the_claim_read_write_and_publishes_to_it(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body(output=PVC_OUTPUT)
    run(ctx, ms)
    (job,) = kube.jobs.values()
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001
    (c,) = pod["containers"]
    args = c["args"]
    assert args[args.index("--publish") + 1] == "file:///mnt/output/models/"
    assert {"name": "output", "mountPath": "/mnt/output"} in c["volumeMounts"]
    assert {"name": "output", "persistentVolumeClaim": {"claimName": "built"}} in pod["volumes"]
    assert "envFrom" not in c  # a volume takes no credentials
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # the operator does not read the volume: no MANIFEST read was asked of the store
    assert store.reads == []
    assert entry(ms, "small")["build"]["phase"] == "Pending"
    assert ("Deployment", "s-small") not in kube.applied


def test_a_pvc_output_is_served_checksummed_from_the_jobs_result_and_never_recomputed(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body(output=PVC_OUTPUT)
    name = start(ctx, ms)
    key = key_for(ms)
    finish(kube, name, job_result(key, agreement=0.995, latencyRatio=0.6, parameters=10))
    run(ctx, ms)
    small = entry(ms, "small")
    record = small["provenance"]
    assert small["build"]["phase"] == "Published"
    assert record["key"] == key and record["job"] == name
    assert record["artifactUri"] == f"pvc://built/models/{key}/model.tar.gz"
    assert record["artifactSha256"] == ART and record["sizeBytes"] == 1000
    assert record["report"] == {"agreement": 0.995, "latencyRatio": 0.6, "parameters": 10}
    assert small["build"]["readyToRollOut"] is True
    assert condition(ms, "Built")["status"] == "True"
    # the variant's pods pull the archive from the claim (read-only), checking its sha256
    dep = kube.applied[("Deployment", "s-small")]["spec"]["template"]["spec"]
    (pull,) = dep["initContainers"]
    assert pull["args"] == ["pull", f"file:///mnt/claim/model/models/{key}/model.tar.gz",
                            "/mnt/models", "--sha256", ART]
    assert {"name": "model-claim", "mountPath": "/mnt/claim/model",
            "readOnly": True} in pull["volumeMounts"]
    assert "envFrom" not in pull
    assert {"name": "model-claim", "persistentVolumeClaim": {
        "claimName": "built", "readOnly": True}} in dep["volumes"]
    assert {"name": "model", "emptyDir": {}} in dep["volumes"]
    (server,) = dep["containers"]
    assert not any(m["name"] == "model-claim" for m in server["volumeMounts"])

    # the same recipe again, its Job gone (the TTL controller): the record serves, no Job
    kube.jobs.clear()
    kube.applied.clear()
    run(ctx, ms)
    assert kube.jobs == {}
    assert entry(ms, "small")["provenance"] == record
    assert kube.applied[("Deployment", "s-small")]["spec"]["template"]["spec"][
        "initContainers"][0]["args"] == pull["args"]
    assert store.reads == []


def test_a_pvc_output_without_a_record_asks_the_job_which_reuses_the_published_key(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    ms = body(output=PVC_OUTPUT)
    name = start(ctx, ms)
    key = key_for(ms)
    # the status is lost while the finished Job is still there: its result is read again
    finish(kube, name, job_result(key, agreement=0.995, latencyRatio=0.6, reused=True))
    ms["status"] = {}
    run(ctx, ms)
    assert list(kube.jobs) == [name] and kube.deleted == []
    assert entry(ms, "small")["provenance"]["artifactSha256"] == ART
    # status and Job both gone: one new Job, which finds the MANIFEST and reports at once
    kube.jobs.clear()
    ms["status"] = {}
    run(ctx, ms)
    assert list(kube.jobs) == [name]
    assert entry(ms, "small")["build"]["phase"] == "Pending"


def test_a_pvc_output_job_that_reports_nothing_is_a_failure_not_a_wait(
        ctx: reconcile.Context, kube: FakeKube) -> None:
    ms = body(output=PVC_OUTPUT)
    name = start(ctx, ms)
    finish(kube, name, None)
    result = run(ctx, ms)
    built = condition(ms, "Built")
    assert built["reason"] == "BuildFailed"
    assert "without a result" in built["message"] and "pvc://built/models/" in built["message"]
    assert any(e[1] == "BuildFailed" for e in result.events)
    assert ("Deployment", "s-small") not in kube.applied
    ms["metadata"]["generation"] = 2  # a new generation tries again
    run(ctx, ms)
    assert ("Job", name) in kube.deleted


def test_a_record_at_another_output_is_not_served_from_the_new_one(
        ctx: reconcile.Context, kube: FakeKube, store: Store) -> None:
    ms = body()
    store.publish(key_for(ms))
    run(ctx, ms)
    assert entry(ms, "small")["provenance"]["artifactUri"].startswith("s3://out/built/")
    ms["spec"]["variants"][1]["build"]["output"] = PVC_OUTPUT
    ms["metadata"]["generation"] = 2
    run(ctx, ms)
    # the key is the same, the place is not: the Job publishes it there (the S3 copy serves
    # meanwhile)
    assert len(kube.jobs) == 1
    assert entry(ms, "small")["build"]["phase"] == "Pending"
    assert entry(ms, "small")["provenance"]["artifactUri"].startswith("s3://out/built/")
