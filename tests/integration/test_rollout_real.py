"""Progressive rollouts on real pods, judged by a real Prometheus on real traffic.

Everything is the product's own path: the operator (a real process, killed -9 in one test)
writes the Deployments, Services and ServiceMonitor; prometheus-operator turns the
ServiceMonitor into scrape configuration of the Prometheus running in the cluster; the stable
variant's model servers mirror a share of their requests to the candidate and export the
agreement; the operator queries Prometheus, moves the effective weights (the replica split
behind the stable Service) and promotes or rolls back. A client sends requests through the
stable Service during the whole rollout and must never see an error.

Cases (issue "rollout"): a good int8 candidate promoted through every step, with the operator
killed during step 2 and resuming there; a candidate that answers differently (a distilled
student that was never trained) rolled back by the agreement gate; a slower candidate (a
model 100x larger) rolled back by the latency gate; a candidate that cannot load rolled back
at once, the stable variant answering everything while it mirrors to nothing.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifests import MS_API, model, modelservice
from msv_operator import kube
from operator_harness import OperatorProcess, condition
from service_load import Load
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores, monitoring

pytestmark = [pytest.mark.slow, pytest.mark.torch]

SERVER = {"torchThreads": 1,
          "resources": {"requests": {"cpu": "50m", "memory": "300Mi"},
                        "limits": {"memory": "1500Mi"}}}
# Short steps and analyses so a whole rollout fits in a test; the gates are the real ones.
TIMING = {"stepDuration": "20s", "minRequests": 10}
# The in-cluster Prometheus; outside a rollout, variants are measured every 5 s.
OPERATOR_ARGS = ("--prometheus-url", monitoring.PROMETHEUS_URL, "--measure-seconds", "5")
ANALYSIS = {"interval": "5s", "window": "30s", "maxErrorRate": 0.01, "mirrorPercent": 50,
            "failureLimit": 1}


@pytest.fixture(scope="module")
def stores(cluster: lc.Cluster) -> None:
    modelstores.deploy(cluster)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained classifier (the stable model), an untrained student of the same shape, a
    100x larger trained-free classifier (slow), and a directory that cannot load."""
    from modelfactory import make_text_classifier, make_trained_text_classifier

    root = tmp_path_factory.mktemp("rollout-models")
    out = {name: root / name for name in ("trained", "student", "large", "broken")}
    accuracy = make_trained_text_classifier(out["trained"])
    assert accuracy > 0.9, accuracy
    make_text_classifier(out["student"], seed=7)
    make_text_classifier(out["large"], hidden_size=384, num_layers=6, num_heads=6,
                         intermediate_size=1536)
    out["broken"].mkdir()
    for f in out["trained"].iterdir():
        (out["broken"] / f.name).write_bytes(f.read_bytes())
    (out["broken"] / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return out


@pytest.fixture
def operator(crd: None, real_namespace: str) -> Iterator[OperatorProcess]:
    op = OperatorProcess(real_namespace, *OPERATOR_ARGS, name="rollout-operator").wait_up()
    yield op
    op.close()


def publish(models: dict[str, Path], which: str, ns: str) -> dict[str, str]:
    uri, digest = modelstores.publish_http(models[which], f"{ns}-{which}")
    return {"uri": uri, "sha256": digest}


def rolling_out(name: str, ns: str, stable: dict[str, str], candidate: dict[str, Any],
                analysis: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    """A ModelService serving `stable` at 100% with `candidate` (a variant) rolling out."""
    return modelservice(
        name, ns, model=model(**stable),
        server=SERVER, replicas=2, monitoring={"interval": "5s"},
        variants=[{"name": "baseline"}, candidate], traffic={"baseline": 100},
        rollout={"candidate": candidate["name"], "steps": steps, **TIMING,
                 "analysis": {**ANALYSIS, **analysis}})


def ms_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    return k.get(MS_API, "ModelService", ns, name) or {}


def rollout_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    return dict((ms_of(k, ns, name).get("status") or {}).get("rollout") or {})


def phase_is(k: kube.Kube, ns: str, name: str, *phases: str) -> dict[str, Any] | None:
    r = rollout_of(k, ns, name)
    return r if r.get("phase") in phases else None


def stable_ip(k: kube.Kube, ns: str, name: str) -> str:
    """The stable Service's cluster IP once it routes to a ready pod."""
    svc = wait_for(f"Service {ns}/{name}", lambda: k.get("v1", "Service", ns, name),
                   timeout=60)
    ip: str = svc["spec"]["clusterIP"]

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{ip}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(f"Service {ns}/{name} to answer", answers, timeout=180, interval=1)
    return ip


def event_reasons(k: kube.Kube, ns: str, name: str) -> list[str]:
    events = [e for e in k.list("v1", "Event", ns)
              if (e.get("involvedObject") or {}).get("name") == name]
    events.sort(key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")
    return [str(e.get("reason")) for e in events]


def gate(rollout: dict[str, Any], name: str) -> dict[str, Any]:
    gates = (rollout.get("lastAnalysis") or {}).get("gates") or []
    found = [g for g in gates if g.get("name") == name]
    assert found, f"no gate {name!r} in {rollout.get('lastAnalysis')}"
    return dict(found[0])


def test_a_good_int8_candidate_is_promoted_step_by_step_across_an_operator_kill(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    ns, name = real_namespace, "good"
    k.apply(rolling_out(
        name, ns, publish(models, "trained", ns),
        {"name": "int8", "optimization": {"quantization": "dynamic-int8"}},
        # On this tiny model int8 is slower than fp32 (p95 ratio 1.9 measured on a quiet
        # machine), and at step 2 a second int8 pod starts on the same two cores while one
        # takes all the traffic: the gate is set where a good candidate passes on a busy
        # machine too (the latency gate's rollback has its own test, a 100x larger model).
        # The agreement gate decides on a 95% Wilson bound: a candidate agreeing on every
        # request needs 73 comparisons in one window to clear 0.95, so the window is 60 s
        # and every stable request is mirrored (about 1.2 stable requests/s suffice).
        {"maxLatencyRatio": 6.0, "minAgreement": 0.95, "window": "60s",
         "mirrorPercent": 100}, steps=[50, 100]))
    ip = stable_ip(k, ns, name)
    traffic_at: dict[int, str] = {}
    with Load(ip, name) as load:
        first = wait_for("step 1", lambda: phase_is(k, ns, name, "Progressing")
                         if rollout_of(k, ns, name).get("step") == 1 else None, timeout=300)
        traffic_at[1] = str(ms_of(k, ns, name)["status"]["traffic"])
        second = wait_for("step 2", lambda: rollout_of(k, ns, name)
                          if rollout_of(k, ns, name).get("step") == 2 else None, timeout=300)
        traffic_at[2] = str(ms_of(k, ns, name)["status"]["traffic"])
        # the analysis that let step 1 pass measured real agreement on mirrored requests
        agreement = gate(second, "agreement")
        assert agreement["passed"] and agreement["value"] >= 0.95, agreement
        assert agreement["lowerBound"] >= 0.95 and agreement["samples"] >= 73, agreement

        # kill -9 during step 2; a new operator resumes at step 2 from the status alone.
        # The operator posts a step's Event after the status that shows the step: once it is
        # there, the Events below tell whether the restart repeated a step.
        wait_for("the step 2 Event", lambda: event_reasons(k, ns, name).count(
            "RolloutStep") == 2, timeout=60)
        operator.kill()
        after_kill = rollout_of(k, ns, name)
        assert after_kill["step"] == 2
        restarted = OperatorProcess(ns, *OPERATOR_ARGS, name="rollout-operator-2").wait_up()
        try:
            resumed = wait_for("a new analysis by the new operator", lambda: (
                lambda r: r if (r.get("lastAnalysis") or {}).get("time")
                != (after_kill.get("lastAnalysis") or {}).get("time") else None)(
                rollout_of(k, ns, name)), timeout=120)
            assert resumed["step"] == 2 and resumed["startedAt"] == first["startedAt"]
            try:
                promoted = wait_for("Promoted", lambda: phase_is(k, ns, name, "Promoted",
                                                                 "RolledBack"), timeout=300)
            except AssertionError as e:
                raise AssertionError(f"{e}; rollout: {rollout_of(k, ns, name)}; operator log: "
                                     f"{restarted.tail()}") from None
            assert promoted["phase"] == "Promoted", (promoted, restarted.tail())
            # requests keep flowing for a moment after the promotion; the operator posts the
            # Event after the status it reports, so it runs until the Event is there
            wait_for("int8 answering", lambda: load.variants["int8"] > 0, timeout=60)
            wait_for("the RolloutPromoted Event",
                     lambda: "RolloutPromoted" in event_reasons(k, ns, name), timeout=60)
        finally:
            restarted.close()
    assert traffic_at == {1: "baseline=50,int8=50", 2: "baseline=0,int8=100"}
    assert ms_of(k, ns, name)["status"]["traffic"] == "baseline=0,int8=100"
    assert load.failures == {}, f"the client saw errors during the rollout: {load.statuses}"
    assert load.variants["baseline"] > 0 and load.variants["int8"] > 0, load.variants
    for g in ("latency", "errorRate", "agreement"):
        assert gate(promoted, g)["passed"], promoted["lastAnalysis"]
    reasons = event_reasons(k, ns, name)
    assert reasons.count("RolloutStep") == 2, reasons  # the restart did not repeat a step
    assert "RolloutPromoted" in reasons
    c = condition(ms_of(k, ns, name), "Rollout")
    assert (c["status"], c["reason"]) == ("True", "Promoted"), c
    # the spec (the user's Git) is untouched
    assert ms_of(k, ns, name)["spec"]["traffic"] == [{"variant": "baseline", "weight": 100}]
    # mirroring on and off, both steps and the promotion restarted no pod: each variant's
    # Deployment still has its first and only ReplicaSet
    for variant in ("baseline", "int8"):
        sets = k.list("apps/v1", "ReplicaSet", ns, f"serving.modelservice.dev/modelservice="
                      f"{name},serving.modelservice.dev/variant={variant}")
        assert len(sets) == 1, (variant, [s_["metadata"]["name"] for s_ in sets])
    # measured per-variant status (the Pareto view): from Prometheus, and CPU and memory
    # per pod from the real metrics-server (metrics.k8s.io) reading the real kubelet
    variants = {v["name"]: v for v in ms_of(k, ns, name)["status"]["variants"]}
    assert variants["int8"].get("parameters") and variants["baseline"].get("parameters")
    assert variants["int8"].get("p95Ms") is not None, variants

    def usage() -> dict[str, Any] | None:
        vs = {v["name"]: v for v in ms_of(k, ns, name)["status"]["variants"]}
        return vs if all(v.get("memoryBytes", 0) > 20 * 2**20 and "cpuMillicores" in v
                         for v in vs.values()) else None
    wait_for("CPU and memory per pod from metrics.k8s.io", usage, timeout=120, interval=1)


def rolled_back_by(k: kube.Kube, models: dict[str, Path], ns: str, name: str, candidate: str,
                   model: str, analysis: dict[str, float], gate_name: str) -> dict[str, Any]:
    """Roll ``candidate`` (serving ``models[model]``) out under load; expect RolledBack by
    ``gate_name`` with no failed request, traffic back on the baseline and the condition
    naming the gate. Returns the gate's record."""
    k.apply(rolling_out(name, ns, publish(models, "trained", ns),
                        {"name": candidate, "model": publish(models, model, ns)},
                        analysis, steps=[50, 100]))
    ip = stable_ip(k, ns, name)
    with Load(ip, name) as load:
        back = wait_for("RolledBack", lambda: phase_is(k, ns, name, "RolledBack", "Promoted"),
                        timeout=420)
        assert back["phase"] == "RolledBack", back
        wait_for("traffic back on the baseline", lambda: ms_of(k, ns, name)["status"][
            "traffic"] == f"baseline=100,{candidate}=0", timeout=60)
    c = condition(ms_of(k, ns, name), "Rollout")
    assert c["status"] == "False" and gate_name in c["message"], c
    assert load.failures == {}, load.statuses
    wait_for("the RolloutRolledBack Event",
             lambda: "RolloutRolledBack" in event_reasons(k, ns, name), timeout=60)
    # nothing the user created was changed or deleted
    ms = ms_of(k, ns, name)
    assert [v["name"] for v in ms["spec"]["variants"]] == ["baseline", candidate]
    assert k.get("apps/v1", "Deployment", ns, f"{name}-{candidate}") is not None
    return gate(back, gate_name)


def test_a_candidate_that_answers_differently_is_rolled_back_by_the_agreement_gate(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    agreement = rolled_back_by(k, models, real_namespace, "student", "student", "student",
                               {"maxLatencyRatio": 3.0, "minAgreement": 0.9}, "agreement")
    assert not agreement["passed"] and agreement["value"] < 0.9, agreement
    assert agreement["threshold"] == 0.9


def test_a_slower_candidate_is_rolled_back_by_the_latency_gate(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    latency = rolled_back_by(k, models, real_namespace, "slow", "large", "large",
                             {"maxLatencyRatio": 1.5, "minAgreement": 0.0}, "latency")
    assert not latency["passed"] and latency["value"] > 1.5, latency


def test_a_candidate_that_cannot_load_is_rolled_back_at_once_and_nothing_fails(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    ns, name = real_namespace, "broken"
    k.apply(rolling_out(
        name, ns, publish(models, "trained", ns),
        {"name": "next", "model": publish(models, "broken", ns)},
        {"maxLatencyRatio": 3.0, "minAgreement": 0.9}, steps=[50, 100]))
    ip = stable_ip(k, ns, name)
    with Load(ip, name) as load:
        back = wait_for("RolledBack", lambda: phase_is(k, ns, name, "RolledBack", "Promoted",
                                                       "Progressing"), timeout=300)
    assert back["phase"] == "RolledBack", back
    assert back.get("reason") == "CandidateFailed", back
    assert "no-such-architecture" in back.get("message", ""), back
    assert not back.get("lastAnalysis"), "no analysis was needed to roll back"
    assert ms_of(k, ns, name)["status"]["traffic"] == "baseline=100,next=0"
    assert load.failures == {}, load.statuses
    assert load.variants.keys() == {"baseline"}, load.variants


def test_costs_and_pareto_marks_follow_the_variants_real_measurements(
        cluster: lc.Cluster, stores: None, models: dict[str, Path], real_namespace: str,
        operator: OperatorProcess, k: kube.Kube) -> None:
    """CPU pods priced per vCPU-hour (the default list price), and each variant's mark on the
    frontier over its measured p95, cost per 1,000 requests and agreement. A long first step
    holds the rollout at 50/50 with mirroring, so the baseline (the reference: agreement 1)
    and the int8 candidate are both measured; a weight-0 variant serves nothing and stays
    ``unmeasured``, neither better nor worse."""
    from msv_operator import kubectl_msv, pareto, prices

    ns, name = real_namespace, "costs"
    int8 = {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}
    k.apply(modelservice(
        name, ns, model=model(**publish(models, "trained", ns)), server=SERVER, replicas=1,
        monitoring={"interval": "5s"},
        variants=[{"name": "baseline"}, int8, {**int8, "name": "spare"}],
        traffic={"baseline": 100, "spare": 0},
        rollout={"candidate": "int8", "steps": [50, 100], "stepDuration": "30m",
                 "minRequests": 10, "analysis": {**ANALYSIS, "maxLatencyRatio": 6.0}}))
    ip = stable_ip(k, ns, name)

    def marked() -> dict[str, dict[str, Any]] | None:
        vs = {v["name"]: v for v in (ms_of(k, ns, name).get("status") or {}).get("variants")
              or []}
        done = all((vs.get(n) or {}).get("pareto") in (pareto.FRONTIER, pareto.DOMINATED)
                   for n in ("baseline", "int8"))
        return vs if done else None
    with Load(ip, name) as load:
        wait_for("step 1", lambda: rollout_of(k, ns, name).get("step") == 1 or None,
                 timeout=300)
        variants = wait_for("both serving variants measured and marked", marked, timeout=240,
                            interval=1)
        shown = ms_of(k, ns, name)
    assert load.failures == {}, load.statuses
    per_pod = prices.DEFAULT_PRICES.of_cpu(0.05)  # SERVER requests 50m
    for v in variants.values():
        assert v["placement"] == {"cpu": "50m", "pricePerHour": per_pod}, v
        assert v["costPerHour"] == pytest.approx(v["replicas"] * per_pod, abs=1e-6), v
    for n in ("baseline", "int8"):
        v = variants[n]
        assert v["p95Ms"] > 0 and v["rps"] > 0, v
        assert v["costPer1kRequests"] == pytest.approx(
            v["costPerHour"] / (v["rps"] * 3600) * 1000, rel=0.02), v
    assert 0 <= variants["int8"]["agreement"] <= 1
    # the marks are the frontier's definition applied to the numbers the status reports
    points = [pareto.Point(n, v.get("p95Ms"), v.get("costPer1kRequests"),
                           1.0 if n == "baseline" else v.get("agreement"))
              for n, v in variants.items()]
    for n, mark in pareto.frontier(points).items():
        assert (variants[n]["pareto"], variants[n].get("dominatedBy") or []) == (
            mark.state, list(mark.dominated_by)), (n, variants[n])
    assert variants["spare"]["pareto"] == pareto.UNMEASURED, variants["spare"]
    assert "costPer1kRequests" not in variants["spare"]
    # kubectl msv get shows the costs and the marks (printed: the README's example)
    text = kubectl_msv.render(shown)
    print(text)
    lines = text.splitlines()
    at = next(i for i, t in enumerate(lines) if t.startswith("Placement and cost"))
    rows: dict[str, str] = {}
    for line in lines[at + 2:]:
        if not line.startswith("  "):
            break  # the table ends where the next section starts
        rows[line.split()[0]] = line
    for n in ("baseline", "int8", "spare"):
        assert variants[n]["pareto"] in rows[n], (n, text)
