"""A load step on real pods: HPA scale-out alone vs HPA plus brownout, same load, same run.

One ModelService per arm serves a text classifier (hidden 768, 6 layers: the model, not
HTTP, is most of a request; dynamic int8 runs it ~3x cheaper on this CPU) as ``baseline``
(100% of the traffic) and its dynamic-int8 variant ``int8``, autoscaled between 1 and 2
replicas on in-flight requests (the real HPA controller, prometheus-adapter, Prometheus
scraping the pods). The arms differ
only in ``spec.autoscaling.brownout`` (to ``int8``, up to ``--share`` percent):

* **hpa**: no brownout — the HPA is the only answer to the step;
* **brownout**: the same, plus the brownout once the baseline is at maxReplicas and its p95
  (from Prometheus) stays above the objective.

Before the step each arm waits until its pods are Ready and the HPA reads its metric. The
latency objective is calibrated once: ``--objective-factor`` x the p50 a single client sees
on one idle baseline pod (or ``--objective-ms``). Then ``--clients`` closed-loop clients send
requests through the stable Service for ``--step`` seconds (a new connection per request, so
kube-proxy spreads them over the pods). Measured per arm, from the start of the step:

* ``first_extra_pod_ready_s``: the second baseline pod Ready (polled every 0.5 s);
* ``brownout_engaged_s``: ``status.brownout.phase`` Engaged (brownout arm);
* ``p95_under_objective_s``: the first 10 s window (sliding by 1 s) after the client p95
  went above the objective whose p95 is back at or under it (null: never within the step);
* client p95/p50 over the whole step and over its second half, requests/s, errors, and the
  share of answers from ``int8``.

Arms alternate order between runs (``--runs``). Ratios brownout/hpa are printed and saved.

    python bench/autoscale_brownout.py [--runs 1] [--step 150] [--clients 8]   # as root

Results: bench/results/autoscale_brownout.json.
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
from typing import Any

from _realcluster import get, get_ms, log, real_cluster
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "autoscale_brownout.json"
GROUP = "serving.modelservice.dev"
TEXT = ("the film was long but the actors were wonderful and the music carried every "
        "scene so i left the theatre happy and a little tired")
QUICK = {"scaleUp": {"stabilizationWindowSeconds": 0,
                     "policies": [{"type": "Pods", "value": 1, "periodSeconds": 5}]},
         "scaleDown": {"stabilizationWindowSeconds": 30,
                       "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]}}
WINDOW_S = 10.0


class Clients:
    """``n`` closed-loop clients through one URL; every request logged as
    (start, seconds, variant or None on error)."""

    def __init__(self, ip: str, model: str, n: int) -> None:
        self.url = f"http://{ip}/v2/models/{model}/infer"
        self.log: list[tuple[float, float, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        self.body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                            "data": [TEXT]}]}).encode()

    def once(self) -> tuple[float, float, str | None]:
        req = urllib.request.Request(self.url, data=self.body,
                                     headers={"Content-Type": "application/json"})
        t0 = time.time()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                variant: str | None = str(json.loads(r.read())["parameters"]["variant"])
        except OSError:
            variant = None
        return t0, time.time() - t0, variant

    def _run(self) -> None:
        while not self.stop.is_set():
            self.log.append(self.once())

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def spec(name: str, ns: str, model: tuple[str, str], brownout: dict[str, Any] | None
         ) -> dict[str, Any]:
    autoscaling: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 2, "targetInFlight": 2,
                                   "behavior": QUICK}
    if brownout:
        autoscaling["brownout"] = brownout
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"uri": model[0], "sha256": model[1],
                               "framework": "transformers", "task": "text-classification"},
                     "server": {"torchThreads": 1,
                                "resources": {"requests": {"cpu": "50m", "memory": "300Mi"},
                                              "limits": {"memory": "1500Mi"}}},
                     "variants": [{"name": "baseline"},
                                  {"name": "int8",
                                   "optimization": {"quantization": "dynamic-int8"}}],
                     "traffic": [{"variant": "baseline", "weight": 100}],
                     "monitoring": {"interval": "5s"}, "autoscaling": autoscaling}}


def ready_pods(c: lc.Cluster, ns: str, name: str, variant: str) -> int:
    pods = (get(c, "pods", "-n", ns, "-l",
                f"{GROUP}/modelservice={name},{GROUP}/variant={variant}") or {}).get("items", [])
    return sum(1 for pod in pods if not pod["metadata"].get("deletionTimestamp") and any(
        x["type"] == "Ready" and x["status"] == "True"
        for x in pod.get("status", {}).get("conditions", [])))


def hpa_reads_its_metric(c: lc.Cluster, ns: str, name: str) -> bool:
    hpa = get(c, "hpa", f"{name}-baseline", "-n", ns) or {}
    st = hpa.get("status") or {}
    active = any(x["type"] == "ScalingActive" and x["status"] == "True"
                 for x in st.get("conditions", []))
    return active and bool(st.get("currentMetrics"))


def settle(c: lc.Cluster, ns: str, name: str) -> None:
    wait_for(f"{name}: one Ready pod per variant", lambda: (
        ready_pods(c, ns, name, "baseline") >= 1 and ready_pods(c, ns, name, "int8") >= 1),
        timeout=300, interval=1)
    wait_for(f"{name}: the HPA reading in-flight requests", lambda: hpa_reads_its_metric(
        c, ns, name), timeout=180, interval=1)


def calibrate(ip: str, name: str, requests: int = 40) -> float:
    """p50 (ms) of one client on the idle baseline (after a warm-up)."""
    one = Clients(ip, name, 1)
    samples = [one.once() for _ in range(requests + 10)][10:]
    if any(v is None for _, _, v in samples):
        raise RuntimeError("calibration requests failed")
    return statistics.median(s for _, s, _ in samples) * 1000


def windows(log_: list[tuple[float, float, str | None]], t0: float, end: float
            ) -> list[tuple[float, float]]:
    """(window end - t0, p95 ms) of 10 s windows sliding by 1 s over the step."""
    out = []
    t = t0 + WINDOW_S
    while t <= end:
        lat = [s * 1000 for start, s, v in log_ if v and t - WINDOW_S <= start < t]
        if lat:
            out.append((round(t - t0, 1), round(p(lat, 0.95), 2)))
        t += 1.0
    return out


def under_objective_after_breach(series: list[tuple[float, float]], objective: float
                                 ) -> float | None:
    breached = False
    for t, p95 in series:
        if p95 > objective:
            breached = True
        elif breached:
            return t
    return None


def arm(c: lc.Cluster, ns: str, model: tuple[str, str], kind: str, i: int, args: argparse.Namespace,
        objective: list[float]) -> dict[str, Any]:
    name = f"{kind}{i}"
    c.apply(spec(name, ns, model, None))
    wait_for(f"{name}: Service", lambda: get(c, "service", name, "-n", ns), timeout=120,
             interval=1)
    ip = get(c, "service", name, "-n", ns)["spec"]["clusterIP"]
    settle(c, ns, name)
    if not objective:
        idle = calibrate(ip, name)
        objective.append(args.objective_ms or round(args.objective_factor * idle, 1))
        log(f"idle p50 {idle:.1f} ms on one baseline pod -> objective {objective[0]} ms")
    if kind == "brownout":
        c.apply(spec(name, ns, model, {
            "variant": "int8", "maxShare": args.share, "latencyObjectiveMs": objective[0],
            "engageAfter": "10s", "releaseAfter": "30s", "releaseBelow": 0.8,
            "interval": "5s", "window": "10s"}))
        wait_for(f"{name}: brownout watching the baseline at 1/2 replicas", lambda: (
            lambda b: b.get("phase") == "Inactive" and b.get("stableMaxReplicas") == 2)(
                (get_ms(c, ns, name).get("status") or {}).get("brownout") or {}), timeout=120,
            interval=1)
    log(f"{name}: step of {args.clients} clients for {args.step:.0f} s")
    seen: dict[str, float] = {}
    with Clients(ip, name, args.clients) as clients:
        t0 = time.time()
        while time.time() - t0 < args.step:
            now = time.time() - t0
            if "extra_pod" not in seen and ready_pods(c, ns, name, "baseline") >= 2:
                seen["extra_pod"] = now
                log(f"  {now:5.1f} s: second baseline pod Ready")
            b = (get_ms(c, ns, name).get("status") or {}).get("brownout") or {}
            if b.get("phase") == "Engaged" and "engaged" not in seen:
                seen["engaged"] = now
                log(f"  {now:5.1f} s: brownout Engaged (stable p95 {b.get('p95Ms')} ms)")
            time.sleep(0.5)
        end = time.time()
    c.kubectl_run("delete", "modelservice", name, "-n", ns, "--wait=false")
    done = [(s, d, v) for s, d, v in clients.log if s < end]
    ok = [(s, d, v) for s, d, v in done if v]
    series = windows(done, t0, end)
    half = t0 + args.step / 2
    lat = [d * 1000 for _, d, _ in ok]
    lat2 = [d * 1000 for s, d, _ in ok if s >= half]
    return {
        "arm": kind, "name": name, "objective_ms": objective[0],
        "first_extra_pod_ready_s": round(seen["extra_pod"], 1) if "extra_pod" in seen else None,
        "brownout_engaged_s": round(seen["engaged"], 1) if "engaged" in seen else None,
        "p95_under_objective_s": under_objective_after_breach(series, objective[0]),
        "p95_ms": round(p(lat, 0.95), 2), "p50_ms": round(p(lat, 0.5), 2),
        "p95_ms_second_half": round(p(lat2, 0.95), 2),
        "p50_ms_second_half": round(p(lat2, 0.5), 2),
        "rps": round(len(ok) / (end - t0), 1), "errors": len(done) - len(ok),
        "int8_share": round(sum(1 for _, _, v in ok if v == "int8") / max(1, len(ok)), 3),
        "p95_windows": series,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--step", type=float, default=150.0, help="seconds of load per arm")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--share", type=int, default=50, help="brownout maxShare (percent)")
    ap.add_argument("--objective-factor", type=float, default=3.0)
    ap.add_argument("--objective-ms", type=float, default=0.0)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    args = ap.parse_args()
    from modelfactory import make_text_classifier

    t_start = time.time()
    arms: list[dict[str, Any]] = []
    objective: list[float] = []
    with real_cluster("bench", prometheus=True) as (c, ns):
        with tempfile.TemporaryDirectory() as tmp:
            make_text_classifier(Path(tmp) / "model", hidden_size=768, num_layers=6,
                                 num_heads=12, intermediate_size=3072)
            model = modelstores.publish_http(Path(tmp) / "model", f"{ns}-model")
        for i in range(args.runs):
            order = ["hpa", "brownout"] if i % 2 == 0 else ["brownout", "hpa"]
            for kind in order:
                arms.append(arm(c, ns, model, kind, i, args, objective))
                shown = {k: v for k, v in arms[-1].items() if k != "p95_windows"}
                log(f"{kind}: {shown}")
                wait_for("the arm's pods gone", lambda: not (get(c, "pods", "-n", ns, "-l",
                         f"{GROUP}/modelservice={arms[-1]['name']}") or {}).get("items"),
                         timeout=180, interval=1)

    def med(kind: str, key: str) -> float | None:
        vals = [a[key] for a in arms if a["arm"] == kind and a[key] is not None]
        return round(statistics.median(vals), 2) if vals else None

    keys = ["first_extra_pod_ready_s", "brownout_engaged_s", "p95_under_objective_s",
            "p95_ms", "p50_ms", "p95_ms_second_half", "rps", "errors", "int8_share"]
    median = {kind: {k: med(kind, k) for k in keys} for kind in ("hpa", "brownout")}

    def ratio(key: str) -> float | None:
        a, b = median["brownout"][key], median["hpa"][key]
        return round(a / b, 3) if a is not None and b else None

    result = {
        "benchmark": "load step: HPA alone vs HPA + brownout (real pods, same run)",
        "command": "python bench/autoscale_brownout.py " + " ".join(sys.argv[1:]),
        "model": "text classifier, hidden 768, 6 layers (random weights); int8 = dynamic int8",
        "settings": {"clients": args.clients, "step_s": args.step, "runs": args.runs,
                     "min_max_replicas": [1, 2], "target_in_flight": 2,
                     "brownout_max_share": args.share, "objective_ms": objective[0],
                     "window_s": WINDOW_S},
        "median": median,
        "ratios_brownout_over_hpa": {k: ratio(k) for k in (
            "p95_ms", "p95_ms_second_half", "p50_ms", "rps")},
        "arms": arms, "load_average": os.getloadavg(),
        "wall_s": round(time.time() - t_start, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for kind in ("hpa", "brownout"):
        log(f"{kind:8s} (median): {median[kind]}")
    log(f"brownout / hpa: {result['ratios_brownout_over_hpa']}  ({args.results})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
