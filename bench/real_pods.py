"""Apply -> first Ready pod on the real node per framework, split into phases, beside a host
process.

For each framework (``transformers``: a tiny text classifier; ``torchscript``: a scripted
MLP; ``tensorflow``: a small Keras CNN as a SavedModel, served from the TensorFlow runtime
image), the model published to the in-cluster HTTP store with its SHA-256:

* **pod**: ``kubectl apply`` of a one-variant ModelService (warm images: the framework's
  runtime image already on the node) with the operator running; polled every 0.1 s on one
  kept-alive API connection (a ``kubectl`` process per poll would take a core from the pod
  being timed): Deployment created by the operator, pod scheduled, pull (init container)
  done, model-server container running, pod Ready (the server's startup probe after the
  model loaded). Phases: operator, scheduling, sandbox + pull, start + load + readiness;
  beside them the operator's own account, ``status.variants[].startup`` (``status_*``:
  scheduled, image, fetch, load, total).
* **host**: the same two steps as processes on this machine — ``model-server pull`` of the
  same URI (through the same Service) and ``model-server serve`` until
  ``/v2/health/ready`` answers 200.

Median of ``--runs`` (default 3) each; ratio pod / host printed and saved per framework.

    python bench/real_pods.py [--runs 3] [--framework tensorflow ...]
                                             # as root; starts the local cluster if needed

Results: bench/results/real_pods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from _realcluster import apply_until_ready, log, real_cluster

from localcluster import cluster as lc
from localcluster import modelstores
from localcluster.ports import free_port
from msv_contract import env as server_env
from msv_contract.api import GROUP, KIND, VERSION

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "real_pods.json"


# framework -> (task, what the model is); the task is None where the framework has one.
FRAMEWORKS: dict[str, tuple[str | None, str]] = {
    "transformers": ("text-classification",
                     "BERT-shaped text classifier, ~40k parameters (tests/modelfactory)"),
    "torchscript": (None, "scripted MLP 8 -> 16 -> 4 (tests/modelfactory)"),
    "tensorflow": ("image-classification",
                   "Keras CNN on 32x32x3 images as a SavedModel (tests/modelfactory)"),
}


def make_model(framework: str, root: Path) -> Path:
    from modelfactory import make_keras_cnn, make_text_classifier, make_torchscript

    path = root / framework
    if framework == "transformers":
        make_text_classifier(path)
    elif framework == "torchscript":
        make_torchscript(path)
    else:
        make_keras_cnn(path, "savedmodel")
    return path


def model_spec(framework: str, uri: str, sha: str) -> dict[str, Any]:
    task = FRAMEWORKS[framework][0]
    return {"uri": uri, "sha256": sha, "framework": framework, **({"task": task} if task else {})}


def pod_run(c: lc.Cluster, ns: str, framework: str, uri: str, sha: str) -> dict[str, float]:
    name = f"bench-{uuid.uuid4().hex[:5]}"
    ms = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
          "metadata": {"name": name, "namespace": ns},
          "spec": {"model": model_spec(framework, uri, sha),
                   "server": {"torchThreads": 1, "resources": {
                       "requests": {"cpu": "100m", "memory": "300Mi"}}},
                   "variants": [{"name": "baseline"}]}}
    timed = apply_until_ready(c, ms)
    c.kubectl_run("delete", "modelservice", name, "-n", ns, "--wait=false")
    return timed.phases()


def host_run(framework: str, uri: str, sha: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "model"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "model_server", "pull", uri, str(dest),
                        "--sha256", sha], check=True, capture_output=True)
        pulled = time.monotonic() - t0
        port = free_port()
        task = FRAMEWORKS[framework][0]
        env = {**os.environ, server_env.MODEL_DIR: str(dest), server_env.PORT: str(port),
               server_env.var("host"): "127.0.0.1", server_env.MODEL_NAME: "bench",
               server_env.FRAMEWORK: framework, server_env.TORCH_THREADS: "1",
               **({server_env.TASK: task} if task else {})}
        proc = subprocess.Popen([sys.executable, "-m", "model_server", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                                timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError("model-server serve exited")
                time.sleep(0.1)
            ready = time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(30)
    return {"pull": pulled, "start_load_ready": ready - pulled, "total": ready}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--framework", action="append", choices=sorted(FRAMEWORKS),
                    help="only these frameworks (repeatable; default: all)")
    args = ap.parse_args()
    frameworks = args.framework or list(FRAMEWORKS)
    t_start = time.time()
    by_framework: dict[str, Any] = {}
    with real_cluster("bench") as (c, ns):
        for fw in frameworks:
            with tempfile.TemporaryDirectory() as tmp:
                uri, sha = modelstores.publish_http(make_model(fw, Path(tmp)), f"{ns}-{fw}")
            pod_runs, host_runs = [], []
            for i in range(args.runs):
                pod_runs.append(pod_run(c, ns, fw, uri, sha))
                log(f"{fw} pod  run {i + 1}: " + ", ".join(
                    f"{k} {v:.2f} s" for k, v in pod_runs[-1].items()))
                host_runs.append(host_run(fw, uri, sha))
                log(f"{fw} host run {i + 1}: " + ", ".join(
                    f"{k} {v:.2f} s" for k, v in host_runs[-1].items()))
            pod, host = median(pod_runs), median(host_runs)
            by_framework[fw] = {
                "model": FRAMEWORKS[fw][1], "pod_median_s": pod, "host_median_s": host,
                "ratio_pod_over_host_total": round(pod["total"] / host["total"], 2),
                "pod_runs": pod_runs, "host_runs": host_runs}
    result = {
        "benchmark": "apply -> first Ready pod on the real node vs a host process, per framework",
        "runs": args.runs, "frameworks": by_framework,
        "load_average": os.getloadavg(), "wall_s": round(time.time() - t_start, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(f"{'framework':<13} {'operator':>8} {'sched':>6} {'pull':>6} {'load+ready':>10} "
        f"{'pod':>6} {'host':>6} {'ratio':>6}")
    for fw, r in by_framework.items():
        p, h = r["pod_median_s"], r["host_median_s"]
        log(f"{fw:<13} {p['operator']:>8.2f} {p['scheduling']:>6.2f} "
            f"{p['sandbox_and_pull']:>6.2f} {p['start_load_ready']:>10.2f} {p['total']:>6.2f} "
            f"{h['total']:>6.2f} {r['ratio_pod_over_host_total']:>5.2f}x")
    log(f"medians in seconds; ratio = pod / host process ({RESULTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
