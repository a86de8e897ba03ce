"""PURE: whether a ModelService's HTTPRoute carries its traffic, from what the Gateway API
implementation wrote about it.

``reconcile`` calls ``assess`` after applying, with the live HTTPRoute (its ``status.parents[]``,
written by the implementation, as the pass's LIST found it) and the parent Gateways it could
read (``GatewayRead``: found, missing, or not readable, e.g. no RBAC in that namespace). The
answer, ``Routing``, says:

* ``routed``: at least one parent of spec.gateway has Accepted the route (its status entry
  matched by parentRef, never by position or by which controller wrote it), with its backends
  resolved, and that parent's Gateway is Programmed (or cannot be read: then the route's
  status is all there is to go by). Only then are the HTTPRoute's weights what requests get;
  ``status.compute_status(routed=...)`` takes it;
* ``problem``: why not, for ``FieldsIgnored`` (reason ``GATEWAY_NOT_READY``): the message
  names spec.gateway, each parent and what the implementation said. None while a new route
  waits its first status (``GRACE_SECONDS``), so creating a ModelService posts no warning;
* ``recheck``: seconds until the next look while not routed. The operator does not watch
  HTTPRoutes or Gateways, so a pass is queued for it; the wait grows with how long the route
  has been unrouted (``unrouted_for``), from ``MIN_RECHECK_SECONDS`` to
  ``MAX_RECHECK_SECONDS``.

Nothing here drops traffic: the route stays applied and the stable Service always exists, so
requests to it keep the replica split while the gateway is missing or not ready.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_NOT_READY = "GatewayNotReady"
GRACE_SECONDS = 20.0
"""How long a new route may have no status for a parent before that is reported."""
GRACE_RECHECK_SECONDS = 3.0
MIN_RECHECK_SECONDS = 5.0
MAX_RECHECK_SECONDS = 60.0
MESSAGE_MAX = 300
"""Longest message of the implementation copied per parent."""


@dataclass(frozen=True)
class GatewayRead:
    """One parent Gateway as the pass could read it."""

    found: Mapping[str, Any] | None = None
    readable: bool = True
    """False: the GET was refused or failed (the route's status is all there is)."""


@dataclass(frozen=True)
class Routing:
    routed: bool
    problem: str | None = None
    recheck: float | None = None


def gateway_key(ref: Mapping[str, Any], namespace: str) -> tuple[str, str]:
    """(namespace, name) of the Gateway a spec.gateway parentRef names."""
    return str(ref.get("namespace") or namespace), str(ref.get("name") or "")


def _ref_identity(ref: Mapping[str, Any], namespace: str) -> tuple[Any, ...]:
    """A parentRef with Gateway API's defaults filled in (group, kind Gateway, the route's
    namespace), so a status entry and a spec entry written differently still compare."""
    return (str(ref.get("group") or GATEWAY_GROUP), str(ref.get("kind") or "Gateway"),
            str(ref.get("namespace") or namespace), str(ref.get("name") or ""),
            ref.get("sectionName") or None, ref.get("port") or None)


def entries_for(route: Mapping[str, Any] | None, ref: Mapping[str, Any], namespace: str
                ) -> list[Mapping[str, Any]]:
    """The route's ``status.parents[]`` entries about the parent ``ref`` (any controller)."""
    want = _ref_identity(ref, namespace)
    parents = ((route or {}).get("status") or {}).get("parents") or ()
    return [p for p in parents if isinstance(p, Mapping)
            and isinstance(p.get("parentRef"), Mapping)
            and _ref_identity(p["parentRef"], namespace) == want]


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (obj or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


def _said(c: Mapping[str, Any] | None) -> str:
    """``Reason: message`` of a condition, cut to MESSAGE_MAX."""
    if c is None:
        return "no condition"
    text = str(c.get("reason") or c.get("status") or "")
    message = str(c.get("message") or "").strip()
    if message:
        text += f": {message[:MESSAGE_MAX]}{'…' if len(message) > MESSAGE_MAX else ''}"
    return text


def _is_true(c: Mapping[str, Any] | None) -> bool:
    return c is not None and c.get("status") == "True"


def _age(route: Mapping[str, Any] | None, now: datetime) -> float:
    """Seconds since the route was created (0 when it does not exist yet)."""
    stamp = ((route or {}).get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    try:
        created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return GRACE_SECONDS
    return max(0.0, (now - created).total_seconds())


@dataclass(frozen=True)
class _Parent:
    ok: bool
    waiting: bool
    """No status yet on a young route, and nothing known against it."""
    why: str


def _parent(ref: Mapping[str, Any], route: Mapping[str, Any] | None, namespace: str,
            gateway: GatewayRead, young: bool) -> _Parent:
    entries = entries_for(route, ref, namespace)
    if gateway.readable and gateway.found is None:
        return _Parent(False, False, "the Gateway does not exist")
    if not entries:
        return _Parent(False, young,
                       "no Gateway implementation has written the route's status for this "
                       "parent (is a controller for the Gateway's GatewayClass running?)")
    accepted = [e for e in entries if _is_true(condition(e, "Accepted"))]
    if not accepted:
        e = entries[0]
        return _Parent(False, False, f"the route is not accepted by "
                       f"{e.get('controllerName') or 'the implementation'} "
                       f"({_said(condition(e, 'Accepted'))})")
    unresolved = [e for e in accepted
                  if (condition(e, "ResolvedRefs") or {}).get("status") == "False"]
    if len(unresolved) == len(accepted):
        return _Parent(False, False, "the route is accepted, but its backends are not "
                       f"resolved ({_said(condition(unresolved[0], 'ResolvedRefs'))})")
    if gateway.found is not None:
        programmed = condition(gateway.found.get("status"), "Programmed")
        if not _is_true(programmed):
            return _Parent(False, False, "the route is accepted, but the Gateway is not "
                           f"programmed ({_said(programmed)})")
    return _Parent(True, False, "")


def assess(parents: Sequence[Mapping[str, Any]], route: Mapping[str, Any] | None,
           namespace: str, stable_service: str,
           gateways: Mapping[tuple[str, str], GatewayRead], now: datetime,
           unrouted_for: float) -> Routing:
    """Whether the route (``None``: not created yet) carries the traffic of spec.gateway's
    ``parents`` in ``namespace``; ``gateways`` by ``gateway_key`` (a parent missing from it
    counts as not readable); ``unrouted_for``: seconds it has not been routed so far."""
    young = _age(route, now) < GRACE_SECONDS
    found = [(ref, _parent(ref, route, namespace,
                           gateways.get(gateway_key(ref, namespace), GatewayRead(readable=False)),
                           young)) for ref in parents]
    if any(p.ok for _, p in found):
        return Routing(True)
    if found and all(p.waiting for _, p in found):
        return Routing(False, None, GRACE_RECHECK_SECONDS)
    recheck = min(MAX_RECHECK_SECONDS, max(MIN_RECHECK_SECONDS, unrouted_for / 5))
    name = ((route or {}).get("metadata") or {}).get("name") or stable_service
    details = "; ".join(
        f"parent Gateway {'/'.join(gateway_key(ref, namespace))}"
        f"{'/' + str(ref['sectionName']) if ref.get('sectionName') else ''}: {p.why}"
        for ref, p in found)
    return Routing(False, (
        f"spec.gateway: the HTTPRoute {name} carries no traffic yet, so requests keep going "
        f"to the stable Service {stable_service}, split by its ready pods (approximate), "
        f"until a parent routes it: {details}"), recheck)
