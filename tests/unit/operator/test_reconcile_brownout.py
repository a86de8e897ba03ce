"""Whole reconcile passes with a brownout: samples come through the analyzer interface
(``rollout.Analyzer``), the HPAs and Deployments from the observed objects, and the pass
applies the brownout's weights to the HTTPRoute and the running pods' ``serving`` label, writes
``status.brownout`` and posts its Events; an unreadable Prometheus holds everything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fakekube import FakeKube
from msv_operator import brownout as bo
from msv_operator import builders, cache, kube, reconcile, rollout, spec
from msv_operator.config import OperatorConfig

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "u-1"


def api() -> FakeKube:
    """The API as the pass finds it: one running int8 pod, started from its template
    (spec.traffic gives int8 nothing), the route as the gateway's implementation left it
    (accepted by its parent) and that parent programmed; nothing is pruned."""
    pod = {"kind": "Pod", "metadata": {"name": "sentiment-int8-1", "labels": {
               builders.LABEL_MODELSERVICE: "sentiment", builders.LABEL_VARIANT: "int8",
               builders.LABEL_SERVING: "false"}},
           "spec": {"nodeName": "node-1"},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "sentiment", "namespace": "ml",
                          "labels": {builders.LABEL_MODELSERVICE: "sentiment"},
                          "creationTimestamp": "2026-01-01T11:00:00Z"},
             "status": {"parents": [{"parentRef": {"name": "gw"},
                                     "controllerName": "example.com/gateway",
                                     "conditions": [{"type": "Accepted", "status": "True"}]}]}}
    gateway = {"kind": "Gateway", "metadata": {"name": "gw", "namespace": "ml"},
               "status": {"conditions": [{"type": "Programmed", "status": "True"}]}}
    return FakeKube(pod, route, gateway, may_delete=False)

class Caps:
    def get(self) -> kube.CapabilityAnswer:
        return kube.CapabilityAnswer(service_monitor=False, gateway_api=True)


class ScriptedAnalyzer:
    """Hands out the next scripted sample, recording the window each was asked for."""

    def __init__(self) -> None:
        self.next = rollout.Sample()
        self.windows: list[float] = []

    def sample(self, namespace: str, model: str, variants: Sequence[str],
               window_seconds: float, step_seconds: float | None) -> rollout.Sample:
        self.windows.append(window_seconds)
        return self.next


BROWNOUT = {"variant": "int8", "latencyObjectiveMs": 100, "maxShare": 40, "engageAfter": "30s",
            "releaseAfter": "30s", "interval": "10s", "window": "20s"}


def modelservice(status: Mapping[str, Any],
                 brownout: Mapping[str, Any] = BROWNOUT) -> dict[str, Any]:
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": {
                "model": {"uri": "s3://m/x", "framework": "transformers",
                          "task": "text-classification"},
                "variants": [{"name": "baseline"},
                             {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}],
                "traffic": [{"variant": "baseline", "weight": 100}],
                "gateway": {"parentRefs": [{"name": "gw"}]},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1,
                                "brownout": dict(brownout)}},
            "status": dict(status)}


def owned(kind: str, variant: str, spec: dict[str, Any], st: dict[str, Any]) -> dict[str, Any]:
    api = "apps/v1" if kind == "Deployment" else "autoscaling/v2"
    return {"apiVersion": api, "kind": kind,
            "metadata": {"name": f"sentiment-{variant}", "namespace": "ml",
                         "labels": {builders.LABEL_MODELSERVICE: "sentiment",
                                    builders.LABEL_VARIANT: variant},
                         "ownerReferences": [{"kind": "ModelService", "uid": UID,
                                              "controller": True}]},
            "spec": spec, "status": st}


def cluster(int8_ready: int = 1, pods: Sequence[Mapping[str, Any]] = ()) -> reconcile.Observed:
    dep = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    int8 = {**dep, "readyReplicas": int8_ready, "availableReplicas": int8_ready}
    hpa_status = {"currentReplicas": 1, "desiredReplicas": 1}
    return reconcile.Observed(objects=[
        owned("Deployment", "baseline", {"replicas": 1}, dep),
        owned("Deployment", "int8", {"replicas": 1}, int8),
        owned("HorizontalPodAutoscaler", "baseline", {"minReplicas": 1, "maxReplicas": 1},
              hpa_status),
        owned("HorizontalPodAutoscaler", "int8", {"minReplicas": 1, "maxReplicas": 1},
              hpa_status),
    ], pods=[cache.plain(p) for p in pods])


class Operator:
    """Runs passes at chosen times, carrying the written status like the API server does."""

    def __init__(self, brownout: Mapping[str, Any] = BROWNOUT) -> None:
        self.brownout = brownout
        self.kube = api()
        self.analyzer = ScriptedAnalyzer()
        self.ctx = reconcile.Context(config=OperatorConfig(), kube=self.kube,
                                     capabilities=Caps(), analyzer=self.analyzer)  # type: ignore[arg-type]
        self.status: dict[str, Any] = {}
        self.events: list[str] = []
        self.messages: list[str] = []

    def at(self, seconds: float, p95_ms: float | None = None, error: str | None = None,
           observed: reconcile.Observed | None = None) -> reconcile.Result:
        self.analyzer.next = rollout.Sample(error=error) if error else rollout.Sample(
            variants={"baseline": rollout.VariantMetrics(p95_ms=p95_ms, rps=50.0)})
        now = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.kube.applied.clear()
        observed = observed or cluster(pods=list(self.kube.pods.values()))
        result = reconcile.reconcile(self.ctx, modelservice(self.status, self.brownout),
                                     observed, now)
        if result.status_written:
            self.status = self.kube.status
        self.events += [reason for _, reason, _ in result.events]
        self.messages += [message for _, _, message in result.events]
        return result

    def route_weights(self) -> dict[str, int]:
        route = self.kube.applied.get(("HTTPRoute", "sentiment"))
        assert route is not None, "the HTTPRoute was not re-applied"
        return {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}

    def serving(self, variant: str) -> str:
        """The serving label of the variant's running pod (its Deployment's template keeps
        spec.traffic's: a brownout restarts no pod)."""
        dep = self.kube.applied.get(("Deployment", f"sentiment-{variant}"))
        if dep is not None:
            assert dep["spec"]["template"]["metadata"]["labels"][builders.LABEL_SERVING] == \
                "false"
        return str(self.kube.pods[f"sentiment-{variant}-1"]["metadata"]["labels"][
            builders.LABEL_SERVING])


