"""The node-local model cache on the real node (docs/model-cache.md), with real pods.

The agent is the chart's own DaemonSet and Service (``helm template`` of
``modelCache.enabled``), running the operator image on the real node with a hostPath of its
own; the operator (in-process) passes the Service to every pull init container. The model
pods run under Pod Security ``restricted``: no hostPath in them. What each pull took is read
where users read it: ``status.variants[].startup`` (the pull's report, relayed by the
operator) and the agent's Prometheus metrics.

Cases (issue "cold start"): two ModelServices naming one artifact share one cached copy (the
second pull fetches 0 bytes from the store); a corrupted entry is detected and pulled again;
``spec.model.prewarm`` fills the node's cache before any pod runs (a Job on the real node),
so the first pod's pull is a hit; an entry evicted under a small cap never breaks the pod that
was started from it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cacheagents import Agent, agents
from manifests import MS_API
from msv_operator import kube
from operator_harness import RunningOperator
from realpods import (
    REAL_NODE,
    cluster_ip,
    http_json,
    served,
    stores,  # noqa: F401 (the fixture: the in-cluster model stores)
    wait_ready,
)
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores
from msv_contract import modelcache as mc
from msv_contract.api import ANNOTATION_PREWARM_NODE, LABEL_MODELSERVICE, LABEL_PREWARM

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TEXT = "the service was quick and the staff were kind"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four different small classifiers (a few MB each: the chart's smallest cap is 1 MiB),
    each one artifact."""
    from modelfactory import make_text_classifier

    root = tmp_path_factory.mktemp("cache-models")
    out = {}
    for seed, name in enumerate(("shared", "corrupted", "prewarmed", "evicted", "evicting")):
        out[name] = root / name
        make_text_classifier(out[name], seed=seed, hidden_size=128, intermediate_size=512)
    return out


def archive_size(model_dir: Path) -> int:
    return len(modelstores.tar_gz(model_dir))


@pytest.fixture(scope="module")
def agent(cluster: lc.Cluster, models: dict[str, Path]) -> Iterator[Agent]:
    """The chart's model cache agents on the real node, capped at one and a half of the
    largest artifact: one entry fits, a second one evicts the first."""
    with agents(cluster, cap=int(max(archive_size(m) for m in models.values()) * 1.5)) as a:
        yield a


@pytest.fixture(scope="module")
def namespace_and_operator(crd: None, agent: Agent, module_real_namespace: str
                           ) -> Iterator[str]:
    op = RunningOperator([module_real_namespace], model_cache_url=agent.url).start()
    yield module_real_namespace
    assert op.alive, "the operator must still be running at the end of the module"
    op.stop()


def publish(models: dict[str, Path], which: str, ns: str) -> tuple[str, str, int]:
    """The model in the HTTP store: its URI, sha256 and size in bytes."""
    uri, digest = modelstores.publish_http(models[which], f"{ns}-{which}")
    return uri, digest, (modelstores.http_dir() / f"{ns}-{which}.tar.gz").stat().st_size


def started(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    """``status.variants[0].startup`` of a Ready ModelService, once the operator wrote it."""
    def entry() -> dict[str, Any] | None:
        ms = k.get(MS_API, "ModelService", ns, name) or {}
        variants = (ms.get("status") or {}).get("variants") or [{}]
        found = variants[0].get("startup")
        return dict(found) if found else None
    return wait_for(f"{name}: status.variants[0].startup", entry, timeout=60, interval=1)


def predict(k: kube.Kube, ns: str, name: str) -> Any:
    ip = cluster_ip(k, ns, name)
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
    return http_json(f"http://{ip}/v2/models/{name}/infer", body)["outputs"]


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_two_modelservices_naming_one_artifact_share_one_cached_copy(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], agent: Agent,  # noqa: F811
        namespace_and_operator: str, k: kube.Kube) -> None:
    ns = namespace_and_operator
    uri, digest, size = publish(models, "shared", ns)
    before = agent.metrics()
    k.apply(served("first", ns, uri, digest))
    wait_ready(k, ns, "first")
    first = started(k, ns, "first")
    k.apply(served("second", ns, uri, digest))
    wait_ready(k, ns, "second")
    second = started(k, ns, "second")
    after = agent.metrics()
    # the first pull filled the node's cache from the store, the second fetched nothing
    assert (first["cacheHit"], first["fetchedBytes"]) == (False, size), first
    assert (second["cacheHit"], second["fetchedBytes"]) == (True, 0), second
    assert delta(before, after, f"{mc.MISSES}_total") == 1, after
    assert delta(before, after, f"{mc.HITS}_total") == 1, after
    assert delta(before, after, f"{mc.STORE_BYTES}_total") == size, after
    assert delta(before, after, f"{mc.SERVED_BYTES}_total") == size, after
    # the phases of each first start: every one measured, none negative
    for entry in (first, second):
        assert entry["pod"] and entry["totalSeconds"] >= entry["loadSeconds"] >= 0, entry
        assert min(entry[p] for p in ("scheduledSeconds", "imageSeconds", "fetchSeconds")) >= 0
    # the same model behind both: the same answer
    assert predict(k, ns, "first") == predict(k, ns, "second")
    for name in ("first", "second"):
        k.delete(MS_API, "ModelService", ns, name, None)


