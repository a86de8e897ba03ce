"""Apply -> first Ready pod for a model of realistic size, cold vs a node-local cache hit,
split by phase; and a second pod of the same model on the node (bytes fetched from the store).

The model: BERT-base's shape (110M parameters, 438 MB of float32 safetensors; randomly
initialised, built here: ``tests/modelfactory.BERT_BASE``), one ``.tar`` in the in-cluster
HTTP store, named by its SHA-256. The chart's model cache agent runs on the real node
(``tests/integration/cacheagents.py``) and the operator process passes it to every pull. Each
run publishes the model with one marker file changed, so its SHA-256 (the cache key) is new
and the node's cache holds nothing of it; then, with the kubelet, containerd and the runtime
image warm:

* **cold**: ModelService A -> Ready; its pull fills the node's cache from the store;
* **hit**: ModelService B naming the same artifact -> Ready; its pull reads the cache;
* **second pod**: A scaled to 2; the new pod's pull report (its init container's termination
  message) says how many bytes came from the store.

Phases from polling the API every 0.1 s (operator, scheduling, sandbox + pull, start + load +
readiness) and the operator's ``status.variants[].startup`` (fetch seconds and bytes).

**The store's rate.** The HTTP store is a pod on this machine's bridge: a download from it runs
at memory speed, which no remote object store gives. ``--store-mbit`` limits the store pod's
egress with the kernel's traffic shaper (``tc`` token bucket in the pod's network namespace,
removed afterwards); ``0`` leaves it unlimited. By default three rates run in one go:
unlimited; 400 Mbit/s (50 MB/s, one fast download from an object store); 136 Mbit/s (17 MB/s:
"about a minute per GB", what KServe users measured through its storage initializer,
kserve#2529, the figure the issue cites). A hit does not depend on the store's rate; a cold
start does, so the ratio is given for each.

    python bench/model_cache.py [--runs 3] [--store-mbit 0 --store-mbit 400 ...]
                                             # as root; starts the local cluster if needed

Results: bench/results/model_cache.json. Target (issue "cold start"): hit <= 0.4x cold;
the second pod fetches 0 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _realcluster import REPO, api, apply_until_ready, log, operator_process, real_cluster
from cacheagents import agents

from localcluster import cluster as lc
from localcluster import modelstores, realnode
from msv_contract import env as server_env
from msv_contract.api import GROUP, KIND, LABEL_MODELSERVICE, VERSION

RESULTS = REPO / "bench" / "results" / "model_cache.json"


def build_model(root: Path) -> Path:
    from modelfactory import BERT_BASE, make_text_classifier

    path = root / "bert-base"
    log("building a randomly initialised BERT-base (110M parameters) ...")
    make_text_classifier(path, **BERT_BASE)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    log(f"  {size / 1e6:.0f} MB in {path.name}/")
    return path


def publish(model: Path, name: str) -> tuple[str, str, int]:
    """``model`` plus a marker naming this run, as ``<name>.tar`` in the HTTP store:
    (uri, sha256, bytes). The marker makes the artifact (and its cache key) new."""
    target = modelstores.http_dir() / f"{name}.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "bench-run.txt"
        marker.write_text(name + "\n")
        with tarfile.open(target, "w") as tf:
            for f in sorted(model.rglob("*")):
                if f.is_file():
                    tf.add(f, arcname=str(f.relative_to(model)))
            tf.add(marker, arcname=marker.name)
    target.chmod(0o644)
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return f"{modelstores.HTTP_URL}/{target.name}", digest.hexdigest(), target.stat().st_size


def store_pid(c: lc.Cluster) -> int:
    """The host PID of the HTTP store's process (for its network namespace)."""
    k = api(c)
    try:
        pods = k.list("v1", "Pod", modelstores.NAMESPACE,
                      f"app.kubernetes.io/name={modelstores.HTTP_STORE}")
    finally:
        k.close()
    return realnode.container_pid(next(p for p in pods if all(
        s.get("ready") for s in (p.get("status") or {}).get("containerStatuses") or [{}])))


@contextmanager
def store_rate(c: lc.Cluster, mbit: int) -> Iterator[None]:
    """The HTTP store pod's egress limited to ``mbit`` Mbit/s (0: as it is)."""
    if not mbit:
        yield
        return
    netns = ["nsenter", "-t", str(store_pid(c)), "-n"]
    subprocess.run([*netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate",
                    f"{mbit}mbit", "burst", "256kb", "latency", "50ms"], check=True)
    try:
        yield
    finally:
        subprocess.run([*netns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)


def manifest(name: str, ns: str, uri: str, sha: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"uri": uri, "sha256": sha, "framework": "transformers",
                               "task": "text-classification"},
                     "server": {"torchThreads": 1, "resources": {
                         "requests": {"cpu": "500m", "memory": "1500Mi"}}},
                     "variants": [{"name": "baseline"}]}}


