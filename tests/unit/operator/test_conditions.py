"""conditions: upsert by type; lastTransitionTime moves only when status flips."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from msv_operator import conditions as c

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"


def test_new_condition_gets_now_and_generation() -> None:
    out = c.upsert([], type_="Ready", status=c.FALSE, reason="RollingOut", message="m",
                   now=T0, observed_generation=3)
    assert out == [{"type": "Ready", "status": "False", "reason": "RollingOut", "message": "m",
                    "lastTransitionTime": T0, "observedGeneration": 3}]


def test_same_status_keeps_transition_time_but_updates_reason_and_message() -> None:
    first = c.upsert([], type_="Ready", status=c.FALSE, reason="RollingOut", message="a", now=T0)
    second = c.upsert(first, type_="Ready", status=c.FALSE, reason="Unschedulable",
                      message="0/5 nodes are available", now=T1)
    assert second[0]["lastTransitionTime"] == T0
    assert second[0]["reason"] == "Unschedulable"
    assert second[0]["message"] == "0/5 nodes are available"


def test_flip_moves_transition_time() -> None:
    first = c.upsert([], type_="Ready", status=c.FALSE, reason="RollingOut", message="", now=T0)
    flipped = c.upsert(first, type_="Ready", status=c.TRUE, reason="AllVariantsReady",
                       message="", now=T1)
    back = c.upsert(flipped, type_="Ready", status=c.TRUE, reason="AllVariantsReady",
                    message="", now=T2)
    assert flipped[0]["lastTransitionTime"] == T1
    assert back[0]["lastTransitionTime"] == T1


def test_other_conditions_keep_order_and_values() -> None:
    conds = c.upsert([], type_="Ready", status=c.TRUE, reason="r", message="", now=T0)
    conds = c.upsert(conds, type_="Degraded", status=c.FALSE, reason="d", message="", now=T0)
    updated = c.upsert(conds, type_="Ready", status=c.FALSE, reason="x", message="", now=T1)
    assert [x["type"] for x in updated] == ["Ready", "Degraded"]
    assert updated[1] == conds[1]
    assert conds[0]["status"] == "True", "the input list must not be mutated"


def test_invalid_status_is_refused() -> None:
    with pytest.raises(ValueError, match="True, False or Unknown"):
        c.upsert([], type_="Ready", status="yes", reason="r", message="", now=T0)


def test_transitions_report_flips_and_reason_changes_only() -> None:
    before = c.upsert([], type_="Ready", status=c.FALSE, reason="RollingOut", message="", now=T0)
    before = c.upsert(before, type_="Degraded", status=c.FALSE, reason="AsExpected",
                      message="", now=T0)
    after = c.upsert(before, type_="Ready", status=c.FALSE, reason="Unschedulable",
                     message="no GPU", now=T1)
    after = c.upsert(after, type_="Degraded", status=c.FALSE, reason="AsExpected",
                     message="changed text only", now=T1)
    found = c.transitions(before, after)
    assert [(t.type, t.reason, t.previous_reason) for t in found] == [
        ("Ready", "Unschedulable", "RollingOut")]
    assert c.transitions(after, after) == []


def test_rfc3339() -> None:
    assert c.rfc3339(datetime(2026, 3, 4, 5, 6, 7, 999, tzinfo=UTC)) == "2026-03-04T05:06:07Z"
