"""Scale from zero on real pods: first-request latency from zero vs warm, and idle -> zero.

The first request to a ModelService at zero is measured against the same model warm, and
the time an idle ModelService takes to go back to zero after its last request.

The chart is installed as users install it, with ``scaleToZero.enabled`` (the operator and
the activator as pods, in a namespace of their own, watching the benchmark's namespace; KEDA
and Prometheus are the local cluster's). ``--cold-starts`` ModelServices ``zero-0`` ..
``zero-<N-1>`` serve the same small text classifier (``minReplicas: 0``, ``maxReplicas: 2``,
``idleAfter: 30s``, ``targetInFlight: 4``, scraped every 5 s); they are applied together and
the benchmark waits until every one is at zero (``status.variants[].scaledToZero``, no pod,
``Ready`` reason ``ScaledToZero``). Then, one ModelService after the other:

* **cold start**: ONE OIP v2 infer request (JSON, a new connection) to its stable Service's
  cluster IP, timeout 150 s: the activator holds it while KEDA starts a pod and the model
  loads. Recorded: wall latency, HTTP status, ``x-msv-held-ms``;
* **warm** (the baseline): once the activator's EndpointSlice is gone (the Service routes
  to the pod directly), ``--warm`` requests to the same Service, one after the other.

Any non-200 answer or exception is a failure (target: 0). For the first ``--idle-checks``
ModelServices, a watcher polls every 2 s from their cold start and records the time from
their last request until status shows ``scaledToZero`` again (and until their last pod is
gone). KEDA's activity trigger reads the request rate over a 1-minute window: requests that
Prometheus saw keep a variant busy up to that window longer than ``idleAfter``; the burst of a
cold start, over before the new pod's first scrape, does not (bench/README.md).

    python bench/scale_from_zero.py [--cold-starts 10] [--warm 20]   # as root

Results: bench/results/scale_from_zero.json.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _realcluster import get, log, real_cluster
from helmchart import HOLD_SECONDS, install_scale_to_zero, uninstall, wait_for_keda
from msv_operator.zero import ACTIVITY_WINDOW
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores
from msv_contract.api import API_VERSION, KIND, LABEL_MODELSERVICE
from msv_contract.scaletozero import HELD_HEADER, REASON_SCALED_TO_ZERO, SLICE_SUFFIX

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "scale_from_zero.json"
VARIANT = "baseline"
IDLE_AFTER = "30s"
IDLE_AFTER_S = 30.0
AUTOSCALING = {"minReplicas": 0, "maxReplicas": 2, "idleAfter": IDLE_AFTER, "targetInFlight": 4}
SERVER = {"torchThreads": 1,
          "resources": {"requests": {"cpu": "50m", "memory": "300Mi"},
                        "limits": {"memory": "1500Mi"}}}
WARM_TIMEOUT_S = 30.0
POLL_S = 2.0
IDLE_TIMEOUT_S = 300.0


# -- requests ---------------------------------------------------------------------------------

@dataclass
class Call:
    """One request: HTTP status (or the exception's name), wall ms, ``x-msv-held-ms``."""

    status: int | str
    ms: float
    held_ms: float | None = None
    error: str | None = None
    connect_retry: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


def infer(ip: str, model: str, text: str, timeout: float) -> Call:
    """One OIP v2 infer request (JSON) on a new connection. A connection that never reached
    a server (EHOSTUNREACH: kube-proxy rarely leaves a new connection to a Service IP
    untranslated under churn) is made once more, as a connect retry would, and noted."""
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": [text]}]}).encode()
    req = urllib.request.Request(f"http://{ip}/v2/models/{model}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    retried = False
    t0 = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                held = r.headers.get(HELD_HEADER)
                return Call(r.status, (time.perf_counter() - t0) * 1000,
                            float(held) if held is not None else None, connect_retry=retried)
        except urllib.error.HTTPError as e:
            return Call(e.code, (time.perf_counter() - t0) * 1000, error=str(e),
                        connect_retry=retried)
        except OSError as e:
            reason = getattr(e, "reason", e)
            if not retried and getattr(reason, "errno", None) == errno.EHOSTUNREACH:
                retried = True
                continue
            return Call(type(e).__name__, (time.perf_counter() - t0) * 1000, error=str(e),
                        connect_retry=retried)


# -- the cluster ------------------------------------------------------------------------------

def manifest(name: str, ns: str, model: tuple[str, str]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"uri": model[0], "sha256": model[1],
                               "framework": "transformers", "task": "text-classification"},
                     "server": SERVER, "variants": [{"name": VARIANT}],
                     "monitoring": {"interval": "5s"}, "autoscaling": AUTOSCALING}}


