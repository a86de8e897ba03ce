"""Whole reconcile passes with spec.gateway against a fake API: what the HTTPRoute's status and
its parent Gateway say decides ``routed`` (handed to the status) and ``FieldsIgnored``
(GatewayNotReady naming spec.gateway, the parent and the implementation's message); an
HTTPRoute CRD without rules[].retry gets no retry and FieldsIgnored names spec.gateway.retry;
the retry budget's XBackendTrafficPolicy is applied where the kind is served, pruned when not
wanted, and a budget the spec sets where it cannot act is named in FieldsIgnored; the capability
discovery reads the CRD's schema only when it changed and asks for XBackendTrafficPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from msv_operator import builders, kube, reconcile, routing, status
from msv_operator.config import OperatorConfig
from msv_operator.owned import key_of

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "u-1"
GW = ("msv-gateway", "msv-gateway")
CONTROLLER = "modelservice.dev/nginx-gateway"


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(type_: str, status_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status_, "reason": reason, "message": message}


def parent(name: str = "msv-gateway", namespace: str | None = "msv-gateway",
           *conditions: dict[str, Any], section: str | None = None,
           controller: str = CONTROLLER) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                           "name": name}
    if namespace is not None:
        ref["namespace"] = namespace
    if section is not None:
        ref["sectionName"] = section
    return {"parentRef": ref, "controllerName": controller, "conditions": list(conditions)}


ACCEPTED = (cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs"))


def gateway(programmed: str = "True", reason: str = "Programmed", message: str = ""
            ) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": GW[1], "namespace": GW[0]},
            "status": {"conditions": [cond("Accepted", "True", "Accepted"),
                                      cond("Programmed", programmed, reason, message)]}}


class FakeKube:
    """Records applies, deletes and the status; answers the HTTPRoute and
    XBackendTrafficPolicy LISTs and Gateway GETs."""

    def __init__(self) -> None:
        self.applied: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.route: dict[str, Any] | None = None
        self.policy: dict[str, Any] | None = None
        self.listed: list[str] = []
        self.deleted: list[tuple[Any, ...]] = []
        self.may_delete = False
        self.gateways: dict[tuple[str, str], dict[str, Any] | Exception | None] = {
            GW: gateway()}
        self.gets: list[tuple[str, str | None, str]] = []

    def set_route(self, *parents: dict[str, Any], created: datetime = T0 - timedelta(hours=1)
                  ) -> None:
        self.route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                      "metadata": {"name": "sentiment", "namespace": "ml",
                                   "creationTimestamp": stamp(created)},
                      "status": {"parents": list(parents)}}

    def apply(self, obj: Mapping[str, Any], *, answer: bool = True,
              field_manager: str | None = None) -> dict[str, Any] | None:
        self.applied[key_of(obj)] = dict(obj)
        return None

    def list(self, api_version: str, kind: str, namespace: str | None,
             selector: str) -> list[dict[str, Any]]:
        self.listed.append(kind)
        found = {"HTTPRoute": self.route, "XBackendTrafficPolicy": self.policy}.get(kind)
        return [found] if found is not None else []

    def get(self, api_version: str, kind: str, namespace: str | None,
            name: str) -> dict[str, Any] | None:
        assert (api_version, kind) == ("gateway.networking.k8s.io/v1", "Gateway")
        self.gets.append((kind, namespace, name))
        found = self.gateways.get((str(namespace), name))
        if isinstance(found, Exception):
            raise found
        return found

    def delete(self, *args: Any) -> None:
        assert self.may_delete, f"nothing should be pruned: {args}"
        self.deleted.append(args)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status = {k: v for k, v in status.items() if v is not None}

    def pod_metrics(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def patch_metadata(self, *args: Any, **kwargs: Any) -> None:
        return None


class Caps:
    def __init__(self, retry: bool = True, channel: str | None = "experimental",
                 budget: bool = False, gateway_api: bool = True) -> None:
        self.answer = kube.CapabilityAnswer(service_monitor=False, gateway_api=gateway_api,
                                            gateway_retry=retry, gateway_channel=channel,
                                            retry_budget=budget)

    def get(self) -> kube.CapabilityAnswer:
        return self.answer


def modelservice(**gateway: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": {
                "model": {"uri": "s3://m/x", "framework": "transformers",
                          "task": "text-classification"},
                "variants": [{"name": "baseline"}, {"name": "int8"}],
                "traffic": [{"variant": "baseline", "weight": 90},
                            {"variant": "int8", "weight": 10}],
                "gateway": {"parentRefs": [{"name": GW[1], "namespace": GW[0]}], **gateway}},
            "status": {}}


def observed() -> reconcile.Observed:
    def dep(variant: str) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"sentiment-{variant}", "namespace": "ml",
                             "labels": {builders.LABEL_MODELSERVICE: "sentiment",
                                        builders.LABEL_VARIANT: variant},
                             "ownerReferences": [{"kind": "ModelService", "uid": UID,
                                                  "controller": True}]},
                "spec": {"replicas": 1},
                "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                           "availableReplicas": 1}}
    return reconcile.Observed(objects=[dep("baseline"), dep("int8")])


class Operator:
    def __init__(self, caps: Caps | None = None) -> None:
        self.kube = FakeKube()
        self.ctx = reconcile.Context(config=OperatorConfig(), kube=self.kube,  # type: ignore[arg-type]
                                     capabilities=caps or Caps())  # type: ignore[arg-type]
        self.routed: list[bool] = []

    def at(self, seconds: float = 0, **gateway: Any) -> reconcile.Result:
        self.kube.applied.clear()
        result = reconcile.reconcile(self.ctx, modelservice(**gateway), observed(),
                                     stamp(T0 + timedelta(seconds=seconds)))
        return result

    def ignored(self) -> dict[str, Any]:
        return next(c for c in self.kube.status["conditions"] if c["type"] == "FieldsIgnored")


@pytest.fixture
def op(monkeypatch: pytest.MonkeyPatch) -> Operator:
    operator = Operator()
    real = status.compute_status

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        operator.routed.append(kwargs["routed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(status, "compute_status", spy)
    return operator


def test_accepted_by_a_programmed_gateway_is_routed(op: Operator) -> None:
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = op.at()
    assert result.routed and op.routed == [True]
    assert op.ignored()["status"] == "False"
    assert op.kube.gets == [("Gateway", "msv-gateway", "msv-gateway")]
    assert result.requeue_after is None  # nothing to re-check
    route = op.kube.applied[("HTTPRoute", "sentiment")]["spec"]
    assert {r["name"]: r["weight"] for r in route["rules"][-1]["backendRefs"]} == {
        "sentiment-baseline": 90, "sentiment-int8": 10}


def test_a_route_no_parent_accepted_is_reported_and_not_routed(op: Operator) -> None:
    op.kube.set_route()  # an hour old, and no implementation has written a status
    result = op.at()
    assert not result.routed and op.routed == [False]
    ignored = op.ignored()
    assert (ignored["status"], ignored["reason"]) == ("True", routing.GATEWAY_NOT_READY)
    message = ignored["message"]
    assert message.startswith("spec.gateway: the HTTPRoute sentiment carries no traffic")
    assert "stable Service sentiment" in message
    assert "parent Gateway msv-gateway/msv-gateway: no Gateway implementation" in message
    assert result.requeue_after == routing.MIN_RECHECK_SECONDS
    # the route stays applied (it takes over once a parent accepts it); nothing is deleted
    assert ("HTTPRoute", "sentiment") in op.kube.applied


def test_a_refusal_carries_the_implementations_message_at_once(op: Operator) -> None:
    op.kube.set_route(parent("msv-gateway", "msv-gateway",
                             cond("Accepted", "False", "NotAllowedByListeners",
                                  "no listener allows routes from namespace ml")),
                      created=T0)
    result = op.at()
    assert not result.routed
    message = op.ignored()["message"]
    assert (f"the route is not accepted by {CONTROLLER} (NotAllowedByListeners: no listener "
            "allows routes from namespace ml)") in message


def test_a_missing_gateway_is_named(op: Operator) -> None:
    op.kube.gateways[GW] = None
    op.kube.set_route(created=T0)  # a new route, but its Gateway does not exist: no waiting
    op.at()
    assert "parent Gateway msv-gateway/msv-gateway: the Gateway does not exist" in \
        op.ignored()["message"]


def test_a_gateway_not_programmed_keeps_the_route_unrouted(op: Operator) -> None:
    op.kube.gateways[GW] = gateway("False", "AddressNotAssigned", "no address yet")
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = op.at()
    assert not result.routed
    assert ("the route is accepted, but the Gateway is not programmed (AddressNotAssigned: "
            "no address yet)") in op.ignored()["message"]


def test_unresolved_backends_are_not_routed(op: Operator) -> None:
    op.kube.set_route(parent("msv-gateway", "msv-gateway", cond("Accepted", "True"),
                             cond("ResolvedRefs", "False", "BackendNotFound",
                                  "service sentiment-int8 not found")))
    assert not op.at().routed
    assert "BackendNotFound: service sentiment-int8 not found" in op.ignored()["message"]


def test_an_unreadable_gateway_leaves_the_routes_status_to_decide(op: Operator) -> None:
    op.kube.gateways[GW] = kube.Rejected("gateways is forbidden", 403)
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    assert op.at().routed
    op.kube.set_route()
    assert not op.at().routed


@pytest.mark.parametrize("other", [
    parent("other-gateway", "msv-gateway", *ACCEPTED),
    parent("msv-gateway", "ml", *ACCEPTED),
    parent("msv-gateway", "msv-gateway", *ACCEPTED, section="https"),
])
def test_another_parents_status_is_not_misread(op: Operator, other: dict[str, Any]) -> None:
    """Entries are matched by parentRef (name, namespace, section), whoever wrote them."""
    op.kube.set_route(other, parent("msv-gateway", "msv-gateway",
                                    cond("Accepted", "False", "NoMatchingParent", "nope")))
    assert not op.at().routed
    assert "NoMatchingParent: nope" in op.ignored()["message"]


def test_parent_ref_defaults_match_the_routes_namespace(op: Operator) -> None:
    """A parentRef without a namespace means the route's own, in spec and in status alike."""
    op.kube.gateways[("ml", "local")] = gateway()
    op.kube.set_route(parent("local", None, *ACCEPTED))
    body = modelservice()
    body["spec"]["gateway"]["parentRefs"] = [{"name": "local"}]
    result = reconcile.reconcile(op.ctx, body, observed(), stamp(T0))
    assert result.routed
    assert op.kube.gets == [("Gateway", "ml", "local")]


