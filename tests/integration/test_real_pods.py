"""ModelServices whose pods really run, on the local cluster's real node.

The model-server image (built locally, imported into the node's containerd) runs in pods the
operator built; its init container pulls the model from an in-cluster store (HTTP or S3) and
checks its SHA-256; readiness comes from the server's own probe after the model loaded; every
request goes through a Service programmed by kube-proxy. The namespaces enforce Pod Security
``restricted``. Nothing here is marked Ready by a simulation.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manifests import INT8, MS_API
from msv_operator import kube
from operator_harness import RunningOperator
from realpods import SERVER as SERVER  # re-exported, like the fixtures below
from realpods import cluster_ip, http_json, ms_condition, served, wait_ready, wait_reason
from realpods import operator as operator  # the fixture: an operator on real_namespace
from realpods import stores as stores  # the fixture: the in-cluster model stores
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TEXTS = ["i really love this movie", "the food was terrible"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelfactory import make_text_classifier

    path = tmp_path_factory.mktemp("models") / "classifier"
    make_text_classifier(path)
    return path


def infer_once(ip: str, model: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]]}]}
    return http_json(f"http://{ip}/v2/models/{model}/infer", body)  # type: ignore[no-any-return]


def test_pods_pull_load_and_serve_through_the_stable_service(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_http(classifier, f"{ns}-classifier")
    k.apply(served("sentiment", ns, uri, digest, variants=[{"name": "baseline"}, INT8],
                   traffic={"baseline": 50, "int8": 50}, replicas=2))
    wait_ready(k, ns, "sentiment")
    pods = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=sentiment")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == "node-1", "CPU pods must run on the real node"
        init = pod["status"]["initContainerStatuses"][0]
        assert init["state"]["terminated"]["exitCode"] == 0  # the pull really ran
        server = pod["status"]["containerStatuses"][0]
        assert server["ready"], server
        assert "sha256:" in server["imageID"], server  # containerd's image, not kwok's marker
        assert pod["status"]["podIP"].startswith("10.244.200.")

    import tritonclient.http as httpclient

    ip = cluster_ip(k, ns, "sentiment")
    client = httpclient.InferenceServerClient(f"{ip}:80")
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    result = client.infer("sentiment", [inp])
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert set(labels) <= {"NEGATIVE", "POSITIVE"} and len(labels) == 2


def test_pull_from_the_s3_store_with_credentials_from_a_secret(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_s3(classifier, "models", f"{ns}/classifier.tar.gz")
    k.apply(modelstores.credentials_secret("s3-creds", ns))
    k.apply(served("from-s3", ns, uri, digest, credentials="s3-creds"))
    wait_ready(k, ns, "from-s3")
    meta = http_json(f"http://{cluster_ip(k, ns, 'from-s3')}/v2/models/from-s3")
    assert meta["parameters"]["variant"] == "baseline"


def test_wrong_sha256_fails_the_pull_with_a_clear_status(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_http(classifier, f"{ns}-sha")
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    k.apply(served("badsum", ns, uri, wrong))
    c = wait_reason(k, ns, "badsum", "ModelLoadFailed")
    assert "sha256" in c["message"].lower() or "SHA-256" in c["message"], c


def test_broken_model_reports_model_load_failed_with_the_server_error(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube, tmp_path: Path) -> None:
    ns = real_namespace
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in classifier.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    uri, digest = modelstores.publish_http(broken, f"{ns}-broken")
    k.apply(served("broken", ns, uri, digest))
    c = wait_reason(k, ns, "broken", "ModelLoadFailed")
    assert "no-such-architecture" in c["message"], c


def test_missing_pvc_is_reported_and_nothing_crashes(
        cluster: lc.Cluster, real_namespace: str, operator: RunningOperator,
        k: kube.Kube) -> None:
    ns = real_namespace
    k.apply(served("nopvc", ns, "pvc://no-such-claim/model", None))

    def reported() -> dict[str, Any] | None:
        c = ms_condition(k, ns, "nopvc")
        assert c.get("status") != "True", c
        return c if "no-such-claim" in c.get("message", "") else None
    c = wait_for("a condition naming the missing claim", reported, timeout=120, interval=1)
    assert c["status"] == "False"
    assert operator.alive


def kube_proxy_endpoints(ns: str, service: str, port: str = "http") -> int:
    """How many endpoints kube-proxy has programmed for ``ns/service:port``: the jumps to
    endpoint chains in the Service's chain of its iptables rules (read, never changed)."""
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    tag = f'"{ns}/{service}:{port} -> '
    return sum(1 for line in rules.splitlines()
               if line.startswith("-A KUBE-SVC-") and tag in line and "-j KUBE-SEP-" in line)