def second_pod_fetched(c: lc.Cluster, ns: str, name: str, first: str) -> dict[str, Any]:
    """Scale ``name`` to 2 and return the new pod's pull report (its init container's
    termination message) once that pod is Ready."""
    c.kubectl_run("patch", "modelservice", name, "-n", ns, "--type=json", "-p",
                  json.dumps([{"op": "replace", "path": "/spec/variants/0/replicas",
                               "value": 2}]))
    k = api(c)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for pod in k.list("v1", "Pod", ns, f"{LABEL_MODELSERVICE}={name}"):
                st = pod.get("status") or {}
                ready = any(x["type"] == "Ready" and x["status"] == "True"
                            for x in st.get("conditions", []))
                if pod["metadata"]["name"] != first and ready:
                    term = st["initContainerStatuses"][0]["state"]["terminated"]
                    return dict(json.loads(term["message"]))
            time.sleep(0.5)
    finally:
        k.close()
    raise RuntimeError(f"{name}: no second Ready pod after 300 s")


def one_run(c: lc.Cluster, ns: str, model: Path, tag: str) -> dict[str, Any]:
    uri, sha, size = publish(model, f"{ns}-{tag}")
    cold_name, hit_name = f"cold-{tag}", f"hit-{tag}"
    cold = apply_until_ready(c, manifest(cold_name, ns, uri, sha))
    hit = apply_until_ready(c, manifest(hit_name, ns, uri, sha))
    second = second_pod_fetched(c, ns, cold_name, cold.pod["metadata"]["name"])
    for name in (cold_name, hit_name):
        c.kubectl_run("delete", "modelservice", name, "-n", ns, "--wait=true",
                      "--timeout=120s", check=False)
    # until their pods are gone: terminating pods (a 5 s drain) still hold their requests on
    # the node, and the next run's first pod would wait for room to be scheduled
    c.kubectl_run("wait", "--for=delete", "pods", "-n", ns, "--all", "--timeout=120s",
                  check=False)
    (modelstores.http_dir() / f"{ns}-{tag}.tar").unlink(missing_ok=True)
    out: dict[str, Any] = {"artifact_bytes": size}
    for label, timed in (("cold", cold), ("hit", hit)):
        out[label] = {**timed.phases(),
                      "fetched_bytes": timed.startup.get("fetchedBytes"),
                      "cache_hit": timed.startup.get("cacheHit")}
    out["second_pod"] = {"fetched_bytes": second.get(server_env.PULL_BYTES),
                         "source": second.get(server_env.PULL_SOURCE)}
    out["hit_over_cold"] = round(hit.seen["ready"] / cold.seen["ready"], 3)
    return out


def median(runs: list[dict[str, Any]], which: str) -> dict[str, float]:
    keys = [k for k, v in runs[0][which].items() if isinstance(v, float)]
    return {k: round(statistics.median(r[which][k] for r in runs), 2) for k in keys}


def at_rate(c: lc.Cluster, ns: str, model: Path, mbit: int, n: int) -> dict[str, Any]:
    runs = []
    with store_rate(c, mbit):
        for i in range(n):
            runs.append(one_run(c, ns, model, f"{mbit}-{i}-{uuid.uuid4().hex[:4]}"))
            r = runs[-1]
            log(f"store {mbit or 'unlimited'} Mbit/s, run {i + 1}: cold "
                f"{r['cold']['total']:.2f} s (fetched {r['cold']['fetched_bytes']} B), hit "
                f"{r['hit']['total']:.2f} s (fetched {r['hit']['fetched_bytes']} B), ratio "
                f"{r['hit_over_cold']:.2f}; second pod fetched "
                f"{r['second_pod']['fetched_bytes']} B")
    return {"store_limit_mbit": mbit or None,
            "cold_median_s": median(runs, "cold"), "hit_median_s": median(runs, "hit"),
            "hit_over_cold_median": round(statistics.median(r["hit_over_cold"] for r in runs), 2),
            "second_pod_fetched_bytes": [r["second_pod"]["fetched_bytes"] for r in runs],
            "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--store-mbit", type=int, action="append",
                    help="the store's egress limit in Mbit/s, 0 = none (repeatable; "
                         "default: 0, 400 and 136)")
    args = ap.parse_args()
    rates = args.store_mbit or [0, 400, 136]
    t_start = time.time()
    by_rate: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        log("starting the cluster, the operator and the model cache agent ...")
        cap = 4 * sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
        with real_cluster("mcache", operator=False) as (c, ns), agents(c, cap=cap) as agent, \
                operator_process(c, ns, args=["--model-cache-url", agent.url]):
            for mbit in rates:
                by_rate[str(mbit)] = at_rate(c, ns, model, mbit, args.runs)
    result = {
        "benchmark": "apply -> first Ready pod, BERT-base (438 MB), cold vs node cache hit",
        "runs": args.runs, "by_store_rate": by_rate,
        "load_average": os.getloadavg(), "wall_s": round(time.time() - t_start, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(f"{'store':<10} {'':<5} {'sched':>6} {'pull':>6} {'fetch':>6} {'load+ready':>10} "
        f"{'total':>6}")
    for mbit, r in by_rate.items():
        for which in ("cold", "hit"):
            m = r[f"{which}_median_s"]
            log(f"{(mbit + ' Mbit/s') if mbit != '0' else 'unlimited':<10} {which:<5} "
                f"{m['scheduling']:>6.2f} {m['sandbox_and_pull']:>6.2f} {m['status_fetch']:>6.2f} "
                f"{m['start_load_ready']:>10.2f} {m['total']:>6.2f}")
        log(f"  hit / cold = {r['hit_over_cold_median']:.2f}x (target <= 0.4x); second pod "
            f"fetched {r['second_pod_fetched_bytes']} bytes from the store (target 0)")
    log(f"medians in seconds ({RESULTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