def test_a_new_route_waits_for_its_first_status_without_a_warning(op: Operator) -> None:
    result = op.at()  # no route yet: this pass creates it
    assert not result.routed
    assert op.ignored()["status"] == "False"
    assert result.requeue_after == routing.GRACE_RECHECK_SECONDS
    op.kube.set_route(created=T0)
    result = op.at(routing.GRACE_SECONDS + 1)  # still no status after the grace
    assert op.ignored()["reason"] == routing.GATEWAY_NOT_READY
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED), created=T0)
    result = op.at(routing.GRACE_SECONDS + 5)
    assert result.routed and op.ignored()["status"] == "False"
    assert op.routed == [False, False, True]


def test_rechecks_slow_down_while_unrouted_and_start_over_once_routed(op: Operator) -> None:
    op.kube.set_route()
    waits = [op.at(t).requeue_after for t in (0, 100, 200, 1000)]
    assert waits == [5.0, 20.0, 40.0, 60.0]
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    op.at(1100)
    assert ("ml", "sentiment") not in op.ctx.unrouted_since
    op.kube.set_route()
    assert op.at(1200).requeue_after == 5.0


def test_retry_is_written_when_the_crd_has_it(op: Operator) -> None:
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    op.at(variantHeader="x-msv-variant")
    rules = op.kube.applied[("HTTPRoute", "sentiment")]["spec"]["rules"]
    assert [r["retry"] for r in rules] == [{"attempts": 2, "codes": [503]}] * 3
    assert op.ignored()["status"] == "False"


