"""Computed statuses as Flux (the real kstatus library) and Argo CD (the health Lua) read them."""

from __future__ import annotations

from typing import Any

import pytest
from gitops_status import argocd_health, kstatus
from msv_operator import status as s

NOW = "2026-01-01T00:00:00Z"


def _dep(replicas: int, ready: int, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas,
                       "readyReplicas": ready, "availableReplicas": ready,
                       "updatedReplicas": replicas}}


def _sample(name: str, **kwargs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": name, "namespace": "ml", "generation": 2},
        "spec": {"variants": [{"name": "baseline"}]}}
    body["status"] = s.compute_status(body, now=NOW, observed_generation=2, **kwargs)
    return body


CRASH = {"metadata": {"name": "p", "labels": {s.LABEL_VARIANT: "baseline"}},
         "status": {"containerStatuses": [{"name": "model-server", "state": {
             "terminated": {"exitCode": 4, "message": "ModelLoadError"}}}]}}

SAMPLES = [
    # name, compute_status arguments, kstatus, Argo CD
    ("invalid", dict(deployments={}, pods=[], invalid_spec="spec.model.task: bad"),
     "Failed", "Degraded"),
    ("new", dict(deployments={}, pods=[]), "InProgress", "Progressing"),
    ("scaling", dict(deployments={"baseline": _dep(3, 1)}, pods=[]), "InProgress",
     "Progressing"),
    ("rolling", dict(deployments={"baseline": _dep(2, 2, generation=2, observed=1)}, pods=[]),
     "InProgress", "Progressing"),
    ("crashing", dict(deployments={"baseline": _dep(1, 0)}, pods=[CRASH]), "Failed",
     "Degraded"),
    ("applyfailed", dict(deployments={}, pods=[], apply_error="422"), "Failed", "Degraded"),
    ("ready", dict(deployments={"baseline": _dep(2, 2)}, pods=[]), "Current", "Healthy"),
]


def test_kstatus_and_argocd_agree_on_every_sample() -> None:
    objs = [_sample(name, **kwargs) for name, kwargs, _, _ in SAMPLES]
    got = {r["name"]: r["status"] for r in kstatus(objs)}
    assert got == {name: want for name, _, want, _ in SAMPLES}
    for obj, (name, _, _, argo) in zip(objs, SAMPLES, strict=True):
        assert argocd_health(obj)["status"] == argo, name


def test_an_unobserved_generation_is_in_progress_for_both() -> None:
    obj = _sample("ready", deployments={"baseline": _dep(1, 1)}, pods=[])
    obj["metadata"]["generation"] = 3
    assert kstatus([obj])[0]["status"] == "InProgress"
    assert argocd_health(obj)["status"] == "Progressing"


@pytest.mark.parametrize("reason", ["InvalidSpec", "ModelLoadFailed", "Unschedulable"])
def test_stalled_message_reaches_both(reason: str) -> None:
    obj = _sample("x", deployments={}, pods=[], invalid_spec="spec.gateway: nope")
    for c in obj["status"]["conditions"]:
        if c["type"] == "Stalled":
            c["reason"] = reason
    assert "spec.gateway: nope" in kstatus([obj])[0]["message"]
    assert argocd_health(obj)["message"] == f"{reason}: spec.gateway: nope"
