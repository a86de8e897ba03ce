"""Scale to zero on the real node (docs/scale-to-zero.md), as users install it.

The chart is installed with ``scaleToZero.enabled``: the operator and two activator replicas
run as pods from the locally built operator image; KEDA (operator and external-metrics
adapter, built from its Go module) is the local cluster's; Prometheus is the cluster's. The
model pods really start, so a held request waits for a real model load.

Cases (issue "cold start"): a ModelService at zero holds the first requests of a client that
keeps calling and answers all of them (0 failures, the held ones marked ``x-msv-held-ms``),
then goes back to zero after its idle period, ``Ready`` all along; a rollout's candidate at
zero is given a ready pod before the rollout sends it any traffic; with the activator down
the ModelService keeps serving at its size and says scaling is blind.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helmchart
import pytest
from manifests import MS_API, model, modelservice
from msv_operator import kube
from operator_harness import api, condition
from realpods import SERVER, cluster_ip, stores  # noqa: F401 (stores: the fixture)
from service_load import Load
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores
from msv_contract import scaletozero as stz

pytestmark = [pytest.mark.slow, pytest.mark.torch]

IDLE = "30s"
"""The shortest idle period the API takes: the test waits for it twice."""
AUTOSCALING = {"minReplicas": 0, "maxReplicas": 2, "idleAfter": IDLE, "targetInFlight": 4}


@pytest.fixture(scope="module")
def keda(cluster: lc.Cluster) -> None:
    """KEDA answering in the cluster (the local cluster installs it when it is built)."""
    helmchart.wait_for_keda(cluster)


@pytest.fixture(scope="module")
def release(crd: None, keda: None, cluster: lc.Cluster, module_real_namespace: str
            ) -> Iterator[tuple[str, str]]:
    """The chart in a namespace of its own, watching the test namespace, with scale to zero
    on (``helmchart.install_scale_to_zero``): (its namespace, the release's name)."""
    name = f"msv-zero-{uuid.uuid4().hex[:6]}"
    helmchart.install_scale_to_zero(cluster, name, watched=module_real_namespace)
    yield name, name
    helmchart.uninstall(cluster, name)


@pytest.fixture(scope="module")
def k(cluster: lc.Cluster) -> Iterator[kube.Kube]:
    client = api()
    yield client
    client.close()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelfactory import make_text_classifier

    path = tmp_path_factory.mktemp("zero-models") / "classifier"
    make_text_classifier(path)
    return path


def published(classifier: Path, ns: str) -> dict[str, Any]:
    uri, digest = modelstores.publish_http(classifier, f"{ns}-zero")
    return model(uri=uri, sha256=digest)


def ms_of(k: kube.Kube, ns: str, name: str) -> dict[str, Any]:
    return k.get(MS_API, "ModelService", ns, name) or {}


def variant_status(ms: dict[str, Any], variant: str) -> dict[str, Any]:
    for v in (ms.get("status") or {}).get("variants") or []:
        if v.get("name") == variant:
            return dict(v)
    return {}


def effective_weights(ms: dict[str, Any]) -> dict[str, int]:
    """``status.traffic`` (``baseline=50,int8=50``): the weights the operator applies."""
    out = {}
    for part in str((ms.get("status") or {}).get("traffic") or "").split(","):
        variant, _, weight = part.partition("=")
        if weight:
            out[variant] = int(weight)
    return out


def ready_pods(k: kube.Kube, ns: str, name: str, variant: str) -> int:
    dep = k.get("apps/v1", "Deployment", ns, f"{name}-{variant}") or {}
    return int((dep.get("status") or {}).get("readyReplicas") or 0)


def wait_at_zero(k: kube.Kube, ns: str, name: str, variant: str, timeout: float) -> dict[str, Any]:
    """The ModelService once ``variant`` is at zero by its idle policy: no pod, shown as
    ``scaledToZero`` in status (and never a failure: Ready stays True when every serving
    variant is at zero)."""
    def at_zero() -> dict[str, Any] | None:
        ms = ms_of(k, ns, name)
        v = variant_status(ms, variant)
        pods = k.list("v1", "Pod", ns, f"serving.modelservice.dev/modelservice={name},"
                                        f"serving.modelservice.dev/variant={variant}")
        return ms if v.get("scaledToZero") and v.get("replicas") == 0 and not pods else None
    return wait_for(f"{name}/{variant} scaled to zero", at_zero, timeout=timeout, interval=2)


@pytest.fixture(scope="module")
def idle(release: tuple[str, str], stores: None, classifier: Path,  # noqa: F811
         module_real_namespace: str, k: kube.Kube) -> str:
    """ModelService ``idle``: one variant that may go to zero, scraped every 5 s."""
    ns = module_real_namespace
    k.apply(modelservice("idle", ns, model=published(classifier, ns), server=SERVER,
                         autoscaling=AUTOSCALING, monitoring={"interval": "5s"}))
    return "idle"


@pytest.fixture(scope="module")
def rolled(release: tuple[str, str], stores: None, classifier: Path,  # noqa: F811
           module_real_namespace: str, k: kube.Kube) -> str:
    """ModelService ``rolled``: a baseline that keeps a pod and an int8 variant with no
    traffic that may go to zero. Applied with ``idle`` so both start together."""
    ns = module_real_namespace
    k.apply(modelservice(
        "rolled", ns, model=published(classifier, ns), server=SERVER,
        autoscaling={**AUTOSCALING, "minReplicas": 1}, monitoring={"interval": "5s"},
        variants=[{"name": "baseline"},
                  {"name": "int8", "optimization": {"quantization": "dynamic-int8"},
                   "autoscaling": {"minReplicas": 0, "idleAfter": IDLE}}],
        traffic={"baseline": 100}))
    return "rolled"


def activator_slice(k: kube.Kube, ns: str, service: str) -> bool:
    """Whether Service ``service`` has the operator's EndpointSlice to the activator."""
    slices = k.list("discovery.k8s.io/v1", "EndpointSlice", ns,
                    f"kubernetes.io/service-name={service}")
    return any(s["metadata"]["name"] == f"{service}{stz.SLICE_SUFFIX}" for s in slices)


def activator_pods(k: kube.Kube, release: tuple[str, str]) -> list[dict[str, Any]]:
    system, rel = release
    return k.list("v1", "Pod", system, f"app.kubernetes.io/instance={rel},"
                                       "app.kubernetes.io/name=modelservice-operator-activator")


def activator_requests(k: kube.Kube, release: tuple[str, str]) -> dict[str, float]:
    """``msv_activator_requests_total`` by result, summed over the activator's pods."""
    total: dict[str, float] = {}
    pods = activator_pods(k, release)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        with urllib.request.urlopen(f"http://{ip}:9091/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(stz.REQUESTS + "_total{"):
                    result = line.split('result="')[1].split('"')[0]
                    total[result] = total.get(result, 0) + float(line.rsplit(" ", 1)[1])
    return total


def test_a_modelservice_at_zero_holds_the_first_requests_and_goes_back_to_zero_when_idle(
        release: tuple[str, str], idle: str, rolled: str, module_real_namespace: str,
        k: kube.Kube) -> None:
    ns, name = module_real_namespace, idle
    ms = wait_at_zero(k, ns, name, "baseline", timeout=420)
    ready = condition(ms, "Ready")
    assert ready.get("status") == "True" and ready.get("reason") == stz.REASON_SCALED_TO_ZERO, \
        ready
    so = k.get(stz.KEDA_API, stz.SCALED_OBJECT, ns, f"{name}-baseline")
    assert so and so["spec"]["minReplicaCount"] == 0, so
    assert not k.get("autoscaling/v2", "HorizontalPodAutoscaler", ns, f"{name}-baseline"), \
        "KEDA's HPA replaces the operator's own"
    assert activator_slice(k, ns, name), "the stable Service's traffic goes to the activator"

    ip = k.get("v1", "Service", ns, name)["spec"]["clusterIP"]
    # A client that keeps calling, from the moment the ModelService is at zero: the first
    # requests are held while KEDA starts a pod and the model loads, then all are answered.
    with Load(ip, name, clients=2, pause=0.2, timeout=150) as load:
        wait_for("a pod of idle to answer after the held ones", lambda: load.answered >= 20,
                 timeout=240, interval=1)
    assert load.failures == {}, (load.failures, load.errors)
    assert load.held_ms and max(load.held_ms) > 0, load.held_ms
    print(f"scale from zero: {len(load.held_ms)} held requests, longest held "
          f"{max(load.held_ms):.0f} ms; {load.answered} answered")
    ms = ms_of(k, ns, name)
    assert not variant_status(ms, "baseline").get("scaledToZero"), ms.get("status")

    # Idle again: back to zero after idleAfter (KEDA's cooldown) once the request rate over
    # the last minute is 0; Ready (ScaledToZero) the whole time it is at zero.
    ms = wait_at_zero(k, ns, name, "baseline", timeout=300)
    assert condition(ms, "Ready").get("reason") == stz.REASON_SCALED_TO_ZERO
    assert activator_slice(k, ns, name), "the stable Service's traffic goes to the activator"

    # The activator's metrics, summed over its replicas: the held requests were forwarded,
    # none timed out.
    total = activator_requests(k, release)
    assert total.get("forwarded", 0) >= len(load.held_ms), total
    assert total.get("timeout", 0) == 0 and total.get("full", 0) == 0, total


def test_a_candidate_at_zero_gets_a_ready_pod_before_the_rollout_sends_it_traffic(
        rolled: str, module_real_namespace: str, k: kube.Kube) -> None:
    ns, name = module_real_namespace, rolled
    wait_at_zero(k, ns, name, "int8", timeout=300)
    # ... and its Deployment says so too (the samples below read its ready pods there)
    wait_for("no ready int8 pod in its Deployment's status",
             lambda: ready_pods(k, ns, name, "int8") == 0, timeout=60, interval=1)
    assert ready_pods(k, ns, name, "baseline") >= 1
    ms = ms_of(k, ns, name)
    ms["spec"]["rollout"] = {"candidate": "int8", "steps": [50, 100], "stepDuration": "20s",
                             "minRequests": 1}
    k.apply({"apiVersion": MS_API, "kind": "ModelService",
             "metadata": {"name": name, "namespace": ns}, "spec": ms["spec"]})

    # Watch (every 0.5 s: the candidate's pod takes seconds to start and load its model) until
    # the rollout gives the candidate traffic: at that moment (and at every sample before it
    # with a weight) the candidate has a ready pod.
    seen: list[tuple[str, int, int]] = []

    def sent_traffic() -> bool:
        ms = ms_of(k, ns, name)
        rollout = (ms.get("status") or {}).get("rollout") or {}
        weight = effective_weights(ms).get("int8", 0)
        pods = ready_pods(k, ns, name, "int8")
        seen.append((str(rollout.get("phase")), weight, pods))
        if weight > 0 and pods < 1:
            raise RuntimeError(f"traffic sent to int8 with no ready pod: {seen[-5:]}")
        return weight > 0
    wait_for("the rollout to send int8 traffic", sent_traffic, timeout=300, interval=0.5)
    changes = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]
    print(f"rollout of a candidate at zero: (phase, int8 weight, int8 ready pods) {changes}")
    # The candidate was at zero when the rollout began ...
    assert seen[0][1:] == (0, 0), changes
    # ... and the rollout held it without traffic, Pending, while it had no ready pod, until
    # the sample that saw its first weight (the last one).
    assert ("Pending", 0, 0) in seen[:-1], changes
    so = k.get(stz.KEDA_API, stz.SCALED_OBJECT, ns, f"{name}-int8")
    assert so and so["spec"]["minReplicaCount"] == 1, "held at one pod during the rollout"


def test_with_the_activator_down_a_modelservice_keeps_serving_and_says_scaling_is_blind(
        release: tuple[str, str], idle: str, module_real_namespace: str, k: kube.Kube,
        cluster: lc.Cluster) -> None:
    system, rel = release
    ns, name = module_real_namespace, idle
    activator = f"{rel}-modelservice-operator-activator"
    assert k.get("apps/v1", "Deployment", system, activator), activator
    cluster.kubectl_run("-n", system, "scale", f"deployment/{activator}", "--replicas=0")
    try:
        def names_the_activator(c: dict[str, Any]) -> bool:
            # KEDA's ScaledObject may report its failing push trigger first (TriggerError):
            # the condition says so at once, and names the activator once the operator sees
            # its endpoints empty
            return c.get("status") == "True" and c.get("reason") == \
                stz.REASON_SCALING_BLIND and "activator" in c.get("message", "")
        wait_for("AutoscalingBlind=True on idle, naming the activator",
                 lambda: condition(ms_of(k, ns, name), "AutoscalingBlind"),
                 until=names_the_activator, timeout=120, interval=1)
        # The variant is at zero and has traffic: the operator gives it one pod itself,
        # and the Service answers from it, not from the (absent) activator.
        wait_for("a pod of idle serving without the activator",
                 lambda: ready_pods(k, ns, name, "baseline") >= 1, timeout=240, interval=1)
        # ... and routed: the EndpointSlice controller and kube-proxy need a moment after the
        # pod is ready (until then the Service, whose activator slice is gone, refuses)
        ip = cluster_ip(k, ns, name)
        with Load(ip, name, clients=1, pause=0.1) as load:
            wait_for("answers without the activator", lambda: load.answered >= 10, timeout=120)
        assert load.failures == {}, (load.failures, load.errors)
        assert not load.held_ms, "nothing held: the activator is down"
    finally:
        cluster.kubectl_run("-n", system, "scale", f"deployment/{activator}", "--replicas=2")
    wait_for("AutoscalingBlind=False once the activator is back",
             lambda: condition(ms_of(k, ns, name), "AutoscalingBlind").get("status") != "True",
             timeout=180, interval=1)