@pytest.mark.parametrize(("channel", "why"), [
    ("standard", "the cluster's HTTPRoute CRD (httproutes.gateway.networking.k8s.io, Gateway "
                 "API standard channel) has no rules[].retry"),
    (None, "the operator cannot read the CustomResourceDefinition "
           "httproutes.gateway.networking.k8s.io"),
])
def test_without_retry_in_the_crd_none_is_written_and_the_field_is_named(
        channel: str | None, why: str) -> None:
    op = Operator(Caps(retry=False, channel=channel))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = op.at()
    assert result.routed  # the route works, only without retries
    rules = op.kube.applied[("HTTPRoute", "sentiment")]["spec"]["rules"]
    assert all("retry" not in r for r in rules)
    ignored = op.ignored()
    assert (ignored["status"], ignored["reason"]) == ("True",
                                                      reconcile.GATEWAY_RETRY_UNSUPPORTED)
    assert ignored["message"].startswith(f"spec.gateway.retry: {why}")
    assert "spec.gateway.retry.attempts: 0" in ignored["message"]
    # retries switched off: nothing is ignored
    op.at(retry={"attempts": 0})
    assert op.ignored()["status"] == "False"


def test_both_problems_are_listed_together() -> None:
    op = Operator(Caps(retry=False, channel="standard"))
    op.kube.set_route()
    op.at()
    ignored = op.ignored()
    assert ignored["reason"] == reconcile.GATEWAY_RETRY_UNSUPPORTED
    assert "spec.gateway.retry:" in ignored["message"]
    assert "; spec.gateway: the HTTPRoute sentiment carries no traffic" in ignored["message"]


