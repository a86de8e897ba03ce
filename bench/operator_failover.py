"""Operator failover: time from stopping the leader to the next reconcile, on a private
local control plane (no real node).

Three ways to lose the running operator, interleaved run by run:

* ``kill9``    - two replicas with leader election; the leader gets SIGKILL (a crashed pod,
  a lost node): the standby takes over once the Lease is stale (lease duration);
* ``graceful`` - the same, with SIGTERM (a rolling update, a drain): the leader releases
  the Lease and the standby takes it at its next retry;
* ``restart``  - the baseline: one replica, no leader election, SIGKILL and a new process
  started at once (what one replica gets at best, before the kubelet's restart delay and
  image pull).

Right after the stop a new ModelService is applied; the time measured ends when its status
(``observedGeneration``) is written, i.e. when some operator reconciled it. The Lease uses the
chart's defaults (duration 15 s, renew deadline 10 s, retry 2 s) unless told otherwise.

    python bench/operator_failover.py [--runs 5] [--state-dir DIR]

Results: bench/results/operator_failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from msv_operator import kube, leader

import localcluster
from localcluster import paths

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))  # operator_harness's manifests and waiting
from loadgen import result_header  # noqa: E402
from operator_harness import CRD_FILE, MS_API, OperatorProcess, modelservice  # noqa: E402

RESULTS = REPO / "bench" / "results" / "operator_failover.json"
LEASE = "msv-bench-leader"
MODES = ("kill9", "graceful", "restart")


def reconciled(client: kube.Kube, ns: str, name: str) -> bool:
    ms = client.get(MS_API, "ModelService", ns, name) or {}
    return bool(ms) and (ms.get("status") or {}).get("observedGeneration") == \
        ms["metadata"].get("generation")


def poll(what: str, fn: Any, timeout: float, every: float = 0.05) -> float:
    """Poll ``fn`` until truthy; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError(what)


def one_run(mode: str, run: int, cluster: localcluster.Cluster, client: kube.Kube
            ) -> dict[str, Any]:
    ns = f"bench-failover-{mode}-{run}"
    cluster.kubectl_run("create", "namespace", ns, check=False)
    lease_args = ["--leader-election", "--lease-name", LEASE, "--lease-namespace", ns,
                  "--lease-duration", str(ARGS.lease_duration),
                  "--renew-deadline", str(ARGS.renew_deadline),
                  "--retry-period", str(ARGS.retry_period), "--log-level", "WARNING"]
    procs: list[OperatorProcess] = []
    try:
        if mode == "restart":
            procs.append(OperatorProcess(ns, "--log-level", "WARNING", name="single"))
        else:
            procs += [OperatorProcess(ns, *lease_args, "--identity", name, name=name)
                      for name in ("a", "b")]
        for p in procs:
            p.wait_up()
        client.apply(modelservice("warm", ns))
        poll("warm reconciled", lambda: reconciled(client, ns, "warm"), 120)
        if mode == "restart":
            victim = procs[0]
        else:
            holder = leader.lease_holder(client.lease(ns, LEASE, 10))
            victim = next(p for p in procs if p.name == holder)
        started = time.monotonic()
        if mode == "graceful":
            victim.proc.send_signal(15)
        else:
            victim.proc.kill()
        if mode == "restart":
            procs.append(OperatorProcess(ns, "--log-level", "WARNING", name="single-2"))
        client.apply(modelservice("probe", ns))
        done = poll("probe reconciled", lambda: reconciled(client, ns, "probe"), 120)
        victim.proc.wait(60)
        out: dict[str, Any] = {"seconds_to_next_reconcile": round(done - started, 3)}
        if mode != "restart":
            survivor = next(p for p in procs if p is not victim)
            lease = client.lease(ns, LEASE, 10) or {}
            assert leader.lease_holder(lease) == survivor.name, lease
            out["exit_code"] = victim.proc.returncode
        return out
    finally:
        for p in procs:
            p.close()
        cluster.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)


def main() -> int:
    header = result_header("operator_failover", os.getloadavg())
    if ARGS.state_dir:  # the command line, without this machine's path
        header["command"] = header["command"].replace(ARGS.state_dir, "DIR")
    state = Path(ARGS.state_dir or os.environ.get(
        "MSV_BENCH_STATE", Path(paths.cache_dir()) / "bench-operator-state"))
    cluster = localcluster.up(state, timeout=180, owner="bench", real_node=False)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established("modelservices.serving.modelservice.dev")
    client = kube.Kube("msv-bench", qps=1000, burst=1000)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for i in range(ARGS.runs):
            for mode in MODES:  # interleaved: a load change hits every mode alike
                r = one_run(mode, i, cluster, client)
                runs[mode].append(r)
                print(f"run {i} {mode:8s} {r['seconds_to_next_reconcile']:6.2f} s", flush=True)
    finally:
        client.close()
        if not cluster.reused:
            localcluster.down(state)
    summary = {}
    for mode, rs in runs.items():
        times = [r["seconds_to_next_reconcile"] for r in rs]
        summary[mode] = {"median_s": round(statistics.median(times), 3),
                         "min_s": min(times), "max_s": max(times)}
    base = summary["restart"]["median_s"]
    ratios = {f"{m}_vs_restart": round(summary[m]["median_s"] / base, 2)
              for m in ("kill9", "graceful")}
    results = {**header, "lease": {"duration_s": ARGS.lease_duration,
                                   "renew_deadline_s": ARGS.renew_deadline,
                                   "retry_period_s": ARGS.retry_period},
               "runs": runs, "summary": summary, "ratios": ratios,
               "load_avg_at_end": os.getloadavg()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for mode, s in summary.items():
        print(f"{mode:8s} median {s['median_s']:6.2f} s  (min {s['min_s']:.2f}, "
              f"max {s['max_s']:.2f}, {ARGS.runs} runs)")
    print("ratios:", ratios)
    print(f"saved {RESULTS.relative_to(REPO)}")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--state-dir", help="a running local cluster to use (default: a private one)")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    sys.exit(main())
