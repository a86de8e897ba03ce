"""Conditions with Kubernetes API-convention semantics (pure; used by ``status``).

A condition is upserted by ``type``. ``lastTransitionTime`` moves only when ``status`` flips;
a changed ``reason``/``message``/``observedGeneration`` is recorded without moving it. Callers
pass ``now`` (an RFC 3339 string), so this module has no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"


def rfc3339(moment: datetime) -> str:
    """Format a timestamp the way the API server does (seconds, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Transition:
    """A condition whose ``status`` (or, for an unchanged status, ``reason``) changed."""

    type: str
    status: str
    reason: str
    message: str
    previous_status: str | None
    previous_reason: str | None


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` or None."""
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def upsert(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with ``type_`` set; other conditions keep their order and values."""
    if status not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"condition status must be True, False or Unknown, not {status!r}")
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions or ():
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        flipped = c.get("status") != status
        new = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now if flipped else c.get("lastTransitionTime", now),
        }
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        out.append(new)
    if not found:
        new = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        out.append(new)
    return out


def transitions(
    before: Sequence[Mapping[str, Any]] | None,
    after: Sequence[Mapping[str, Any]] | None,
) -> list[Transition]:
    """Conditions whose status or reason differs between ``before`` and ``after``."""
    result: list[Transition] = []
    for c in after or ():
        old = find(before, str(c.get("type")))
        old_status = None if old is None else old.get("status")
        old_reason = None if old is None else old.get("reason")
        if old_status != c.get("status") or old_reason != c.get("reason"):
            result.append(
                Transition(
                    type=str(c.get("type")),
                    status=str(c.get("status")),
                    reason=str(c.get("reason", "")),
                    message=str(c.get("message", "")),
                    previous_status=old_status,
                    previous_reason=old_reason,
                )
            )
    return result