@dataclass
class State:
    """What one poll saw of one ModelService."""

    scaled_to_zero: bool
    replicas: int | None
    pods: int
    ready_reason: str | None

    @property
    def at_zero(self) -> bool:
        return self.scaled_to_zero and self.replicas == 0 and self.pods == 0


def states(c: lc.Cluster, ns: str) -> dict[str, State]:
    """Every ModelService of ``ns`` as one list call each for ModelServices and pods sees it
    (pods being deleted count: a pod is gone when it is gone)."""
    pods: dict[str, int] = {}
    for pod in (get(c, "pods", "-n", ns) or {}).get("items", []):
        owner = (pod["metadata"].get("labels") or {}).get(LABEL_MODELSERVICE)
        if owner:
            pods[owner] = pods.get(owner, 0) + 1
    out = {}
    for ms in (get(c, "modelservices", "-n", ns) or {}).get("items", []):
        st = ms.get("status") or {}
        v: dict[str, Any] = next(
            (x for x in st.get("variants") or [] if x.get("name") == VARIANT), {})
        ready: dict[str, Any] = next(
            (x for x in st.get("conditions") or [] if x.get("type") == "Ready"), {})
        name = ms["metadata"]["name"]
        out[name] = State(bool(v.get("scaledToZero")), v.get("replicas"), pods.get(name, 0),
                          ready.get("reason") if ready.get("status") == "True" else None)
    return out


def at_zero_everywhere(c: lc.Cluster, ns: str, names: list[str]) -> bool:
    seen = states(c, ns)
    zero = [n for n in names if n in seen and seen[n].at_zero
            and seen[n].ready_reason == REASON_SCALED_TO_ZERO]
    log(f"  {len(zero)}/{len(names)} at zero")
    return len(zero) == len(names)


# -- idle -> zero -----------------------------------------------------------------------------

@dataclass
class Idle:
    """One watched ModelService: seconds (time.time()) of its cold request, its last request,
    the first poll showing it awake, showing ``scaledToZero`` again, and without a pod."""

    name: str
    cold_at: float
    last_at: float | None = None
    awake_at: float | None = None
    status_zero_at: float | None = None
    no_pod_at: float | None = None

    def done(self, now: float) -> bool:
        return self.no_pod_at is not None or (
            self.last_at is not None and now - self.last_at > IDLE_TIMEOUT_S)

    def summary(self) -> dict[str, Any]:
        def since_last(t: float | None) -> float | None:
            return round(t - self.last_at, 1) if t is not None and self.last_at else None
        return {"name": self.name, "status_scaled_to_zero_s": since_last(self.status_zero_at),
                "last_pod_gone_s": since_last(self.no_pod_at),
                "seen_awake": self.awake_at is not None}


class Watcher:
    """Polls the ModelServices every ``POLL_S`` seconds in a thread; each tracked one must be
    seen awake after its cold request before its return to zero counts."""

    def __init__(self, c: lc.Cluster, ns: str) -> None:
        self.c, self.ns = c, ns
        self.tracked: dict[str, Idle] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def track(self, name: str) -> None:
        with self.lock:
            self.tracked[name] = Idle(name, time.time())

    def last_request(self, name: str, at: float) -> None:
        with self.lock:
            if name in self.tracked:
                self.tracked[name].last_at = at

    def all_done(self) -> bool:
        now = time.time()
        with self.lock:
            return all(i.done(now) for i in self.tracked.values())

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            with self.lock:
                open_ = [i for i in self.tracked.values() if not i.done(time.time())]
            if not open_:
                continue
            try:
                seen = states(self.c, self.ns)
            except (lc.ClusterError, subprocess.TimeoutExpired, ValueError):
                continue
            now = time.time()
            with self.lock:
                for i in open_:
                    s = seen.get(i.name)
                    if s is None:
                        continue
                    if not s.scaled_to_zero and i.awake_at is None:
                        i.awake_at = now
                    if i.awake_at is None or i.last_at is None:
                        continue
                    if s.scaled_to_zero and s.replicas == 0 and i.status_zero_at is None:
                        i.status_zero_at = now
                    if i.status_zero_at is not None and s.pods == 0 and i.no_pod_at is None:
                        i.no_pod_at = now

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


