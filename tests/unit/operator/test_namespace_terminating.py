"""A namespace being deleted refuses every create with 403 and the cause
``NamespaceTerminating``: the operator tells that apart from an RBAC denial, stops the pass
without a status write or an Event, and counts it as ``terminating``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fakekube import FakeKube
from kubernetes.client.exceptions import ApiException
from msv_operator import kube, reconcile
from msv_operator.config import OperatorConfig

TERMINATING = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
    "code": 403,
    "message": 'deployments.apps "m-baseline" is forbidden: unable to create new content in '
               "namespace ml because it is being terminated",
    "details": {"name": "m-baseline", "group": "apps", "kind": "deployments", "causes": [
        {"reason": "NamespaceTerminating", "field": "metadata.namespace",
         "message": "namespace ml is being terminated"}]},
}
RBAC = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
    "code": 403,
    "message": 'deployments.apps is forbidden: User "system:serviceaccount:msv:op" cannot '
               'create resource "deployments" in API group "apps" in the namespace "ml"',
    "details": {"group": "apps", "kind": "deployments"},
}


def refusal(body: Mapping[str, Any]) -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps(body)
    return exc


def test_a_terminating_namespace_is_its_own_error_and_rbac_stays_rejected() -> None:
    err = kube.translate(refusal(TERMINATING), "apply Deployment m-baseline")
    assert isinstance(err, kube.NamespaceTerminating)
    assert "being terminated" in str(err)
    denied = kube.translate(refusal(RBAC), "apply Deployment m-baseline")
    assert isinstance(denied, kube.Rejected)
    assert not isinstance(denied, kube.NamespaceTerminating)
    assert "cannot create" in str(denied)


def terminating() -> FakeKube:
    """An API refusing every create as in a namespace being deleted."""
    client = FakeKube()
    client.errors["apply"] = kube.translate(refusal(TERMINATING), "apply Deployment m-baseline")
    return client

class Caps:
    def get(self) -> kube.CapabilityAnswer:
        return kube.CapabilityAnswer(service_monitor=False, gateway_api=False)


def test_a_pass_in_a_terminating_namespace_stops_quietly() -> None:
    client = terminating()
    ctx = reconcile.Context(config=OperatorConfig(), kube=client,
                            capabilities=Caps())  # type: ignore[arg-type]
    ms = {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
          "metadata": {"name": "m", "namespace": "ml", "uid": "u-1", "generation": 1},
          "spec": {"model": {"uri": "s3://m/x", "framework": "torchscript"},
                   "variants": [{"name": "baseline"}]}}
    result = reconcile.reconcile(ctx, ms, reconcile.Observed(), "2026-01-01T00:00:00Z")
    assert result.namespace_terminating
    assert result.outcome == "terminating"
    # it stopped at the first refusal: no status patch, no other call
    assert client.calls == ["apply"]
    assert not result.status_written
    assert result.apply_error is None and not result.events
