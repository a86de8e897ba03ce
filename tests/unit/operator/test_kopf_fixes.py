"""kopf with ``kopf_fixes`` applied: waiters wake exactly when the set flips; the index gate;
lean watch events."""

from __future__ import annotations

import asyncio
import logging

import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from msv_operator import kopf_fixes


def test_waiters_wake_when_the_set_flips_and_only_then() -> None:
    kopf_fixes.apply()
    kopf_fixes.apply()  # idempotent

    async def scenario() -> list[str]:
        seen: list[str] = []
        toggles = aiotoggles.ToggleSet(all)
        blockers = [await toggles.make_toggle(name=f"object-{i}") for i in range(50)]
        wakeups = 0
        original = toggles._condition.notify_all

        def counting() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        toggles._condition.notify_all = counting  # type: ignore[method-assign]

        async def waiter(state: bool, name: str) -> None:
            await toggles.wait_for(state)
            seen.append(name)

        on = [asyncio.create_task(waiter(True, f"on-{i}")) for i in range(20)]
        await asyncio.sleep(0)
        for toggle in blockers[:-1]:
            await toggles.drop_toggle(toggle)
        await asyncio.sleep(0)
        assert seen == [] and wakeups == 0  # still one toggle off: nobody woken
        await toggles.drop_toggles([blockers[-1]])
        await asyncio.gather(*on)
        assert wakeups == 1 and len(seen) == 20
        off = asyncio.create_task(waiter(False, "off"))
        await asyncio.sleep(0)
        late = await toggles.make_toggle(name="late")  # all on -> one off: a flip
        await off
        await toggles.drop_toggle(late)
        assert wakeups == 3
        return seen

    seen = asyncio.run(scenario())
    assert seen[-1] == "off"


class _Resource:
    def __init__(self, plural: str) -> None:
        self.plural = plural


def test_the_index_gate_opens_only_when_every_kind_is_listed_and_indexed() -> None:
    """Object workers of a gated run do not wait (kopf's ``wait_for(True)`` returns at once);
    the gate waits for every expected kind's LISTED bookmark *and* the set being on."""
    kopf_fixes.apply()

    async def scenario() -> None:
        gate = kopf_fixes.IndexGate(["modelservices", "services"], ["ns-a"])
        toggles = aiotoggles.ToggleSet(all)  # kopf's index set of the run: binds the gate
        blocker = await toggles.make_toggle(name="orchestration blocker")
        assert gate.owns(toggles)
        kind = await toggles.make_toggle(name="services@ns-a")
        obj = await toggles.make_toggle(name="one service")
        await toggles.drop_toggle(blocker)
        # an object worker: not held although the set is off
        await asyncio.wait_for(toggles.wait_for(True), 1)
        opened = asyncio.create_task(gate.wait())

        async def upstream(**_: object):  # type: ignore[no-untyped-def]
            yield {"type": None, "object": {"metadata": {"name": "s", "managedFields": [{}]}}}
            yield watching.Bookmark.LISTED

        original, kopf_fixes._ORIGINAL_WATCH = kopf_fixes._ORIGINAL_WATCH, upstream
        try:
            events = [e async for e in kopf_fixes._lean_watch(
                resource=_Resource("services"), namespace="ns-a")]
        finally:
            kopf_fixes._ORIGINAL_WATCH = original
        assert events[0]["object"]["metadata"] == {"name": "s"}  # managedFields dropped
        await toggles.drop_toggles([kind, obj])  # the set is on: services listed + indexed
        await asyncio.sleep(0.01)
        assert not opened.done() and not gate.is_open()  # ModelServices not listed yet
        gate._listed_one("modelservices", "ns-a")
        await asyncio.wait_for(opened, 1)
        assert gate.is_open()

    asyncio.run(scenario())


def test_without_a_gate_kopf_waits_as_before() -> None:
    kopf_fixes.apply()

    async def scenario() -> None:
        toggles = aiotoggles.ToggleSet(all)
        toggle = await toggles.make_toggle(name="object")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(toggles.wait_for(True), 0.05)
        await toggles.drop_toggle(toggle)
        await asyncio.wait_for(toggles.wait_for(True), 1)

    asyncio.run(scenario())


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _recorded(name: str) -> tuple[logging.Logger, list[logging.LogRecord]]:
    """A logger whose records (INFO and up) end up in the returned list."""
    records: list[logging.LogRecord] = []
    logger = logging.getLogger(name)
    logger.addHandler(_Keep(records))
    logger.setLevel(logging.INFO)
    return logger, records


def test_a_gate_that_stays_closed_says_what_it_waits_for_until_it_opens() -> None:
    """A kind whose list never arrives (RBAC) would hold every pass: the gate says which,
    and where, every interval; once it opens it says so once and stops."""
    kopf_fixes.apply()
    logger, records = _recorded("test.index-gate")

    async def scenario() -> None:
        gate = kopf_fixes.IndexGate(["modelservices", "services"], ["ns-a", "ns-b"])
        assert gate.waiting_for() == "kopf to start watching"
        toggles = aiotoggles.ToggleSet(all)
        await toggles.make_toggle(True, name="bound")
        gate._listed_one("modelservices", "ns-a")
        gate._listed_one("modelservices", "ns-b")
        gate._listed_one("services", "ns-a")
        reporting = asyncio.create_task(gate.report(logger, every=0.05))
        await asyncio.sleep(0.17)
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert len(warnings) >= 2 and not reporting.done()
        assert "still waiting for the first list of services in namespace ns-b" in warnings[0]
        assert "RBAC" in warnings[0] and "ns-a" not in warnings[0]
        gate._listed_one("services", "ns-b")
        await asyncio.wait_for(reporting, 1)
        assert "reconciling" in records[-1].getMessage()
        assert records[-1].levelno == logging.INFO

    asyncio.run(scenario())


def test_a_gate_that_opens_at_once_says_nothing() -> None:
    kopf_fixes.apply()
    logger, records = _recorded("test.index-gate-quiet")

    async def scenario() -> None:
        gate = kopf_fixes.IndexGate(["services"])
        toggles = aiotoggles.ToggleSet(all)
        await toggles.make_toggle(True, name="bound")
        gate._listed_one("services", None)
        await asyncio.wait_for(gate.report(logger, every=0.05), 1)

    asyncio.run(scenario())
    assert records == []