# -- the benchmark ----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    """The median for 0.5, else the nearest-rank percentile (with 10 values p99 is the
    largest)."""
    if not values:
        return None
    if q == 0.5:
        return round(statistics.median(values), 1)
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def one_start(c: lc.Cluster, ns: str, name: str, ip: str, texts: list[str], warm: int,
              watcher: Watcher, watched: bool) -> dict[str, Any]:
    before = states(c, ns).get(name)
    was_at_zero = bool(before and before.at_zero)
    if watched:
        watcher.track(name)
    cold = infer(ip, name, texts[0], timeout=HOLD_SECONDS)
    log(f"{name}: cold start {cold.status} in {cold.ms:.0f} ms (held {cold.held_ms} ms)"
        + ("" if was_at_zero else " — was NOT at zero before the request")
        + (f": {cold.error}" if cold.error else ""))
    t_slice = time.time()
    try:
        wait_for(f"{name}: the activator's EndpointSlice gone", lambda: not get(
            c, "endpointslice", f"{name}{SLICE_SUFFIX}", "-n", ns), timeout=30, interval=0.5)
        slice_gone_s: float | None = round(time.time() - t_slice, 1)
    except AssertionError:
        slice_gone_s = None
    calls = [infer(ip, name, texts[(k + 1) % len(texts)], timeout=WARM_TIMEOUT_S)
             for k in range(warm)]
    watcher.last_request(name, time.time())
    ok = [x.ms for x in calls if x.ok]
    log(f"{name}: warm p50 {pct(ok, 0.5)} ms over {len(ok)}/{warm} answered"
        + (f" (activator slice gone after {slice_gone_s} s)" if slice_gone_s is not None
           else " (activator slice still there after 30 s)"))
    return {"name": name, "was_at_zero": was_at_zero,
            "ready_reason_before": before.ready_reason if before else None,
            "cold": asdict(cold), "activator_slice_gone_s": slice_gone_s,
            "warm_ms": [round(x.ms, 2) for x in calls if x.ok],
            "warm_failures": [asdict(x) for x in calls if not x.ok],
            "warm_connect_retries": sum(x.connect_retry for x in calls)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-starts", type=int, default=10,
                    help="ModelServices at zero, each woken once (default 10)")
    ap.add_argument("--warm", type=int, default=20,
                    help="warm requests after each cold start (default 20)")
    ap.add_argument("--idle-checks", type=int, default=3,
                    help="ModelServices whose return to zero is timed (default 3)")
    ap.add_argument("--settle-timeout", type=float, default=480.0,
                    help="seconds to wait until every ModelService is at zero (default 480)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    args = ap.parse_args()
    if args.cold_starts < 1:
        raise SystemExit("error: --cold-starts must be at least 1")
    if args.warm < 1:
        raise SystemExit("error: --warm must be at least 1")
    from modelfactory import make_text_classifier
    from service_load import NEGATIVE, POSITIVE

    texts = POSITIVE + NEGATIVE
    t_start = time.time()
    names = [f"zero-{i}" for i in range(args.cold_starts)]
    starts: list[dict[str, Any]] = []
    with real_cluster("zero", operator=False) as (c, ns):
        system = f"msv-zero-{uuid.uuid4().hex[:6]}"
        try:
            log("waiting for KEDA's operator and metrics adapter")
            wait_for_keda(c)
            log(f"installing the chart (scale to zero on) as {system}, watching {ns}")
            t = time.time()
            install_scale_to_zero(c, system, watched=ns)
            chart_s = round(time.time() - t, 1)
            with tempfile.TemporaryDirectory() as tmp:
                make_text_classifier(Path(tmp) / "classifier")
                model = modelstores.publish_http(Path(tmp) / "classifier", f"{ns}-zero")
            for name in names:
                c.apply(manifest(name, ns, model))
            log(f"applied {len(names)} ModelServices; waiting until every one is at zero")
            t = time.time()
            wait_for("every ModelService at zero", lambda: at_zero_everywhere(c, ns, names),
                     timeout=args.settle_timeout, interval=10)
            settle_s = round(time.time() - t, 1)
            ips = {n: get(c, "service", n, "-n", ns)["spec"]["clusterIP"] for n in names}
            with Watcher(c, ns) as watcher:
                for i, name in enumerate(names):
                    starts.append(one_start(c, ns, name, ips[name], texts, args.warm,
                                            watcher, watched=i < args.idle_checks))
                log(f"waiting (up to {IDLE_TIMEOUT_S:.0f} s after their last request) for "
                    f"{min(args.idle_checks, len(names))} ModelServices to go back to zero")
                try:
                    wait_for("the watched ModelServices back at zero", watcher.all_done,
                             timeout=IDLE_TIMEOUT_S + 30, interval=POLL_S)
                except AssertionError as e:
                    log(f"  {e}: reported as not back at zero")
                idle = [i.summary() for i in watcher.tracked.values()]
        finally:
            log("cleaning up: the ModelServices, the chart")
            c.kubectl_run("delete", "modelservices", "--all", "-n", ns, "--wait=true",
                          "--timeout=120s", check=False, timeout=150)
            uninstall(c, system)

    cold_ok = [s["cold"]["ms"] for s in starts if s["cold"]["status"] == 200]
    held = [s["cold"]["held_ms"] for s in starts if s["cold"]["held_ms"] is not None]
    warm_ok = [ms for s in starts for ms in s["warm_ms"]]
    cold_failures = sum(1 for s in starts if s["cold"]["status"] != 200)
    warm_failures = sum(len(s["warm_failures"]) for s in starts)
    cold_p50, warm_p50 = pct(cold_ok, 0.5), pct(warm_ok, 0.5)
    to_zero = [x["status_scaled_to_zero_s"] for x in idle
               if x["status_scaled_to_zero_s"] is not None]
    result = {
        "benchmark": "scale from zero: first request to a ModelService at zero vs the same "
                     "model warm (real pods; chart with the activator; KEDA)",
        "command": "python bench/scale_from_zero.py " + " ".join(sys.argv[1:]),
        "model": "text classifier (tests/modelfactory.make_text_classifier defaults, random "
                 "weights), one variant",
        "settings": {"cold_starts": args.cold_starts, "warm_per_start": args.warm,
                     "autoscaling": AUTOSCALING, "monitoring_interval": "5s",
                     "hold_seconds": HOLD_SECONDS, "activity_window": ACTIVITY_WINDOW,
                     "idle_checks": args.idle_checks, "poll_s": POLL_S},
        "cold_start_ms": {"p50": cold_p50, "p99": pct(cold_ok, 0.99),
                          "max": round(max(cold_ok), 1) if cold_ok else None,
                          "n": len(cold_ok)},
        "held_ms": {"p50": pct(held, 0.5), "p99": pct(held, 0.99), "n": len(held)},
        "warm_ms": {"p50": warm_p50, "p99": pct(warm_ok, 0.99), "n": len(warm_ok)},
        "ratio_cold_p50_over_warm_p50": round(cold_p50 / warm_p50, 1)
        if cold_p50 and warm_p50 else None,
        "failures": {"cold": cold_failures, "warm": warm_failures,
                     "total": cold_failures + warm_failures},
        "connect_retries": sum(s["cold"]["connect_retry"] for s in starts)
        + sum(s["warm_connect_retries"] for s in starts),
        "not_at_zero_before_request": [s["name"] for s in starts if not s["was_at_zero"]],
        "idle_to_zero": idle,
        "idle_to_zero_median_s": round(statistics.median(to_zero), 1) if to_zero else None,
        "chart_install_s": chart_s, "settle_to_zero_s": settle_s,
        "starts": starts, "load_average": os.getloadavg(),
        "wall_s": round(time.time() - t_start, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    log(f"({args.results}; {result['wall_s']:.0f} s in all)")
    return 0


def report(r: dict[str, Any]) -> None:
    cold, held, warm = r["cold_start_ms"], r["held_ms"], r["warm_ms"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f} ms"

    log("")
    log(f"{'':34s} {'p50':>10s} {'p99':>10s} {'max':>10s}")
    log(f"{'first request, from zero':34s} {ms(cold['p50']):>10s} {ms(cold['p99']):>10s} "
        f"{ms(cold['max']):>10s}   ({cold['n']} cold starts; p99 of 10 = max)")
    log(f"{'  of which held (x-msv-held-ms)':34s} {ms(held['p50']):>10s} "
        f"{ms(held['p99']):>10s}")
    log(f"{'warm, same model (baseline)':34s} {ms(warm['p50']):>10s} {ms(warm['p99']):>10s}"
        f"   ({warm['n']} requests)")
    log(f"cold p50 / warm p50: {r['ratio_cold_p50_over_warm_p50']}x")
    f = r["failures"]
    log(f"failed requests: {f['total']} (cold {f['cold']}, warm {f['warm']}; target 0); "
        f"connect retries {r['connect_retries']}")
    if r["not_at_zero_before_request"]:
        log(f"not at zero before their request: {r['not_at_zero_before_request']}")
    log(f"idle -> zero (idleAfter {IDLE_AFTER_S:.0f} s), from the last request:")
    for x in r["idle_to_zero"]:
        log(f"  {x['name']}: status scaledToZero after {x['status_scaled_to_zero_s']} s, "
            f"last pod gone after {x['last_pod_gone_s']} s")
    log(f"  KEDA's activity trigger reads the request rate over {ACTIVITY_WINDOW}: requests "
        f"Prometheus scraped keep a variant busy up to that window beyond idleAfter; requests "
        f"made before a new pod's first scrape are never seen in the rate")

if __name__ == "__main__":
    sys.exit(main())
