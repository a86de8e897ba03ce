"""Operator benchmarks on a private local control plane: API writes, throughput, latency, RSS.

Ours (``msv-operator run``) runs side by side with a *naive* baseline: the same operator
with the write-avoidance switched off (every pass applies every object and writes the status),
which is what an operator that "just applies everything" does. Writes are counted by the API
server itself (``apiserver_request_total`` from kube-apiserver's ``/metrics``, read with the
admin kubeconfig): mutating verbs (POST, PUT, PATCH, APPLY, DELETE) on the resources the
operator touches. A private control plane (its own state directory) keeps other users'
requests out of the counts.

Measured:

* writes for one create (2 variants), for a no-op resync window, and after an operator
  restart with nothing changed (goal: zero when nothing changed);
* reconcile throughput: N ModelServices exist, the operator starts, time until every object
  of every ModelService is applied (N = 200 and 1,000; goal >= 30/s), with the operator's
  and kube-apiserver's CPU; objects are counted from watches, not by polling LISTs;
* apply -> Deployment created latency, p50/p99 (goal p50 <= 100 ms);
* operator RSS with 1,000 ModelServices (goal <= 150 MB);
* ``--scenarios scale``: 5,000 ModelServices (objects only): throughput, no-op resync and
  restart writes (goal 0), RSS after a restart (goal <= 250 MB); and how fast this API server
  creates Services at all (one at a time, 16 at a time; ConfigMaps beside them), the ceiling
  of any burst of creates.

    python bench/operator_bench.py [--sizes 200,1000] [--latency-samples 50]

Results: bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from msv_operator import builders, kube
from msv_operator.config import uniform_images

import localcluster
from localcluster import paths
from localcluster.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # for operator_harness
from loadgen import cpu_seconds, stop_all
from operator_harness import operator_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "operator.json"
CRD = Path(os.environ.get("MSV_TEST_CRD",
                          REPO / "crds" / "modelservices.serving.modelservice.dev.yaml"))
MS_API = "serving.modelservice.dev/v1alpha1"
LABEL = "serving.modelservice.dev/modelservice"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
RESOURCES = {"modelservices", "deployments", "services", "horizontalpodautoscalers",
             "servicemonitors", "httproutes", "events"}

NAIVE = """
import sys
import msv_operator.apply as a
import msv_operator.status as s
a.needs_apply = lambda desired, live: True     # apply every object on every pass
s.changed = lambda prior, new: True            # write the status on every pass
from msv_operator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def apiserver_writes(client: kube.Kube) -> Counter[tuple[str, str, str]]:
    """Mutating requests so far by (verb, resource, subresource), from kube-apiserver."""
    method, url, headers, body, _ = client.api.param_serialize(
        "GET", "/metrics", header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"])
    text = client.api.call_api(method, url, header_params=headers, body=body).read().decode()
    out: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in RESOURCES:
            key = (labels["verb"], labels["resource"], labels.get("subresource", ""))
            out[key] += int(float(m.group("value")))
    return out


def delta(after: Counter[Any], before: Counter[Any]) -> dict[str, int]:
    return {" ".join(p for p in k if p): v - before.get(k, 0) for k, v in sorted(after.items())
            if v - before.get(k, 0) > 0}


def operator_writes(d: dict[str, int]) -> int:
    """Writes the operator itself sends: server-side applies, deletes of owned objects, and
    any write to ModelServices (kopf annotations, status). Events are counted separately
    because controllers post them too."""
    return sum(v for k, v in d.items()
               if (k.startswith("APPLY ") and k != "APPLY modelservices")  # that one is ours
               or k.startswith("PATCH modelservices")
               or (k.startswith("DELETE ") and "events" not in k))


STARTED: list[subprocess.Popen[bytes]] = []  # every operator process, stopped on the way out


class Operator:
    """``msv-operator run`` (or the naive baseline) as a subprocess."""

    def __init__(self, mode: str, namespace: str, env: dict[str, str], resync: float) -> None:
        self.port = free_port()
        args = ["run", "--namespace", namespace, "--metrics-port", str(self.port),
                "--health-port", "0", "--resync-seconds", str(resync),
                "--discovery-seconds", "30", "--qps", str(ARGS.qps),
                "--burst", str(2 * ARGS.qps), "--log-level", "WARNING"]
        cmd = ([sys.executable, "-m", "msv_operator", *args] if mode == "ours"
               else [sys.executable, "-c", NAIVE, *args])
        self.started = time.monotonic()
        self.log = Path(tempfile.gettempdir()) / f"msv-bench-operator-{mode}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        STARTED.append(self.proc)

    def metrics(self) -> dict[str, float]:
        return operator_metrics(self.port)

    def total(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.metrics():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start (see {self.log})")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> tuple[float, float]:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                      if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    def stop(self) -> None:
        stop_all([self.proc], timeout_s=30)


def ms_body(name: str, ns: str, variants: int = 1, replicas: int | None = None
            ) -> dict[str, Any]:
    names = ["baseline", "int8"][:variants]
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/bench", "framework": "transformers",
                  "task": "text-classification"},
        "server": {"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
        "variants": [{"name": n} if n == "baseline" else
                     {"name": n, "optimization": {"quantization": "dynamic-int8"}}
                     for n in names],
    }
    if variants > 1:
        spec["traffic"] = [{"variant": "baseline", "weight": 50},
                           {"variant": "int8", "weight": 50}]
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": MS_API, "kind": "ModelService",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def wait_ready(client: kube.Kube, ns: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ms = client.get(MS_API, "ModelService", ns, name) or {}
        st = ms.get("status") or {}
        for c in st.get("conditions") or ():
            if (c["type"] == "Ready" and c["status"] == "True"
                    and st.get("observedGeneration") == ms["metadata"].get("generation")):
                return
        time.sleep(0.2)
    raise TimeoutError(f"{ns}/{name} never became Ready")


def delete_namespace(cluster: localcluster.Cluster, ns: str) -> None:
    """Delete and wait, so the namespace controller's deletes stay out of the next window."""
    cluster.kubectl_run("delete", "namespace", ns, "--wait=true", "--timeout=300s",
                        timeout=320, check=False)


def writes_scenario(mode: str, cluster: localcluster.Cluster, client: kube.Kube,
                    resync: float = 2.0, window: float = 10.0) -> dict[str, Any]:
    ns = f"bench-writes-{mode}"
    cluster.kubectl_run("create", "namespace", ns)
    op = Operator(mode, ns, cluster.env, resync)
    op.wait_up()
    time.sleep(1)
    m0 = apiserver_writes(client)
    client.apply(ms_body("sentiment", ns, variants=2))
    wait_ready(client, ns, "sentiment")
    time.sleep(3)
    m1 = apiserver_writes(client)
    passes0 = op.total("msv_operator_reconciles_total")
    time.sleep(window)
    m2 = apiserver_writes(client)
    passes = op.total("msv_operator_reconciles_total") - passes0
    op.stop()
    m3 = apiserver_writes(client)
    op = Operator(mode, ns, cluster.env, resync)
    op.wait_up()
    deadline = time.monotonic() + 60
    while op.total("msv_operator_reconciles_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(5)
    m4 = apiserver_writes(client)
    op.stop()
    delete_namespace(cluster, ns)
    create, noop, restart = delta(m1, m0), delta(m2, m1), delta(m4, m3)
    return {
        "create": {"operator_writes": operator_writes(create), "all": create},
        "noop_resync": {"window_s": window, "resync_passes": passes,
                        "operator_writes": operator_writes(noop), "all": noop},
        "restart": {"operator_writes": operator_writes(restart), "all": restart},
    }


CREATE_THREADS = 32


def create_modelservices(client: kube.Kube, ns: str, n: int, **kwargs: Any) -> float:
    """Create ``n`` ModelServices in parallel (answers not decoded); returns the seconds."""
    start = time.monotonic()
    with cf.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(lambda i: client.apply(ms_body(f"m{i:05d}", ns, **kwargs), answer=False),
                      range(n)))
    return round(time.monotonic() - start, 1)


class Applied:
    """Counts the operator's Deployments and Services in ``ns`` from watches (polling a LIST
    of 15,000 objects every second cost the API server more CPU than the operator did)."""

    KINDS = (("list_namespaced_deployment", "AppsV1Api"), ("list_namespaced_service",
                                                          "CoreV1Api"))

    def __init__(self, client: kube.Kube, ns: str) -> None:
        import kubernetes
        self.names: dict[str, set[str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []
        for method, api in self.KINDS:
            lister = getattr(getattr(kubernetes.client, api)(client.api), method)
            t = threading.Thread(target=self._watch, args=(kubernetes, lister, ns, method),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def _watch(self, kubernetes: Any, lister: Any, ns: str, what: str) -> None:
        while not self.stop.is_set():
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(lister, ns, label_selector=LABEL, timeout_seconds=60,
                                   _request_timeout=90):
                    name = ev["object"].metadata.name
                    with self.lock:
                        names = self.names.setdefault(what, set())
                        if ev["type"] == "DELETED":
                            names.discard(name)
                        else:
                            names.add(name)
                    if self.stop.is_set():
                        w.stop()
            except Exception:  # a dropped watch: watch again (the set survives)
                time.sleep(0.5)

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.names.values())

    def close(self) -> None:
        self.stop.set()


def wait_applied(counter: Applied, expected: int, limit: float, poll: float = 0.2) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if counter.count() >= expected:
            break
        time.sleep(poll)
    return counter.count()


def service_create_rate(cluster: localcluster.Cluster, client: kube.Kube, n: int = 60
                        ) -> dict[str, Any]:
    """How fast this API server creates Services (each allocates a ClusterIP) one at a time
    and 16 at a time, beside ConfigMaps 16 at a time: the ceiling of a burst of creates."""
    ns = "bench-service-rate"
    cluster.kubectl_run("create", "namespace", ns)

    def rate(kind: str, threads: int) -> float:
        def body(i: int) -> dict[str, Any]:
            meta = {"name": f"{kind.lower()}-{threads}-{i}", "namespace": ns}
            if kind == "Service":
                return {"apiVersion": "v1", "kind": kind, "metadata": meta,
                        "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]}}
            return {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"k": "v"}}
        start = time.monotonic()
        with cf.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: client.apply(body(i), answer=False), range(n)))
        return round(n / (time.monotonic() - start), 1)

    out = {"services_per_second_1_at_a_time": rate("Service", 1),
           "services_per_second_16_at_a_time": rate("Service", 16),
           "configmaps_per_second_16_at_a_time": rate("ConfigMap", 16),
           "load_average": os.getloadavg()}
    delete_namespace(cluster, ns)
    return out


def objects_per_modelservice(client: kube.Kube, ns: str) -> int:
    """How many Deployments and Services the builders make for one benchmark ModelService."""
    body = ms_body("probe", ns)
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    opts = builders.BuildOptions(
        images=uniform_images("bench"),
        service_monitor=client.served(*kube.SERVICE_MONITOR_API),
        gateway_api=client.served(*kube.HTTPROUTE_API))
    return len([o for o in builders.build_all(body, opts)
                if o["kind"] in ("Deployment", "Service")])


def settle(op: Operator, quiet: float = 3.0, limit: float = 180.0) -> None:
    """Wait until the operator has run no pass for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        now = op.total("msv_operator_reconciles_total")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.25)


def throughput_scenario(mode: str, n: int, cluster: localcluster.Cluster, client: kube.Kube
                        ) -> dict[str, Any]:
    ns = f"bench-scale-{mode}-{n}"
    cluster.kubectl_run("create", "namespace", ns)
    create_s = create_modelservices(client, ns, n)
    expected = n * objects_per_modelservice(client, ns)
    # Count the objects that exist (not the operator's apply counter: the naive baseline
    # re-applies objects, which would reach the total early).
    counter = Applied(client, ns)
    load0 = os.getloadavg()
    op = Operator(mode, ns, cluster.env, resync=300)
    op.wait_up(120)
    up, api0 = time.monotonic(), apiserver_cpu_seconds(cluster)
    applied = float(wait_applied(counter, expected, 900))
    done = time.monotonic()
    counter.close()
    cpu = op.cpu_seconds()
    api_cpu = apiserver_cpu_seconds(cluster) - api0
    time.sleep(10)
    rss, hwm = op.rss_mb()
    # "seconds" counts from the metrics endpoint answering (the process has imported and
    # configured itself) to the last object applied; it includes kopf's initial LIST/WATCH.
    result: dict[str, Any] = {"modelservices": n, "objects_applied": applied,
              "seconds": round(done - up, 2), "per_second": round(n / (done - up), 1),
              "seconds_incl_process_start": round(done - op.started, 2),
              "operator_cpu_seconds": round(cpu, 1),
              "apiserver_cpu_seconds": round(api_cpu, 1),
              "create_seconds": create_s, "load_average_start": load0,
              "load_average_end": os.getloadavg(),
              "rss_mb": round(rss, 1), "peak_rss_mb": round(hwm, 1)}
    if mode == "ours":
        settle(op)
        result["latency_ms"] = latency_scenario(op, ns, client, samples=ARGS.latency_samples)
    op.stop()
    delete_namespace(cluster, ns)
    return result


def apiserver_cpu_seconds(cluster: localcluster.Cluster) -> float:
    """CPU time kube-apiserver has used so far (user + system)."""
    pid = {st.name: st.pid for st in localcluster.status(cluster.state_dir)}["kube-apiserver"]
    return cpu_seconds(int(pid or 0))


def wait_passes(op: Operator, at_least: float, limit: float = 900) -> None:
    deadline = time.monotonic() + limit
    while op.total("msv_operator_reconciles_total") < at_least:
        if time.monotonic() > deadline or op.proc.poll() is not None:
            raise TimeoutError(f"fewer than {at_least} passes (see {op.log})")
        time.sleep(0.5)


def scale_scenario(n: int, cluster: localcluster.Cluster, client: kube.Kube
                   ) -> dict[str, Any]:
    """``n`` ModelServices with ``replicas: 0`` (objects only: no pods, so the control plane
    works for the operator, not for the scheduler and kwok): reconcile throughput with the
    operator's and the API server's CPU, RSS, and the writes of a no-op resync and of a
    restart (goal: 0)."""
    ns = f"bench-scale-objects-{n}"
    cluster.kubectl_run("create", "namespace", ns)
    create_s = create_modelservices(client, ns, n, replicas=0)
    expected = n * objects_per_modelservice(client, ns)
    counter = Applied(client, ns)
    resync = ARGS.scale_resync
    load0 = os.getloadavg()
    op = Operator("ours", ns, cluster.env, resync=resync)
    op.wait_up(120)
    up, api0 = time.monotonic(), apiserver_cpu_seconds(cluster)
    applied = wait_applied(counter, expected, 1800, poll=1.0)
    done = time.monotonic()
    counter.close()
    result: dict[str, Any] = {
        "modelservices": n, "create_seconds": create_s, "objects_applied": applied,
        "seconds": round(done - up, 1), "per_second": round(n / (done - up), 1),
        "operator_cpu_seconds": round(op.cpu_seconds(), 1),
        "apiserver_cpu_seconds": round(apiserver_cpu_seconds(cluster) - api0, 1),
        "load_average_start": load0, "load_average_end": os.getloadavg()}
    settle(op, quiet=5.0, limit=900)
    rss, hwm = op.rss_mb()
    result.update(rss_mb=round(rss, 1), peak_rss_mb=round(hwm, 1))
    # A no-op resync: every ModelService passes again, nothing is written.
    passes0 = op.total("msv_operator_reconciles_total")
    m0, cpu0, api0 = apiserver_writes(client), op.cpu_seconds(), apiserver_cpu_seconds(cluster)
    wait_passes(op, passes0 + n, limit=resync * 3 + 600)
    settle(op, quiet=5.0, limit=900)
    m1 = apiserver_writes(client)
    noop = delta(m1, m0)
    result["noop_resync"] = {
        "passes": op.total("msv_operator_reconciles_total") - passes0,
        "operator_writes": operator_writes(noop), "all": noop,
        "operator_cpu_seconds": round(op.cpu_seconds() - cpu0, 1),
        "apiserver_cpu_seconds": round(apiserver_cpu_seconds(cluster) - api0, 1)}
    rss, hwm = op.rss_mb()
    result.update(rss_mb_after_resync=round(rss, 1), peak_rss_mb_after_resync=round(hwm, 1))
    op.stop()
    # A restart with nothing changed.
    m2 = apiserver_writes(client)
    op = Operator("ours", ns, cluster.env, resync=3600)
    op.wait_up(120)
    started, cpu0, api0 = time.monotonic(), op.cpu_seconds(), apiserver_cpu_seconds(cluster)
    wait_passes(op, n)
    passed = time.monotonic() - started
    settle(op, quiet=5.0, limit=900)
    m3 = apiserver_writes(client)
    restart = delta(m3, m2)
    rss, hwm = op.rss_mb()
    result["restart"] = {"seconds_to_pass_all": round(passed, 1),
                         "operator_writes": operator_writes(restart), "all": restart,
                         "operator_cpu_seconds": round(op.cpu_seconds() - cpu0, 1),
                         "apiserver_cpu_seconds": round(
                             apiserver_cpu_seconds(cluster) - api0, 1),
                         "rss_mb": round(rss, 1), "peak_rss_mb": round(hwm, 1),
                         "load_average": os.getloadavg()}
    op.stop()
    delete_namespace(cluster, ns)
    return result


def latency_scenario(op: Operator, ns: str, client: kube.Kube, samples: int
                     ) -> dict[str, float]:
    """Apply a new ModelService, time until its Deployment is seen by a watch."""
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        import kubernetes
        w = kubernetes.watch.Watch()
        apps = kubernetes.client.AppsV1Api(client.api)
        for ev in w.stream(apps.list_namespaced_deployment, ns, timeout_seconds=600):
            name = ev["object"].metadata.name
            seen.setdefault(name, time.monotonic())
            if stop.is_set():
                w.stop()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(2)
    out: list[float] = []
    for i in range(samples):
        name = f"lat{i:03d}"
        start = time.monotonic()
        client.apply(ms_body(name, ns))
        deadline = start + 30
        while f"{name}-baseline" not in seen and time.monotonic() < deadline:
            time.sleep(0.002)
        if f"{name}-baseline" in seen:
            out.append((seen[f"{name}-baseline"] - start) * 1000)
        time.sleep(0.1)
    stop.set()
    out.sort()
    return {"samples": len(out), "p50": round(statistics.median(out), 1),
            "p99": round(out[min(len(out) - 1, int(len(out) * 0.99))], 1),
            "max": round(out[-1], 1)}


def main() -> int:
    state = Path(os.environ.get("MSV_BENCH_STATE",
                                Path(paths.cache_dir()) / "bench-operator-state"))
    cluster = localcluster.up(state, timeout=180, owner="bench", real_node=False)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_established("modelservices.serving.modelservice.dev")
    client = kube.Kube("msv-bench", qps=1000, burst=1000)
    results: dict[str, Any] = {"command": " ".join(["python", "bench/operator_bench.py",
                                                    *sys.argv[1:]]),
                               "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        if "writes" in ARGS.scenarios:
            results["writes"] = {mode: writes_scenario(mode, cluster, client)
                                 for mode in ("ours", "naive")}
        if "scale" in ARGS.scenarios or "throughput" in ARGS.scenarios:
            results["apiserver_service_creates"] = service_create_rate(cluster, client)
        results["throughput"] = {}
        for n in ARGS.sizes if "throughput" in ARGS.scenarios else []:
            modes = ("ours", "naive") if n <= 200 else ("ours",)
            results["throughput"][str(n)] = {m: throughput_scenario(m, n, cluster, client)
                                             for m in modes}
        if "scale" in ARGS.scenarios:
            results["scale"] = {str(n): scale_scenario(n, cluster, client)
                                for n in ARGS.scale_sizes}
        results["load_average_end"] = os.getloadavg()
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not cluster.reused:
            localcluster.down(state)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists() and ARGS.scenarios != {"writes", "throughput"}:
        # A partial run updates its scenarios and keeps the others' latest results.
        previous = json.loads(RESULTS.read_text())
        results = {**previous, **results, "command_" + "_".join(sorted(ARGS.scenarios)):
                   results["command"], "command": previous.get("command")}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    w = results.get("writes")
    if w:
        print("writes by the operator (apiserver_request_total):   ours | naive")
        for phase in ("create", "noop_resync", "restart"):
            print(f"  {phase:12s} {w['ours'][phase]['operator_writes']:>18} | "
                  f"{w['naive'][phase]['operator_writes']}")
    for n, r in (results.get("scale") or {}).items():
        print(f"{n} ModelServices (objects only): {r['per_second']}/s in {r['seconds']} s "
              f"(operator CPU {r['operator_cpu_seconds']} s, kube-apiserver CPU "
              f"{r['apiserver_cpu_seconds']} s), RSS {r['rss_mb']} MB (peak "
              f"{r['peak_rss_mb']} MB); no-op resync {r['noop_resync']['operator_writes']} "
              f"writes, restart {r['restart']['operator_writes']} writes")
    if "apiserver_service_creates" in results:
        print(f"kube-apiserver Service creates: {results['apiserver_service_creates']}")
    for n, r in results["throughput"].items():
        ours = r["ours"]
        line = (f"{n} ModelServices: ours {ours['per_second']}/s in {ours['seconds']} s "
                f"(operator CPU {ours['operator_cpu_seconds']} s, kube-apiserver CPU "
                f"{ours.get('apiserver_cpu_seconds')} s), "
                f"RSS {ours['rss_mb']} MB (peak {ours['peak_rss_mb']} MB)")
        if "naive" in r:
            line += f"; naive {r['naive']['per_second']}/s " \
                    f"(ratio {ours['per_second'] / max(r['naive']['per_second'], 1e-9):.2f}x)"
        print(line)
        if "latency_ms" in ours:
            print(f"  apply -> Deployment created: {ours['latency_ms']}")
    print(f"saved {RESULTS.relative_to(REPO)}")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", default="200,1000",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--latency-samples", type=int, default=50)
    p.add_argument("--qps", type=int, default=200, help="the operator's --qps")
    p.add_argument("--scenarios", default="writes,throughput",
                   type=lambda s: set(s.split(",")),
                   help="any of writes, throughput, scale (5,000 objects; not in the default)")
    p.add_argument("--scale-sizes", default="5000",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--scale-resync", type=float, default=120.0,
                   help="the operator's --resync-seconds in the scale scenario")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    sys.exit(main())
