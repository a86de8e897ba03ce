"""The optimization pipeline on real pods (docs/optimization.md, "Built variants").

A variant with ``build`` is produced by a Job the operator writes: the runtime image's
``model-server optimize build`` pulls the source model and the data from the S3 store (with
the user's credentials Secret), prunes and recovers, evaluates on held-out lines and publishes
the artifact content-addressed (``<output>/<key>/model.tar.gz``, ``report.json``, then
``MANIFEST``). The variant's pods then pull exactly that artifact, checked by its sha256. All
of it runs on the real node, under Pod Security ``restricted``.

Cases (issue "variants made well"): a prune-recover Job whose artifact a variant serves, with
its provenance and offline report in status, then promoted by the gated rollout; the same
recipe again reuses the artifact (no Job); a Job that cannot read its data reports the cause
while the stable variant keeps serving.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifests import MS_API
from msv_operator import kube
from operator_harness import RunningOperator, condition
from realpods import (
    cluster_ip,
    http_json,
    served,
    stores,  # noqa: F401 (the fixture: the in-cluster model stores)
    wait_ready,
)
from service_load import Load
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores, monitoring
from msv_contract import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TEXT = "the film was great and i love it"


@pytest.fixture
def operator(crd: None, real_namespace: str) -> Iterator[RunningOperator]:
    """An operator (in-process) on the test's namespace, judging rollouts on the in-cluster
    Prometheus."""
    op = RunningOperator([real_namespace], prometheus_url=monitoring.PROMETHEUS_URL,
                         measure_seconds=5.0).start()
    yield op
    assert op.alive, "the operator must still be running at the end of the test"
    op.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelfactory import make_trained_text_classifier

    path = tmp_path_factory.mktemp("pipeline") / "trained"
    assert make_trained_text_classifier(path) > 0.9
    return path


def data_lines(n: int = 240) -> bytes:
    """Labelled sentiment lines (``label<TAB>text``): the recipe's unlabeled inputs, and an
    accuracy figure."""
    from modelfactory import sentiment_sentences

    texts, labels = sentiment_sentences(n, seed=11)
    names = ("NEGATIVE", "POSITIVE")
    return "".join(f"{names[y]}\t{t}\n" for t, y in zip(texts, labels, strict=True)).encode()


RECIPES = {"prune-recover": {"pruning": {"amount": 0.5}},
           "distill": {"student": {"layers": 1, "hiddenSize": 16, "intermediateSize": 64,
                                   "heads": 1}}}
"""The recipes a real Job builds (with their own fields); the variant is named after it."""
VARIANT = {"prune-recover": "pruned", "distill": "student"}


def build_of(ns: str, data: tuple[str, str], recipe: str, steps: int = 20,
             **fields: Any) -> dict[str, Any]:
    """A variant's ``build``: ``recipe`` (with its ``fields``) on the labelled ``data`` (uri,
    sha256), published to the S3 store's ``built`` bucket under ``<ns>/``, both read and
    written with the ``s3-creds`` Secret."""
    return {"recipe": recipe,
            "data": {"uri": data[0], "sha256": data[1], "credentialsSecret": "s3-creds",
                     "labels": True},
            **fields, "budget": {"steps": steps},
            "output": {"uri": f"s3://built/{ns}/", "credentialsSecret": "s3-creds"}}


def with_build(name: str, ns: str, source: tuple[str, str], data: tuple[str, str],
               steps: int = 20, recipe: str = "prune-recover", **extra: Any) -> dict[str, Any]:
    uri, digest = source
    build = build_of(ns, data, recipe, steps, **RECIPES[recipe])
    return served(name, ns, uri, digest, credentials="s3-creds",
                  variants=[{"name": "baseline"}, {"name": VARIANT[recipe], "build": build}],
                  traffic={"baseline": 100}, **extra)


def variant(k: kube.Kube, ns: str, name: str, which: str) -> dict[str, Any]:
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    for v in (ms.get("status") or {}).get("variants") or []:
        if v.get("name") == which:
            return dict(v)
    return {}


def jobs(k: kube.Kube, ns: str) -> list[str]:
    return [j["metadata"]["name"] for j in k.list("batch/v1", "Job", ns)]


def wait_published(k: kube.Kube, ns: str, name: str, which: str, timeout: float = 600,
                   stages: set[str] | None = None) -> dict[str, Any]:
    """Variant ``which``'s ``status.variants[].build`` once its phase is Published (adding the
    stages it reports meanwhile to ``stages``); a BuildFailed ``Built`` condition ends the wait
    at once, with the condition."""
    def published() -> dict[str, Any] | None:
        build = variant(k, ns, name, which).get("build") or {}
        if stages is not None and build.get("stage"):
            stages.add(build["stage"])
        c = condition(k.get(MS_API, "ModelService", ns, name) or {}, "Built")
        if c.get("reason") == "BuildFailed":
            raise RuntimeError(f"the build failed: {c}")  # ends the wait at once
        return build if build.get("phase") == "Published" else None
    return wait_for(f"the {which} variant's artifact published", published, timeout=timeout,
                    interval=1)


def stored_artifact(ns: str, record: dict[str, Any]) -> bytes:
    """The artifact a provenance ``record`` names in the S3 store's ``built`` bucket, checked:
    its bytes hash to ``artifactSha256`` and the key's MANIFEST says so."""
    s3 = modelstores.s3_client()
    prefix = f"{ns}/{record['key']}"
    body = s3.get_object(Bucket="built", Key=f"{prefix}/{pipeline.ARTIFACT_FILE}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record["artifactSha256"], record
    assert record["artifactUri"] == f"s3://built/{prefix}/{pipeline.ARTIFACT_FILE}", record
    manifest = json.loads(s3.get_object(Bucket="built", Key=f"{prefix}/{pipeline.MANIFEST_FILE}")
                          ["Body"].read())
    assert manifest["sha256"] == record["artifactSha256"], manifest
    return bytes(body)


def predict(k: kube.Kube, ns: str, service: str, model: str) -> Any:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
    ip = cluster_ip(k, ns, service)
    return http_json(f"http://{ip}/v2/models/{model}/infer", body)["outputs"]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_built_variant_is_served_and_the_rollout_promotes_it(
        cluster: lc.Cluster, stores: None, trained: Path, real_namespace: str,  # noqa: F811
        operator: RunningOperator, k: kube.Kube, recipe: str) -> None:
    """A prune-recover Job and a distillation Job each build the artifact a variant serves
    (its provenance verified against the store) and the gated rollout promotes."""
    ns, name, built = real_namespace, "pipe", VARIANT[recipe]
    k.apply(modelstores.credentials_secret("s3-creds", ns))
    source = modelstores.publish_s3(trained, "models", f"{ns}/trained.tar.gz")
    data = modelstores.put_s3("data", f"{ns}/sentiment.txt", data_lines())
    modelstores.ensure_bucket("built")
    # enough training steps that the Job runs a while: its progress is read from its log on
    # the measurement interval (5 s here)
    k.apply(with_build(name, ns, source, data, steps=1000, recipe=recipe))

    # the Job runs on the real node, and its progress reaches the status
    job = wait_for("the build Job", lambda: jobs(k, ns) or None, timeout=60)[0]
    assert job.startswith(f"{name}-{built}-build-"), job
    stages: set[str] = set()
    build = wait_published(k, ns, name, built, stages=stages)
    assert stages, "no progress was reported while the Job ran"
    ms = wait_ready(k, ns, name)
    assert condition(ms, "Built")["status"] == "True"

    # provenance: what the store holds, verified
    record = variant(k, ns, name, built)["provenance"]
    key = build["key"]
    assert record["key"] == key and record["sourceSha256"] == source[1]
    assert record["dataSha256"] == data[1] and record["job"] == job
    stored_artifact(ns, record)
    report = record["report"]
    assert 0 <= report["agreement"] <= 1 and report["parameters"] < report["baselineParameters"]
    # the variant's pods pull exactly that artifact, checked
    dep = k.get("apps/v1", "Deployment", ns, f"{name}-{built}") or {}
    pull = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert record["artifactUri"] in pull and record["artifactSha256"] in pull, pull
    answer = predict(k, ns, f"{name}-{built}", name)
    assert answer[0]["data"], answer

    # the gated rollout promotes it on real traffic
    ms = k.get(MS_API, "ModelService", ns, name) or {}
    ms["spec"]["monitoring"] = {"interval": "5s"}
    ms["spec"]["rollout"] = {
        "candidate": built, "steps": [50, 100], "stepDuration": "10s", "minRequests": 10,
        "analysis": {"interval": "5s", "window": "60s", "maxLatencyRatio": 6.0,
                     "maxErrorRate": 0.01, "minAgreement": 0.8, "mirrorPercent": 100,
                     "failureLimit": 1}}
    for key_ in ("resourceVersion", "managedFields"):
        ms["metadata"].pop(key_, None)
    ms.pop("status", None)
    k.apply(ms)
    with Load(cluster_ip(k, ns, name), name) as load:
        def current() -> dict[str, Any]:
            return dict((k.get(MS_API, "ModelService", ns, name) or {}).get("status", {})
                        .get("rollout") or {})
        rollout = wait_for("the built variant's rollout decided", current, timeout=420,
                           interval=1, until=lambda r: r.get("phase") in ("Promoted",
                                                                          "RolledBack"))
    assert rollout["phase"] == "Promoted", rollout
    assert load.failures == {}, load.statuses


def test_the_same_recipe_reuses_the_artifact_and_a_bad_data_uri_is_reported(
        cluster: lc.Cluster, stores: None, trained: Path, real_namespace: str,  # noqa: F811
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    k.apply(modelstores.credentials_secret("s3-creds", ns))
    source = modelstores.publish_s3(trained, "models", f"{ns}/trained.tar.gz")
    data = modelstores.put_s3("data", f"{ns}/sentiment.txt", data_lines())
    modelstores.ensure_bucket("built")
    # a finished artifact for this recipe: built once by a first ModelService
    k.apply(with_build("first", ns, source, data))
    wait_published(k, ns, "first", "pruned")
    wait_ready(k, ns, "first")
    first = variant(k, ns, "first", "pruned")["provenance"]
    built_jobs = jobs(k, ns)
    # the same source, recipe and data under another name: the artifact is reused, no Job
    k.apply(with_build("again", ns, source, data))
    wait_ready(k, ns, "again")
    again = variant(k, ns, "again", "pruned")
    assert again["provenance"]["artifactSha256"] == first["artifactSha256"], again
    assert again["provenance"]["key"] == first["key"]
    assert jobs(k, ns) == built_jobs, "the same recipe must not run a second Job"
    assert predict(k, ns, "again-pruned", "again") == predict(k, ns, "first-pruned", "first")

    # data whose checksum does not match: the Job fails, the condition says why, the stable
    # variant keeps serving and nothing the user made is changed
    wrong = (data[0], "0" * 64)
    k.apply(with_build("broken", ns, source, wrong))

    def failed() -> dict[str, Any] | None:
        c = condition(k.get(MS_API, "ModelService", ns, "broken") or {}, "Built")
        return c if c.get("reason") == "BuildFailed" else None
    c = wait_for("the failed build reported", failed, timeout=300, interval=1)
    assert c["status"] == "False" and "data" in c["message"], c
    assert "checksum" in c["message"] or "sha256" in c["message"], c
    ms = wait_ready(k, ns, "broken")
    assert predict(k, ns, "broken", "broken")[0]["data"]
    assert k.get("apps/v1", "Deployment", ns, "broken-pruned") is None
    assert [v["name"] for v in ms["spec"]["variants"]] == ["baseline", "pruned"]