def test_without_spec_gateway_nothing_is_read() -> None:
    op = Operator()
    body = modelservice()
    del body["spec"]["gateway"]
    result = reconcile.reconcile(op.ctx, body, observed(), stamp(T0))
    assert not result.routed and op.kube.gets == []
    assert ("HTTPRoute", "sentiment") not in op.kube.applied


# ---- discovery of rules[].retry -------------------------------------------------------------

class DiscoveryKube:
    """Discovery answers, the HTTPRoute CRD's metadata and the CRD itself (counted)."""

    def __init__(self, retry: bool, channel: str = "experimental",
                 budget: bool = False, gateway_api: bool = True) -> None:
        self.version = "1"
        self.retry = retry
        self.channel = channel
        self.full_reads = 0
        self.refuse: Exception | None = None
        self.served_apis = {("gateway.networking.k8s.io/v1", "httproutes")} if gateway_api \
            else set()
        if budget:
            self.served_apis.add(("gateway.networking.x-k8s.io/v1alpha1",
                                  "xbackendtrafficpolicies"))
        self.asked: list[tuple[str, str]] = []

    def served(self, api_version: str, plural: str) -> bool:
        self.asked.append((api_version, plural))
        return (api_version, plural) in self.served_apis

    def metadata(self, api_version: str, kind: str, namespace: str | None, name: str
                 ) -> dict[str, Any] | None:
        assert (api_version, kind, name) == (kube.CRD_API, "CustomResourceDefinition",
                                             kube.HTTPROUTE_CRD)
        if self.refuse is not None:
            raise self.refuse
        return {"metadata": {"name": name, "resourceVersion": self.version,
                             "annotations": {kube.GATEWAY_CHANNEL_ANNOTATION: self.channel}}}

    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> dict[str, Any] | None:
        self.full_reads += 1
        rule = {"matches": {}, **({"retry": {}} if self.retry else {})}
        return {"metadata": {"name": name, "resourceVersion": self.version},
                "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                    "properties": {"spec": {"properties": {"rules": {"items": {
                        "properties": rule}}}}}}}}]}}


def test_discovery_reads_the_schema_only_when_the_crd_changed() -> None:
    client = DiscoveryKube(retry=False, channel="standard")
    caps = kube.Capabilities(client, ttl=0)  # type: ignore[arg-type]
    first = caps.get()
    assert (first.gateway_api, first.gateway_retry, first.gateway_channel) == (
        True, False, "standard")
    caps.get()
    assert client.full_reads == 1  # same resourceVersion: the metadata was enough
    client.version, client.retry, client.channel = "2", True, "experimental"
    upgraded = caps.get()
    assert (upgraded.gateway_retry, upgraded.gateway_channel) == (True, "experimental")
    assert client.full_reads == 2


def test_a_crd_the_operator_may_not_read_means_no_retry() -> None:
    client = DiscoveryKube(retry=True)
    client.refuse = kube.Rejected("customresourcedefinitions is forbidden", 403)
    answer = kube.Capabilities(client, ttl=0).get()  # type: ignore[arg-type]
    assert (answer.gateway_api, answer.gateway_retry, answer.gateway_channel) == (
        True, False, None)


