"""Fixes to kopf internals that the operator's scale needs (applied once by ``handlers``).

* **Wake-ups.** kopf blocks every object's handlers until every index is filled: each
  object listed at start gets a toggle in one ``ToggleSet(all)``, drops it once indexed and
  then waits on the set's condition. Every ``make_toggle``/``drop_toggle`` wakes *every*
  waiter (``notify_all``), although the set's overall state (all on?) has not changed, so a
  start with N objects costs O(N²) coroutine wake-ups: about 10 s at 1,000 ModelServices and
  minutes at 5,000, all of it before the first reconcile. ``apply()`` makes the set notify
  only when its overall state flips, which is the only time a waiter's predicate can change.
  Waiters of a single ``Toggle`` (``turn_to``) are untouched.
* **No per-object wait at start (``IndexGate``).** While it waits, every listed object keeps
  a kopf worker task with its queue, loggers, patch and the whole decoded watch event: with
  5,000 ModelServices (20,000 watched objects) that was the restart's peak of 1.2 GB RSS.
  The operator's handlers only put a key on its own work queue, so nothing needs them to
  wait: an ``IndexGate`` made before ``kopf.operator`` binds to that run's index set, kopf's
  object workers then run their handlers at once and end, and the operator's work-queue
  workers wait on the gate instead. The gate opens once every expected resource (kind and
  namespace) has been listed *and* kopf's index set is on (every listed object indexed):
  kopf discovers API groups one by one, so its set alone can be on before the last kind's
  watch even starts. A pass still never runs on half-filled caches.
* **Lean watch events.** ``metadata.managedFields`` (often half of an object's JSON) is
  dropped from every watch event before kopf queues it; nothing in the operator reads it.

**Upgrading kopf.** These patches are written against the kopf version pinned exactly in
``pyproject.toml`` (the ``operator`` extra; ``constraints.txt`` holds the same version).
``apply()`` leaves a kopf of another shape alone with a warning, so an upgrade that moved
these internals would only make the start slow and memory-hungry again; the unit test makes
it fail loudly instead. To upgrade: bump the pin in ``pyproject.toml``, install and lock it
(``scripts/lock``, see its header), then run
``pytest tests/unit/operator/test_kopf_fixes.py``: it names every internal that moved (the
version, each patched ``ToggleSet`` method and ``watching.infinite_watch`` with their
signatures, and the kopf call sites that rely on them). Adapt this module until it passes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching

log = logging.getLogger("msv_operator.kopf_fixes")

_APPLIED = False
_ORIGINAL_WAIT_FOR: Any = None
_ORIGINAL_WATCH: Any = None
# The gate waiting to bind, per event loop (the next kopf run in that loop binds it), and
# the latest gate of each loop (its watch streams report their initial listings to it).
_PENDING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IndexGate] = \
    weakref.WeakKeyDictionary()
_CURRENT: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IndexGate] = \
    weakref.WeakKeyDictionary()
_GLOB = set("*?[!")


class IndexGate:
    """Opens once kopf has filled every index of the ``kopf.operator`` run started after it
    was made (in the same event loop). ``plurals``: the indexed resources; ``namespaces``:
    the watched namespaces (empty: cluster-wide; glob patterns: any namespace counts);
    ``cluster_plurals``: indexed cluster-scoped resources (listed once, without a namespace)."""

    def __init__(self, plurals: Iterable[str], namespaces: Iterable[str] = (),
                 cluster_plurals: Iterable[str] = ()) -> None:
        names = tuple(namespaces)
        self._any_namespace = not names or any(_GLOB & set(n) for n in names)
        self._expected = {(p, None if self._any_namespace else n)
                          for p in plurals for n in (names or (None,))}
        self._expected |= {(p, None) for p in cluster_plurals}
        self._listed: set[tuple[str, str | None]] = set()
        self._all_listed = asyncio.Event()
        self._set: Any = None
        self._bound = asyncio.Event()
        loop = asyncio.get_running_loop()
        _PENDING[loop] = _CURRENT[loop] = self
        if not self._expected:
            self._all_listed.set()

    def _listed_one(self, plural: str, namespace: str | None) -> None:
        self._listed.add((plural, None if self._any_namespace else namespace))
        if self._expected <= self._listed:
            self._all_listed.set()

    def _bind(self, toggles: Any) -> None:
        self._set = toggles
        self._bound.set()

    def owns(self, toggles: Any) -> bool:
        return self._set is toggles

    def is_open(self) -> bool:
        return (self._set is not None and self._all_listed.is_set()
                and bool(self._set.is_on()))

    async def wait(self) -> None:
        await self._bound.wait()
        await self._all_listed.wait()
        # Every object listed so far has its toggle in the set (kopf makes it before it
        # reads the next event): the set is on once each of them is indexed.
        await _ORIGINAL_WAIT_FOR(self._set, True)

    def waiting_for(self) -> str:
        """What keeps the gate closed, in words."""
        if self._set is None:
            return "kopf to start watching"
        missing = sorted(self._expected - self._listed, key=lambda e: (e[0], e[1] or ""))
        if missing:
            return "the first list of " + ", ".join(
                plural if ns is None else f"{plural} in namespace {ns}" for plural, ns in missing)
        return "kopf to index the listed objects"

    async def report(self, logger: logging.Logger, every: float = 30.0) -> None:
        """Until the gate opens, say every ``every`` seconds what it waits for: nothing is
        reconciled meanwhile, and a list that never arrives is usually missing RBAC."""
        waited = 0.0
        while True:
            try:
                await asyncio.wait_for(self.wait(), every)
            except TimeoutError:
                waited += every
                what = self.waiting_for()
                hint = (". A list that never arrives usually means the operator may not list "
                        "that kind there: check its RBAC (kubectl auth can-i list <kind> -n "
                        "<namespace> --as=system:serviceaccount:<operator namespace>:<service "
                        "account>)" if what.startswith("the first list") else
                        " (a large cluster takes a while)")
                logger.warning("No ModelService is reconciled yet: after %.0fs still waiting "
                               "for %s%s", waited, what, hint)
                continue
            if waited:
                logger.info("Every watched kind is listed and indexed after %.0fs: "
                            "reconciling", waited)
            return


def _gated(toggles: Any) -> bool:
    return getattr(toggles, "_msv_gate", None) is not None


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None
                       ) -> aiotoggles.Toggle:
    if self._fn is all and not _gated(self):
        # kopf's index set of a run (the only ToggleSet(all)): bind the pending gate.
        gate = _PENDING.pop(asyncio.get_running_loop(), None)
        if gate is not None:
            gate._bind(self)
            self._msv_gate = gate
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


async def _wait_for(self: Any, __state: bool) -> None:
    if __state and _gated(self):
        return  # an object worker of a gated run: the gate's owner waits instead
    await _ORIGINAL_WAIT_FOR(self, __state)


def lean_event(raw_event: Any) -> Any:
    """The watch event without ``metadata.managedFields`` (in place)."""
    if isinstance(raw_event, dict):
        obj = raw_event.get("object")
        if isinstance(obj, dict):
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                meta.pop("managedFields", None)
    return raw_event


async def _lean_watch(**kwargs: Any) -> AsyncIterator[Any]:
    stream = _ORIGINAL_WATCH(**kwargs)
    try:
        async for raw_event in stream:
            if raw_event is watching.Bookmark.LISTED:
                gate = _CURRENT.get(asyncio.get_running_loop())
                resource = kwargs.get("resource")
                if gate is not None and resource is not None:
                    gate._listed_one(str(resource.plural), kwargs.get("namespace"))
            yield lean_event(raw_event)
    finally:
        # Close kopf's stream here, in order: left to the event loop's finaliser it is
        # closed out of turn and its streaming block fails ("didn't stop after athrow").
        await stream.aclose()


def apply() -> None:
    """Patch ``kopf``'s ``ToggleSet`` and watch stream (idempotent); the semantics stay kopf's
    unless an ``IndexGate`` is made. A kopf whose internals no longer have the expected shape
    is left alone (slow, memory-hungry start, still correct)."""
    global _APPLIED, _ORIGINAL_WAIT_FOR, _ORIGINAL_WATCH
    if _APPLIED:
        return
    cls: Any = aiotoggles.ToggleSet
    probe = cls(all)
    if not (isinstance(getattr(probe, "_toggles", None), set)
            and hasattr(probe, "_condition") and hasattr(probe, "_fn")
            and hasattr(aiotoggles, "Toggle") and hasattr(watching, "infinite_watch")
            and hasattr(watching, "Bookmark")):
        log.warning("kopf's ToggleSet changed shape; its start-up fixes are not applied")
        return
    _ORIGINAL_WAIT_FOR = cls.wait_for
    _ORIGINAL_WATCH = watching.infinite_watch
    cls.make_toggle = _make_toggle
    cls.drop_toggle = _drop_toggle
    cls.drop_toggles = _drop_toggles
    cls.wait_for = _wait_for
    watching.infinite_watch = _lean_watch
    _APPLIED = True


def applied() -> bool:
    return _APPLIED
