"""Time from a gate breach to candidate weight 0, on real pods with the in-cluster Prometheus.

A ModelService serves a small trained classifier (baseline, 100%) and rolls out a candidate
that is ~100x larger (slower: the latency gate breaches as soon as it has traffic), with
``failureLimit: 0``. A client sends requests through the stable Service all along (a new
connection each, as kube-proxy balances connections) and records which variant answered.
Measured per run, from the operator's status and the client's view:

* **detect**: step 1 begins (the candidate gets traffic) -> the first failed analysis
  (``status.rollout.lastAnalysis`` with verdict ``Failed``); bounded below by the scrape
  interval and the analysis interval, the "floor" printed next to it;
* **status**: that analysis -> ``status.traffic`` showing the candidate at 0;
* **client**: that analysis -> the last request the client saw answered by the candidate
  (its pods leave the stable Service only when the Deployment has replaced them).

    python bench/rollout_rollback.py [--runs 2]   # as root; starts the local cluster if needed

Results: bench/results/rollout_rollback.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _realcluster import get, get_ms, log, real_cluster, stamp

from localcluster import cluster as lc
from localcluster import modelstores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "rollout_rollback.json"
INTERVAL_S, SCRAPE_S = 5, 5


class Client(threading.Thread):
    def __init__(self, ip: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url = f"http://{ip}/v2/models/{model}/infer"
        self.last: dict[str, float] = {}
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                       "data": ["a great and happy film"]}]}).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    variant = str(json.loads(r.read())["parameters"]["variant"])
                    self.last[variant] = time.time()
            except OSError:
                if self.last:  # before the first answer the Service has no ready pod yet
                    self.errors += 1
            self.stop.wait(0.03)


def one_run(c: lc.Cluster, ns: str, stable: tuple[str, str], slow: tuple[str, str],
            i: int) -> dict[str, float]:
    name = f"rb{i}"
    body = {
        "apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"uri": stable[0], "sha256": stable[1], "framework": "transformers",
                      "task": "text-classification"},
            "server": {"torchThreads": 1, "resources": {"requests": {"cpu": "50m",
                                                                     "memory": "300Mi"}}},
            "variants": [{"name": "baseline"},
                         {"name": "large", "model": {"uri": slow[0], "sha256": slow[1]}}],
            "traffic": [{"variant": "baseline", "weight": 100}], "replicas": 2,
            "monitoring": {"interval": f"{SCRAPE_S}s"},
            "rollout": {"candidate": "large", "steps": [50, 100], "stepDuration": "20s",
                        "minRequests": 5,
                        "analysis": {"interval": f"{INTERVAL_S}s", "window": "20s",
                                     "maxLatencyRatio": 1.5, "minAgreement": 0,
                                     "failureLimit": 0}}}}
    c.apply(body)
    deadline = time.time() + 300
    while not (get_ms(c, ns, name).get("status") or {}).get("url"):
        assert time.time() < deadline, "the ModelService never got a status"
        time.sleep(0.5)
    ip = get(c, "service", name, "-n", ns)["spec"]["clusterIP"]
    client = Client(ip, name)
    client.start()
    seen: dict[str, float] = {}
    breach = ""
    try:
        while time.time() < deadline:
            st = get_ms(c, ns, name).get("status") or {}
            r = st.get("rollout") or {}
            now = time.time()
            if r.get("step") == 1 and "step1" not in seen:
                seen["step1"] = stamp(r.get("stepStartedAt") or r["startedAt"])
            last = r.get("lastAnalysis") or {}
            if last.get("verdict") == "Failed" and not breach:
                breach = last["time"]
            if r.get("phase") == "RolledBack" and "large=0" in str(st.get("traffic")):
                seen.setdefault("weight0", now)
                # the candidate's pods leave the stable Service once they were replaced
                if now - client.last.get("large", 0) > 15:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no rollback within 300 s: {get_ms(c, ns, name)}")
    finally:
        client.stop.set()
        client.join(15)
    assert breach and "step1" in seen, (breach, seen)
    t_breach = stamp(breach)
    return {"detect_s": round(t_breach - seen["step1"], 2),
            "status_s": round(seen["weight0"] - t_breach, 2),
            "client_s": round(client.last.get("large", t_breach) - t_breach, 2),
            "client_errors": client.errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    from modelfactory import make_text_classifier, make_trained_text_classifier

    runs = []
    with real_cluster("bench", prometheus=True) as (c, ns):
        with tempfile.TemporaryDirectory() as tmp:
            make_trained_text_classifier(Path(tmp) / "stable")
            make_text_classifier(Path(tmp) / "large", hidden_size=384, num_layers=6,
                                 num_heads=6, intermediate_size=1536)
            stable = modelstores.publish_http(Path(tmp) / "stable", f"{ns}-stable")
            slow = modelstores.publish_http(Path(tmp) / "large", f"{ns}-large")
        for i in range(args.runs):
            runs.append(one_run(c, ns, stable, slow, i))
            log(f"run {i + 1}: {runs[-1]}")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    floor = INTERVAL_S  # one analysis interval at failureLimit 0 (scrapes every SCRAPE_S)
    result = {
        "benchmark": "gate breach -> candidate weight 0 (status and client)",
        "settings": {"analysis_interval_s": INTERVAL_S, "scrape_interval_s": SCRAPE_S,
                     "failure_limit": 0, "window": "20s"},
        "median": med, "floor_detect_s": floor,
        "detect_over_floor": round(med["detect_s"] / floor, 2),
        "runs": runs, "load_average": os.getloadavg(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(f"median: {med}; detection {result['detect_over_floor']}x the analysis interval "
        f"({RESULTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