def _variant_of_answer(ip: str, model: str) -> str:
    # A fresh connection per request: kube-proxy balances connections, not requests.
    meta = http_json(f"http://{ip}/v2/models/{model}", timeout=5)
    return str(meta["parameters"]["variant"])


def test_traffic_split_follows_replicas_over_a_thousand_requests(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_http(classifier, f"{ns}-split")
    k.apply(served("split", ns, uri, digest, variants=[{"name": "baseline"}, INT8],
                   traffic={"baseline": 75, "int8": 25}, replicas=4))
    wait_ready(k, ns, "split", timeout=420)

    def all_ready() -> dict[str, int] | None:
        ms = k.get(MS_API, "ModelService", ns, "split") or {}
        replicas = {v["name"]: v.get("readyReplicas", 0)
                    for v in ms.get("status", {}).get("variants", [])}
        return replicas if replicas == {"baseline": 3, "int8": 1} else None
    # Ready needs one ready pod per variant; the split needs all four.
    wait_for("3 baseline and 1 int8 pods ready", all_ready, timeout=300, interval=1)
    ip = cluster_ip(k, ns, "split", endpoints=4)
    # The split is kube-proxy's: measure once its rules hold the four endpoints. Under the
    # churn of other tests' namespaces going away it can lag by seconds (one run measured
    # 2:1, a baseline endpoint missing from its rules).
    wait_for("kube-proxy's rules to hold the four endpoints",
             lambda: kube_proxy_endpoints(ns, "split") == 4, timeout=60, interval=0.5)
    # kube-proxy has each endpoint once every pod has answered through the Service.
    wait_for("every variant answering through the Service",
             lambda: {_variant_of_answer(ip, "split") for _ in range(40)} == {"baseline", "int8"},
             timeout=60)
    n = 1000
    counts = Counter(_variant_of_answer(ip, "split") for _ in range(n))
    share = 100.0 * counts["baseline"] / n
    print(f"traffic split over {n} requests: {dict(counts)} -> baseline {share:.1f}%")
    slices = k.list("discovery.k8s.io/v1", "EndpointSlice", ns, "kubernetes.io/service-name=split")
    routed = [((e.get("targetRef") or {}).get("name"), e.get("addresses"), e.get("conditions"))
              for s_ in slices for e in s_.get("endpoints") or []]
    pods = [(p["metadata"]["name"], p["metadata"]["labels"], (p.get("status") or {}).get("podIP"))
            for p in k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=split")]
    assert abs(share - 75.0) <= 5.0, (counts, routed, pods)


def test_rolling_update_under_load_loses_no_request(
        cluster: lc.Cluster, stores: None, classifier: Path, real_namespace: str,
        operator: RunningOperator, k: kube.Kube) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_http(classifier, f"{ns}-roll")
    body = served("roll", ns, uri, digest, replicas=2)
    k.apply(body)
    wait_ready(k, ns, "roll")
    ip = cluster_ip(k, ns, "roll", endpoints=2)
    old_pods = {p["metadata"]["name"]
                for p in k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=roll")}

    stop = threading.Event()
    results: Counter[str] = Counter()
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                out = infer_once(ip, "roll")
                results["ok" if out.get("outputs") else "bad"] += 1
            except (urllib.error.URLError, OSError, ValueError) as e:
                results["failed"] += 1
                errors.append(repr(e))

    # Two clients keep both pods busy; more would only slow the new pods' model load on the
    # node's two cores (the rollout waits for them).
    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for("requests flowing", lambda: results["ok"] >= 20, timeout=60)
        body["spec"]["server"]["batching"] = {"maxBatchSize": 4}  # new env: a rolling update
        k.apply(body)

        def rolled() -> bool:
            pods = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=roll")
            names = {p["metadata"]["name"] for p in pods}
            ready = [p for p in pods if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", []))]
            return not (names & old_pods) and len(ready) == 2
        wait_for("the rollout to replace every pod", rolled, timeout=420, interval=1)
        time.sleep(2)  # keep load on the new pods for a moment
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert results["ok"] > 100, results
    assert results["failed"] == 0 and results["bad"] == 0, (results, errors[:5])