def test_a_rollout_step_reaches_the_route_in_the_pass_that_takes_it(op: Operator) -> None:
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    body = modelservice()
    body["spec"]["traffic"] = [{"variant": "baseline", "weight": 100}]
    body["spec"]["rollout"] = {"candidate": "int8", "steps": [10, 50, 100]}
    result = reconcile.reconcile(op.ctx, body, observed(), stamp(T0))
    assert op.kube.status["rollout"]["step"] == 1
    route = op.kube.applied[("HTTPRoute", "sentiment")]["spec"]
    assert {r["name"]: r["weight"] for r in route["rules"][-1]["backendRefs"]} == {
        "sentiment-baseline": 90, "sentiment-int8": 10}
    assert op.kube.status["traffic"] == "baseline=90,int8=10" and result.routed


# ---- the retry budget ---------------------------------------------------------------------------

POLICY = ("XBackendTrafficPolicy", "sentiment")


def live_policy() -> dict[str, Any]:
    """The policy an earlier pass applied (as the LIST returns it)."""
    return {"apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackendTrafficPolicy",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "p-1",
                         "labels": {builders.LABEL_MODELSERVICE: "sentiment"},
                         "ownerReferences": [{"kind": "ModelService", "uid": UID,
                                              "controller": True}]},
            "spec": {"targetRefs": [{"group": "", "kind": "Service",
                                     "name": "sentiment-baseline"}]}}


def test_a_served_kind_gets_the_policy_with_the_defaults_next_to_the_route() -> None:
    op = Operator(Caps(budget=True))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = op.at()
    assert "XBackendTrafficPolicy" in op.kube.listed  # observed, so it can be pruned
    policy = op.kube.applied[POLICY]
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": "sentiment-baseline"},
        {"group": "", "kind": "Service", "name": "sentiment-int8"}]
    assert policy["spec"]["retryConstraint"] == {
        "budget": {"percent": 20, "interval": "10s"},
        "minRetryRate": {"count": 10, "interval": "1s"}}
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    assert "XBackendTrafficPolicy sentiment" in result.applied
    assert op.ignored()["status"] == "False" and result.routed
    # the spec's budget reaches the policy in the pass that reads it
    op.at(retry={"budget": {"percent": 5, "minRetryRate": {"count": 2}}})
    assert op.kube.applied[POLICY]["spec"]["retryConstraint"] == {
        "budget": {"percent": 5, "interval": "10s"},
        "minRetryRate": {"count": 2, "interval": "1s"}}


def test_a_budget_set_where_the_kind_is_not_served_is_named_and_the_route_still_works() -> None:
    op = Operator(Caps(budget=False))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = op.at(retry={"budget": {"percent": 10}})
    assert result.routed
    assert POLICY not in op.kube.applied
    assert "XBackendTrafficPolicy" not in op.kube.listed  # an API not served is not listed
    rules = op.kube.applied[("HTTPRoute", "sentiment")]["spec"]["rules"]
    assert [r["retry"] for r in rules] == [{"attempts": 2, "codes": [503]}]
    ignored = op.ignored()
    assert (ignored["status"], ignored["reason"]) == (
        "True", reconcile.GATEWAY_RETRY_BUDGET_UNSUPPORTED)
    assert ignored["message"].startswith(
        "spec.gateway.retry.budget: the cluster does not serve "
        "gateway.networking.x-k8s.io/v1alpha1 XBackendTrafficPolicy")
    assert "remove spec.gateway.retry.budget" in ignored["message"]


@pytest.mark.parametrize("retry", [None, {"attempts": 0, "budget": {"percent": 10}}])
def test_no_budget_asked_for_or_no_retries_is_silent_where_the_kind_is_not_served(
        retry: dict[str, Any] | None) -> None:
    op = Operator(Caps(budget=False))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    op.at(**({"retry": retry} if retry is not None else {}))
    assert POLICY not in op.kube.applied
    assert op.ignored()["status"] == "False"


def test_without_http_route_retries_the_budget_is_still_written() -> None:
    """Some implementations retry by default; the budget caps those too."""
    op = Operator(Caps(retry=False, channel="standard", budget=True))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    op.at()
    assert POLICY in op.kube.applied
    assert op.ignored()["reason"] == reconcile.GATEWAY_RETRY_UNSUPPORTED


