"""The local cluster's Gateway (nginx + its controller) against the direct Service, on real
pods, and what its retries cost when a pod crashes.

One ModelService (the tiny text classifier of tests/modelfactory, two ``baseline`` pods,
``spec.gateway`` on ``msv-gateway``) is called with the same OIP v2 infer request
(bench/loadgen.py, keep-alive connections):

* **added latency**: p50/p99 at concurrency 1 through the Gateway vs the stable Service's
  cluster IP (kube-proxy), alternating rounds so drift hits both;
* **throughput**: requests/s at 16 clients, both ways;
* **a crash**: a steady client through the Gateway while one pod's server process gets
  ``kill -9``, with the route's retry (default: 2 attempts on 503 and connection errors)
  and with the route's retry off (``attempts: 0``: the gateway's own default then still
  retries a refused connection once, docs/gateway.md): failed requests, and the latency the
  retried requests pay (p50/p99/max over the crash window: the retry's cost);
* **the retry budget under a crash**: the same crash with the route's retry and its budget
  spent (0 %, a floor of one retry an hour): what the budget costs in failed requests, and
  the retries the gateway allowed and refused in each crash (its ``/metrics`` counters), per
  request of the crash window: the extra load retries put on the surviving pod.

    python bench/gateway.py [--rounds 3] [--seconds 5]    # as root; starts the cluster

Results: bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _realcluster import get, log, real_cluster
from loadgen import build_request, result_header, run_load

from localcluster import cluster as lc
from localcluster import modelstores, realnode
from localcluster.gateway import install as gateway
from msv_contract.api import GROUP, KIND, LABEL_MODELSERVICE, VERSION

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gateway.json"
NAME = "gwbench"
BODY = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                               "data": ["i really love this movie"]}]}).encode()
PATH = f"/v2/models/{NAME}/infer"


SPENT_BUDGET = {"percent": 0, "minRetryRate": {"count": 1, "interval": "1h"}}


def modelservice(ns: str, uri: str, sha: str, attempts: int,
                 budget: dict[str, Any] | None = None) -> dict[str, Any]:
    retry: dict[str, Any] = {"attempts": attempts}
    if budget is not None:
        retry["budget"] = budget
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {"model": {"uri": uri, "sha256": sha, "framework": "transformers",
                               "task": "text-classification"},
                     "server": {"torchThreads": 1, "resources": {
                         "requests": {"cpu": "100m", "memory": "300Mi"}}},
                     "variants": [{"name": "baseline"}], "replicas": 2,
                     "gateway": {"parentRefs": [{"name": gateway.GATEWAY,
                                                 "namespace": gateway.NAMESPACE}],
                                 "retry": retry}}}


def wait_until(what: str, check: Any, timeout: float = 300) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(ip: str) -> bool:
    try:
        req = urllib.request.Request(f"http://{ip}{PATH}", data=BODY,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def ready_pods(c: lc.Cluster, ns: str) -> list[dict[str, Any]]:
    pods = (get(c, "pods", "-n", ns, "-l", f"{LABEL_MODELSERVICE}={NAME}") or {}).get("items", [])
    return [p for p in pods if any(x["type"] == "Ready" and x["status"] == "True"
                                   for x in p.get("status", {}).get("conditions", []))]


def routed(c: lc.Cluster, ns: str) -> bool:
    ms = get(c, "modelservice", NAME, "-n", ns) or {}
    conds = {x["type"]: x for x in ms.get("status", {}).get("conditions", [])}
    return conds.get("FieldsIgnored", {}).get("status") == "False"


def load(ip: str, concurrency: int, seconds: float) -> dict[str, float]:
    r = run_load(ip, 80, build_request("POST", ip, 80, PATH, BODY), concurrency=concurrency,
                 duration_s=seconds)
    failed = r.errors + sum(n for s, n in r.statuses.items() if s != 200)
    return {"rps": r.rps, "p50_ms": 1e3 * r.pct(50), "p99_ms": 1e3 * r.pct(99),
            "requests": r.requests, "failed": failed}


def crash(c: lc.Cluster, ns: str, seconds_after: float = 15) -> dict[str, Any]:
    """A steady client (one request every 50 ms, a new connection each) through the
    Gateway while one pod's server is killed; counts until the pod is ready again, with the
    retries the gateway allowed and refused meanwhile."""
    before = gateway.retry_counters(ns, NAME)
    counts: Counter[str] = Counter()
    took: list[float] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            counts["ok" if answers(gateway.SERVICE_IP) else "failed"] += 1
            took.append(time.perf_counter() - t0)
            time.sleep(0.05)

    pods = wait_until("two ready pods", lambda: (p := ready_pods(c, ns)) and len(p) == 2 and p)
    victim = pods[0]
    restarts = victim["status"]["containerStatuses"][0].get("restartCount", 0)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    time.sleep(3)
    os.kill(realnode.container_pid(victim), signal.SIGKILL)

    def back() -> bool:
        pod = get(c, "pod", victim["metadata"]["name"], "-n", ns) or {}
        st = (pod.get("status", {}).get("containerStatuses") or [{}])[0]
        return st.get("restartCount", 0) > restarts and bool(st.get("ready"))
    wait_until("the killed pod back", back)
    time.sleep(2)
    stop.set()
    t.join(30)
    took.sort()
    after = gateway.retry_counters(ns, NAME)
    requests = counts["ok"] + counts["failed"]
    allowed = after["allowed"] - before["allowed"]
    return {"ok": counts["ok"], "failed": counts["failed"],
            "retries_allowed": allowed, "retries_refused": after["rejected"] - before["rejected"],
            "retries_per_request": round(allowed / requests, 4) if requests else 0.0,
            "p50_ms": round(1e3 * took[len(took) // 2], 2),
            "p99_ms": round(1e3 * took[min(len(took) - 1, int(0.99 * len(took)))], 2),
            "max_ms": round(1e3 * took[-1], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    result = result_header("gateway", os.getloadavg())
    from modelfactory import make_text_classifier

    with real_cluster("gwbench") as (c, ns):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "classifier"
            make_text_classifier(path)
            uri, sha = modelstores.publish_http(path, f"{ns}-classifier")
        c.apply(modelservice(ns, uri, sha, attempts=2))
        wait_until("routed by the Gateway", lambda: routed(c, ns))
        svc = (get(c, "service", NAME, "-n", ns) or {})["spec"]["clusterIP"]
        wait_until("two ready pods", lambda: len(ready_pods(c, ns)) == 2)
        wait_until("both paths answering", lambda: answers(svc) and answers(gateway.SERVICE_IP))
        rounds: dict[str, list[dict[str, float]]] = {"service_c1": [], "gateway_c1": [],
                                                     "service_c16": [], "gateway_c16": []}
        for i in range(args.rounds):
            for key, ip, conc in (("service_c1", svc, 1), ("gateway_c1", gateway.SERVICE_IP, 1),
                                  ("service_c16", svc, 16),
                                  ("gateway_c16", gateway.SERVICE_IP, 16)):
                rounds[key].append(load(ip, conc, args.seconds))
                log(f"round {i + 1} {key}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in rounds[key][-1].items()))
        med = {k: {m: round(statistics.median(r[m] for r in v), 3) for m in v[0]}
               for k, v in rounds.items()}
        log("crash with the route's retry (2 attempts)")
        with_retry = crash(c, ns)
        log(f"  {with_retry}")
        c.apply(modelservice(ns, uri, sha, attempts=0))
        time.sleep(5)  # the operator re-applies the route; the controller reloads nginx
        wait_until("two ready pods", lambda: len(ready_pods(c, ns)) == 2)
        log("crash with the route's retry off (attempts 0; the gateway's default remains)")
        without = crash(c, ns)
        log(f"  {without}")
        c.apply(modelservice(ns, uri, sha, attempts=2, budget=SPENT_BUDGET))
        time.sleep(5)  # the operator re-applies the policy; the controller reloads nginx
        wait_until("two ready pods", lambda: len(ready_pods(c, ns)) == 2)
        log("crash with the route's retry and its budget spent (0 %, floor 1 an hour)")
        spent = crash(c, ns)
        log(f"  {spent}")
    added_p50 = med["gateway_c1"]["p50_ms"] - med["service_c1"]["p50_ms"]
    rps_ratio = med["gateway_c16"]["rps"] / med["service_c16"]["rps"]
    result.update({
        "model": "BERT-shaped text classifier, ~40k parameters, 2 pods (tests/modelfactory)",
        "rounds": args.rounds, "seconds_per_round": args.seconds, "medians": med,
        "runs": rounds, "added_p50_ms_c1": round(added_p50, 3),
        "rps_ratio_gateway_over_service_c16": round(rps_ratio, 3),
        "crash_with_retry": with_retry, "crash_without_retry": without,
        "crash_with_spent_budget": spent,
    })
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    log(f"{'':<22}{'service':>10}{'gateway':>10}")
    for m in ("p50_ms", "p99_ms"):
        log(f"c=1  {m:<17}{med['service_c1'][m]:>10.2f}{med['gateway_c1'][m]:>10.2f}")
    log(f"c=16 {'rps':<17}{med['service_c16']['rps']:>10.1f}{med['gateway_c16']['rps']:>10.1f}")
    log(f"added p50 at c=1: {added_p50:+.2f} ms; requests/s at 16 clients: {rps_ratio:.2f}x")
    log(f"kill -9 of one of two pods: failed {with_retry['failed']} of "
        f"{with_retry['ok'] + with_retry['failed']} with the route's retry, {without['failed']} of "
        f"{without['ok'] + without['failed']} with the gateway's default only, "
        f"{spent['failed']} of {spent['ok'] + spent['failed']} with the budget spent")
    log(f"retries per request over the crash: {with_retry['retries_per_request']} (default "
        f"budget), {spent['retries_per_request']} (spent; {spent['retries_refused']:.0f} "
        f"refused) ({RESULTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