def test_a_pass_applies_the_brownout_weights_and_takes_them_back() -> None:
    op = Operator()
    op.at(0, p95_ms=300)
    assert op.status["brownout"]["reason"] == bo.OVERLOADED
    assert op.status["traffic"] == "baseline=100,int8=0"
    assert op.analyzer.windows == [20.0]  # the brownout's window and interval apply
    op.at(5, p95_ms=300)
    assert len(op.analyzer.windows) == 1  # not due: the state holds
    result = op.at(30, p95_ms=300)
    assert op.status["brownout"]["phase"] == bo.ENGAGED
    assert op.status["traffic"] == "baseline=60,int8=40"
    assert op.route_weights() == {"sentiment-baseline": 60, "sentiment-int8": 40}
    assert op.serving("int8") == "true"
    assert op.events == ["BrownoutEngaged"] and result.requeue_after == 10
    assert op.status["replicaCounts"] == "baseline=1/1,int8=1/1"
    assert [v["maxReplicas"] for v in op.status["variants"]] == [1, 1]

    op.at(40, error="Prometheus at x is unreachable")
    blind = next(c for c in op.status["conditions"] if c["type"] == "AutoscalingBlind")
    assert (blind["status"], blind["reason"]) == ("True", "PrometheusUnavailable")
    assert op.status["traffic"] == "baseline=60,int8=40"  # held, not moved blind

    op.at(50, p95_ms=40)
    op.at(80, p95_ms=40)
    assert op.status["brownout"]["phase"] == bo.INACTIVE
    assert op.status["traffic"] == "baseline=100,int8=0"
    # listed at weight 0: the route's backends stay the same, only the weights move
    assert op.route_weights() == {"sentiment-baseline": 100, "sentiment-int8": 0}
    assert op.serving("int8") == "false"
    blind = next(c for c in op.status["conditions"] if c["type"] == "AutoscalingBlind")
    assert blind["status"] == "False"
    assert op.events == ["BrownoutEngaged", "BrownoutMetricsUnavailable", "BrownoutReleased"]


def test_a_variant_without_ready_pods_is_reported_never_served() -> None:
    op = Operator()
    for t in (0, 30, 60):
        op.at(t, p95_ms=300, observed=cluster(int8_ready=0))
    assert op.status["brownout"]["reason"] == bo.VARIANT_NOT_READY
    assert op.status["traffic"] == "baseline=100,int8=0"
    assert op.events == ["BrownoutUnavailable"]
    op.at(70, p95_ms=300)
    assert op.status["traffic"] == "baseline=60,int8=40"


def test_without_prometheus_the_brownout_says_it_is_blind() -> None:
    op = Operator()
    op.ctx.analyzer = None
    op.at(0)
    assert op.status["brownout"]["reason"] == bo.METRICS_UNAVAILABLE
    assert "MSV_PROMETHEUS_URL" in op.status["brownout"]["metricsError"]
    blind = next(c for c in op.status["conditions"] if c["type"] == "AutoscalingBlind")
    assert blind["status"] == "True" and op.status["traffic"] == "baseline=100,int8=0"


def test_a_pass_chooses_the_variant_when_the_spec_leaves_it_to_the_operator() -> None:
    auto = {k: v for k, v in BROWNOUT.items() if k != "variant"}
    op = Operator({**auto, "candidates": ["int8"]})
    op.at(0, p95_ms=300)
    # no GPU fit here, so no Pareto marks: the documented fallback takes the first listed
    assert (op.status["brownout"]["variant"], op.status["brownout"]["chosenBy"]) == (
        "int8", bo.CHOSEN_BY_FALLBACK)
    op.at(30, p95_ms=300)
    assert op.status["brownout"]["phase"] == bo.ENGAGED
    assert op.route_weights() == {"sentiment-baseline": 60, "sentiment-int8": 40}
    assert op.events == ["BrownoutEngaged"]
    assert "int8 chosen by fallback" in op.messages[0]
    floor = Operator({**auto, "minAgreement": 0.9})
    floor.at(0, p95_ms=300)
    floor.at(30, p95_ms=300)  # agreement is not measured outside a rollout: never engaged
    assert (floor.status["brownout"]["phase"], floor.status["brownout"]["reason"]) == (
        bo.INACTIVE, bo.NO_ELIGIBLE_VARIANT)
    assert floor.status["traffic"] == "baseline=100,int8=0"
    assert floor.events == ["BrownoutUnavailable"]


def test_standings_follow_the_gpu_fit_and_this_pass_measurements() -> None:
    auto = {k: v for k, v in BROWNOUT.items() if k != "variant"}
    parsed = spec.parse_spec(modelservice({}, auto))
    assert reconcile.brownout_standings(spec.parse_spec(modelservice({})), {}, {}, None) is None
    found = reconcile.brownout_standings(parsed, {}, {"int8": {"p95Ms": 12.0}}, None)
    assert found is not None and found["int8"] == bo.Standing(p95_ms=12.0)
