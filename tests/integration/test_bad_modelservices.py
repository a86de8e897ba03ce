"""40 bad ModelServices (tests/integration/bad_specs.py): each is refused at admission with a
message naming the field, or reported ``Stalled=True`` (reason ``InvalidSpec``) with a
message naming the field; the operator never crashes and keeps serving a good ModelService.

Two runs: with the real CRD (OpenAPI schema + CEL: most cases stop at admission), and on the
private control plane with a CRD whose validation is stripped, so that every case reaches
the operator and its own ``InvalidSpec`` path is exercised against the API server.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from bad_specs import BAD
from manifests import MS_API, modelservice
from msv_operator import kube
from operator_harness import CRD_FILE, OperatorProcess, RunningOperator, api, condition
from waiting import wait_for

from localcluster import cluster as lc

pytestmark = pytest.mark.slow

CRD_NAME = "modelservices.serving.modelservice.dev"


def field_named(field: str, message: str) -> bool:
    """Whether ``message`` names ``field`` (list indices and keys as the API server or the
    operator write them: ``spec.traffic[0].weight``, ``.spec.traffic[variant="a"].weight``)."""
    def norm(text: str) -> str:
        return re.sub(r"(?<=[A-Za-z0-9_])\[[^\]]*\]", "", text)
    return norm(field) in norm(message)


def stalled(k: kube.Kube, ns: str, name: str) -> dict[str, Any] | None:
    ms = k.get(MS_API, "ModelService", ns, name)
    c = condition(ms, "Stalled")
    if c.get("status") == "True" and (ms or {}).get("status", {}).get(
            "observedGeneration") == (ms or {}).get("metadata", {}).get("generation"):
        return c
    return None


def ready(k: kube.Kube, ns: str, name: str) -> bool:
    ms = k.get(MS_API, "ModelService", ns, name)
    return condition(ms, "Ready").get("status") == "True" and (ms or {}).get(
        "status", {}).get("observedGeneration") == (ms or {})["metadata"]["generation"]


def run_cases(k: kube.Kube, ns: str) -> dict[str, str]:
    """Apply every bad case; the outcome of each ("admission" or "stalled")."""
    outcomes: dict[str, str] = {}
    accepted: list[tuple[str, str]] = []
    for case, spec, field in BAD:
        try:
            k.apply(modelservice(f"bad-{case}", ns, **spec))
        except kube.Rejected as e:
            assert field_named(field, str(e)), f"{case}: refusal does not name {field}: {e}"
            outcomes[case] = "admission"
            continue
        accepted.append((case, field))
    for case, field in accepted:
        c = wait_for(f"bad-{case} Stalled", lambda n=f"bad-{case}": stalled(k, ns, n),
                     timeout=60)
        assert c["reason"] == "InvalidSpec", (case, c)
        assert field_named(field, c["message"]), f"{case}: {c['message']!r} misses {field}"
        assert not k.list("apps/v1", "Deployment", ns,
                          f"serving.modelservice.dev/modelservice=bad-{case}")
        outcomes[case] = "stalled"
    return outcomes


def test_bad_modelservices_are_refused_or_stalled_naming_the_field(
        operator: RunningOperator, k: kube.Kube, namespace: str) -> None:
    assert len(BAD) >= 30
    outcomes = run_cases(k, namespace)
    counts = {o: sum(1 for v in outcomes.values() if v == o) for o in ("admission", "stalled")}
    print(f"{len(BAD)} bad ModelServices: {counts}")
    assert counts["stalled"] >= 1, "some cases pass admission: the operator's path must run"
    # Each stalled case gets one Warning Event (Ready and Stalled turning for the same cause
    # are one Event), naming the field too.
    # (The Events follow the status that the cases waited for: polled.)
    expected = sorted(f"bad-{case}" for case, o in outcomes.items() if o == "stalled")

    def bad_events() -> list[dict[str, Any]]:
        return [e for e in k.list("v1", "Event", namespace)
                if e["involvedObject"].get("kind") == "ModelService"
                and e["involvedObject"]["name"].startswith("bad-")]

    events = wait_for("one Event per stalled case", lambda: (lambda es: es if sorted(
        e["involvedObject"]["name"] for e in es) == expected else None)(bad_events()),
        timeout=30)
    assert all(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events), events
    assert all("spec." in e["message"] for e in events)
    # The operator is alive and still serves a good ModelService.
    k.apply(modelservice("good", namespace))
    wait_for("good Ready", lambda: ready(k, namespace, "good"), timeout=90)
    assert operator.alive


def stripped_crd() -> dict[str, Any]:
    """The CRD with its schema opened and every CEL rule removed (the status subresource and
    printer columns kept)."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    for version in crd["spec"]["versions"]:
        version["schema"] = {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return crd


@pytest.fixture
def unvalidated(private_cluster: lc.Cluster) -> Iterator[lc.Cluster]:
    c = private_cluster
    c.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-",
                  input=json.dumps(stripped_crd()))
    try:
        yield c
    finally:
        c.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        c.wait_established(CRD_NAME)
        live = c.kubectl_json("get", "crd", CRD_NAME)
        want = yaml.safe_load(CRD_FILE.read_text())
        assert [v["schema"] for v in live["spec"]["versions"]] == [
            copy.deepcopy(v["schema"]) for v in want["spec"]["versions"]]


def test_without_admission_checks_the_operator_itself_stalls_every_bad_spec(
        unvalidated: lc.Cluster, tmp_path: Any) -> None:
    c = unvalidated
    ns = f"bad-unvalidated-{tmp_path.name[-6:].lower().strip('_-')}"
    ns = re.sub(r"[^a-z0-9-]", "", ns).strip("-")
    c.kubectl_run("create", "namespace", ns)
    k = api(c.kubeconfig)
    op = OperatorProcess(ns, name="operator", env=dict(c.env))
    try:
        op.wait_up()
        outcomes = run_cases(k, ns)
        assert set(outcomes.values()) == {"stalled"}, outcomes
        assert len(outcomes) == len(BAD)
        k.apply(modelservice("good", ns))
        wait_for("good Ready", lambda: ready(k, ns, "good"), timeout=90)
        assert op.alive, op.tail()
        assert "Traceback" not in op.tail(1_000_000), op.tail()
    finally:
        op.close()
        k.close()
        c.kubectl_run("delete", "namespace", ns, "--wait=false", check=False)
