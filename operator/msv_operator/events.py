"""PURE: which Kubernetes Events a reconcile pass posts, as (type, reason, message).

Condition transitions (``Ready``, ``Degraded``, ``Stalled``, ``FieldsIgnored``) and repairs of
owned objects become Events here; the rollout and the brownout make their own
(``rollout.Event``). ``runtime`` posts both through ``kube.post_event`` once the status that
records them is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from msv_operator import conditions, status

# Conditions whose flips are worth an Event: (type) -> (reason when True, when cleared).
FLIP_EVENTS = {status.STALLED: ("Stalled", "StallCleared"),
               status.FIELDS_IGNORED: ("FieldsIgnored", "FieldsActing")}


def event_for(transition: conditions.Transition) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Kubernetes Event for a condition transition, if any."""
    if transition.type == status.READY:
        if transition.status == conditions.TRUE:
            return "Normal", "Ready", transition.message or "every variant is ready"
        if transition.previous_status is None and transition.reason == "RollingOut":
            return None  # a new ModelService starting up is not news
        kind = "Normal" if transition.reason == "RollingOut" else "Warning"
        return kind, transition.reason, transition.message
    if transition.type == status.DEGRADED and transition.status == conditions.FALSE \
            and transition.previous_status == conditions.TRUE:
        return "Normal", "Recovered", transition.message
    if transition.type in FLIP_EVENTS and transition.status != transition.previous_status:
        on, off = FLIP_EVENTS[transition.type]
        if transition.status == conditions.TRUE:
            return "Warning", on, f"{transition.reason}: {transition.message}"
        if transition.previous_status == conditions.TRUE:
            return "Normal", off, transition.message
    return None


def for_pass(transitions: Sequence[conditions.Transition], repaired: Iterable[str]
             ) -> list[tuple[str, str, str]]:
    """Every Event one pass has to post: condition transitions, then repairs.

    One cause, one Event: when ``Ready`` turns to a failure and ``Stalled`` turns True for
    the same reason in the same pass, only the ``Ready`` one (reason ``Unschedulable``,
    ``InvalidSpec``, ...) is posted; the Stalled flip alone (its reason unchanged on Ready)
    still is."""
    ready_reasons = {t.reason for t in transitions
                     if t.type == status.READY and t.status != conditions.TRUE
                     and event_for(t) is not None}
    out = [e for e in (event_for(t) for t in transitions
                       if not (t.type == status.STALLED and t.status == conditions.TRUE
                               and t.reason in ready_reasons))
           if e is not None]
    out += [("Normal", "Repaired", message) for message in repaired]
    return out