def _pruned_after(op: Operator, body: dict[str, Any]) -> reconcile.Result:
    op.kube.policy = live_policy()
    op.kube.may_delete = True
    op.kube.applied.clear()
    return reconcile.reconcile(op.ctx, body, observed(), stamp(T0))


def test_retries_switched_off_prune_the_policy() -> None:
    op = Operator(Caps(budget=True))
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    body = modelservice(retry={"attempts": 0})
    result = _pruned_after(op, body)
    assert op.kube.deleted == [("gateway.networking.x-k8s.io/v1alpha1",
                                "XBackendTrafficPolicy", "ml", "sentiment", "p-1")]
    assert result.pruned == ["XBackendTrafficPolicy sentiment"]
    assert POLICY not in op.kube.applied and ("HTTPRoute", "sentiment") in op.kube.applied


def test_spec_gateway_removed_prunes_the_policy() -> None:
    op = Operator(Caps(budget=True))
    body = modelservice()
    del body["spec"]["gateway"]
    result = _pruned_after(op, body)
    assert "XBackendTrafficPolicy sentiment" in result.pruned
    assert [d[1] for d in op.kube.deleted] == ["XBackendTrafficPolicy"]


def test_gateway_api_gone_prunes_a_policy_left_behind() -> None:
    """HTTPRoute no longer served but the policy's kind still is: no route, so no policy."""
    op = Operator(Caps(gateway_api=False, retry=False, channel=None, budget=True))
    result = _pruned_after(op, modelservice())
    assert result.pruned == ["XBackendTrafficPolicy sentiment"]
    assert op.ignored()["reason"] == "GatewayAPIUnavailable"  # spec.gateway, not the budget
    assert "spec.gateway.retry.budget" not in op.ignored()["message"]


def test_a_policy_of_another_owner_is_never_pruned() -> None:
    op = Operator(Caps(budget=True))
    body = modelservice(retry={"attempts": 0})
    op.kube.policy = live_policy()
    op.kube.policy["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    op.kube.set_route(parent("msv-gateway", "msv-gateway", *ACCEPTED))
    result = reconcile.reconcile(op.ctx, body, observed(), stamp(T0))  # may_delete False
    assert result.pruned == [] and op.kube.deleted == []


def test_services_beyond_what_a_policy_holds_are_named() -> None:
    names = [f"v{i}" for i in range(builders.POLICY_TARGETS_MAX + 2)]
    body = modelservice()
    body["spec"]["variants"] = [{"name": n} for n in names]
    body["spec"]["traffic"] = [{"variant": "v0", "weight": 100}]
    parsed = reconcile.spec.parse_spec(body)
    opts = reconcile.build_options(OperatorConfig(), Caps(budget=True).get())
    found = dict(reconcile.ignored_fields(parsed, opts, "experimental"))
    assert found[reconcile.GATEWAY_RETRY_BUDGET_PARTIAL] == (
        "spec.gateway.retry.budget: an XBackendTrafficPolicy targets at most 16 Services, so the "
        "retries to sentiment-v16, sentiment-v17 have no budget (bounded per request only)")
    body["spec"]["variants"] = body["spec"]["variants"][:builders.POLICY_TARGETS_MAX]
    parsed = reconcile.spec.parse_spec(body)
    assert reconcile.ignored_fields(parsed, opts, "experimental") == []


@pytest.mark.parametrize(("budget", "gateway_api"), [(True, True), (False, True), (True, False)])
def test_discovery_asks_whether_the_policy_kind_is_served(
        budget: bool, gateway_api: bool, caplog: pytest.LogCaptureFixture) -> None:
    client = DiscoveryKube(retry=True, budget=budget, gateway_api=gateway_api)
    caps = kube.Capabilities(client, ttl=3600)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="msv_operator.kube"):
        answer = caps.get()
        assert caps.get() is answer  # cached like the other answers
    assert answer.retry_budget is budget
    assert client.asked.count(kube.RETRY_BUDGET_API) == 1
    (line,) = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("Discovered capabilities")]
    assert f"XBackendTrafficPolicy {'served' if budget else 'not served'}, " in line
    assert line.endswith("ScaledObject not served")  # KEDA is asked too (scale to zero)
