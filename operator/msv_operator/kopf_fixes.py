"""Fixes to kopf internals that the operator's scale needs (applied once by ``handlers``).

kopf blocks every object's handlers until every index is filled: each object listed at
start gets a toggle in one ``ToggleSet(all)``, drops it once indexed and then waits on the
set's condition. Every ``make_toggle``/``drop_toggle`` wakes *every* waiter (``notify_all``),
although the set's overall state (all on?) has not changed, so a start with N objects costs
O(N²) coroutine wake-ups: about 10 s at 1,000 ModelServices and minutes at 5,000, all of it
before the first reconcile. ``apply()`` makes the set notify only when its overall state
flips, which is the only time a waiter's predicate can change. Waiters of a single
``Toggle`` (``turn_to``) are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger("msv_operator.kopf_fixes")

_APPLIED = False


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None
                       ) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: Any, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def apply() -> None:
    """Patch ``kopf``'s ``ToggleSet`` (idempotent); the semantics stay kopf's. A kopf whose
    ToggleSet no longer has the expected shape is left alone (slow start, still correct)."""
    global _APPLIED
    if _APPLIED:
        return
    cls: Any = aiotoggles.ToggleSet
    probe = cls(all)
    if not (isinstance(getattr(probe, "_toggles", None), set)
            and hasattr(probe, "_condition") and hasattr(aiotoggles, "Toggle")):
        log.warning("kopf's ToggleSet changed shape; its start-up fix is not applied")
        return
    cls.make_toggle = _make_toggle
    cls.drop_toggle = _drop_toggle
    cls.drop_toggles = _drop_toggles
    _APPLIED = True