def test_a_corrupted_cache_entry_is_detected_and_pulled_again(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], agent: Agent,  # noqa: F811
        namespace_and_operator: str, k: kube.Kube) -> None:
    ns = namespace_and_operator
    uri, digest, size = publish(models, "corrupted", ns)
    k.apply(served("clean", ns, uri, digest))
    wait_ready(k, ns, "clean")
    entry = agent.root / "entries" / f"sha256-{digest}" / "data"
    assert entry.stat().st_size == size  # the cached copy, on the node's disk
    data = bytearray(entry.read_bytes())
    data[size // 2] ^= 0xFF  # one byte flipped, the size unchanged
    entry.write_bytes(bytes(data))
    before = agent.metrics()
    k.apply(served("after-damage", ns, uri, digest))
    wait_ready(k, ns, "after-damage")
    after = agent.metrics()
    pulled = started(k, ns, "after-damage")
    assert (pulled["cacheHit"], pulled["fetchedBytes"]) == (False, size), pulled
    assert delta(before, after, f"{mc.CORRUPT}_total") == 1, after
    assert delta(before, after, f"{mc.STORE_BYTES}_total") == size, after
    # the entry is whole again: its bytes are the artifact's
    with tarfile.open(entry) as tf:
        assert "config.json" in {Path(n).name for n in tf.getnames()}
    assert predict(k, ns, "after-damage") == predict(k, ns, "clean")
    for name in ("clean", "after-damage"):
        k.delete(MS_API, "ModelService", ns, name, None)


def test_prewarm_fills_the_nodes_cache_before_any_pod_so_the_first_pull_is_a_hit(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], agent: Agent,  # noqa: F811
        namespace_and_operator: str, k: kube.Kube) -> None:
    ns = namespace_and_operator
    uri, digest, size = publish(models, "prewarmed", ns)
    before = agent.metrics()
    # no pod yet (the variant at 0 replicas): only the prewarm Job pulls
    ms = served("warmed", ns, uri, digest, variants=[{"name": "baseline", "replicas": 0}])
    ms["spec"]["model"]["prewarm"] = True
    k.apply(ms)

    def prewarmed() -> dict[str, Any] | None:
        status = (k.get(MS_API, "ModelService", ns, "warmed") or {}).get("status") or {}
        progress = (status.get("modelCache") or {}).get("prewarm") or {}
        assert not progress.get("failed"), progress
        return progress if progress.get("succeeded") == progress.get("nodes") == 1 else None
    progress = wait_for("status.modelCache.prewarm: the real node warmed", prewarmed,
                        timeout=180, interval=1)
    assert progress["artifact"] == digest and not progress.get("pending"), progress
    jobs = k.list("batch/v1", "Job", ns, f"{LABEL_MODELSERVICE}=warmed,{LABEL_PREWARM}")
    assert [j["metadata"]["annotations"][ANNOTATION_PREWARM_NODE] for j in jobs] == [REAL_NODE]
    assert not [p for p in k.list("v1", "Pod", ns, f"{LABEL_MODELSERVICE}=warmed")]
    warmed = agent.metrics()
    # the Job's pull filled the node's cache from the store: one miss, the artifact's bytes
    assert delta(before, warmed, f"{mc.MISSES}_total") == 1, warmed
    assert delta(before, warmed, f"{mc.STORE_BYTES}_total") == size, warmed
    wait_for("Event ModelCachePrewarmed", lambda: any(
        e.get("reason") == "ModelCachePrewarmed" for e in events_of(k, ns, "warmed")), timeout=60)
    # the first model pod on the node: a hit, nothing fetched from the store
    ms["spec"]["variants"] = [{"name": "baseline", "replicas": 1}]
    k.apply(ms)
    wait_ready(k, ns, "warmed")
    first = started(k, ns, "warmed")
    after = agent.metrics()
    assert (first["cacheHit"], first["fetchedBytes"]) == (True, 0), first
    assert delta(warmed, after, f"{mc.HITS}_total") == 1, after
    assert delta(warmed, after, f"{mc.STORE_BYTES}_total") == 0, after
    assert predict(k, ns, "warmed")
    k.delete(MS_API, "ModelService", ns, "warmed", None)


def events_of(k: kube.Kube, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in k.list("v1", "Event", ns)
            if (e.get("involvedObject") or {}).get("name") == name]


def test_an_entry_evicted_under_a_small_cap_never_breaks_a_running_pod(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], agent: Agent,  # noqa: F811
        namespace_and_operator: str, k: kube.Kube) -> None:
    ns = namespace_and_operator
    uri, digest, _ = publish(models, "evicted", ns)
    k.apply(served("older", ns, uri, digest))
    wait_ready(k, ns, "older")
    answer = predict(k, ns, "older")
    before = agent.metrics()
    other_uri, other_digest, _ = publish(models, "evicting", ns)
    k.apply(served("newer", ns, other_uri, other_digest))
    wait_ready(k, ns, "newer")
    after = agent.metrics()
    # the cap holds one entry: the newer artifact evicted the older one ...
    assert delta(before, after, f"{mc.EVICTIONS}_total") >= 1, after
    assert not (agent.root / "entries" / f"sha256-{digest}").exists()
    # ... and the pod started from it runs on its own copy: Ready, answering the same
    ms = wait_ready(k, ns, "older")
    assert ms["status"]["variants"][0]["readyReplicas"] == 1, ms["status"]
    assert predict(k, ns, "older") == answer
    for name in ("older", "newer"):
        k.delete(MS_API, "ModelService", ns, name, None)
