"""kopf with ``kopf_fixes`` applied: waiters wake exactly when the set flips; the index gate;
lean watch events.

The first tests guard the patches themselves: ``kopf_fixes`` replaces kopf internals, so the
installed kopf must be the version pinned in pyproject.toml, and every internal the patches
replace, wrap or rely on must still have the shape they were written against. When one of
these fails after a kopf upgrade, read the upgrade note in ``kopf_fixes``' docstring.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._core.reactor import orchestration, processing, queueing
from msv_operator import kopf_fixes

ROOT = Path(__file__).resolve().parents[3]
UPGRADE = ("kopf_fixes patches kopf internals; see 'Upgrading kopf' in "
           "operator/msv_operator/kopf_fixes.py")


def _pinned_kopf() -> str:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["operator"]
    pins = [r for r in extra if re.match(r"kopf\b", r)]
    assert len(pins) == 1, f"pyproject.toml's operator extra names kopf once: {pins}"
    name, sep, version = pins[0].partition("==")
    assert sep and name.strip() == "kopf" and re.fullmatch(r"[0-9][0-9a-z.]*", version), (
        f"pyproject.toml pins kopf exactly (kopf==X.Y.Z), not {pins[0]!r}: {UPGRADE}")
    return version


def _pristine(module: ModuleType) -> ModuleType:
    """A fresh copy of a kopf module, executed from its file: kopf's own code, whatever the
    patches (applied once per process) did to the imported one."""
    spec = importlib.util.spec_from_file_location(f"_pristine_{module.__name__}",
                                                  module.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    """Name (unmangled: ``_ToggleSet__val`` is ``__val``), kind and default of each parameter."""
    return [(re.sub(r"^_[A-Za-z]+(?=__)", "", p.name), p.kind, p.default)
            for p in inspect.signature(fn).parameters.values()]


def test_the_installed_kopf_is_the_pinned_version() -> None:
    pinned = _pinned_kopf()
    installed = importlib.metadata.version("kopf")
    assert installed == pinned, (
        f"kopf {installed} is installed but pyproject.toml pins kopf=={pinned}: {UPGRADE}")
    locked = re.findall(r"^kopf==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert locked == [pinned], (
        f"constraints.txt locks kopf {locked}, pyproject.toml pins {pinned}: {UPGRADE}")


def test_the_toggle_set_methods_the_patches_replace_keep_their_signatures() -> None:
    """``make_toggle``, ``drop_toggle``, ``drop_toggles`` and ``wait_for`` are replaced by
    functions taking the same arguments; they use ``_toggles`` (a set), ``_condition``,
    ``_fn``, ``is_on()`` and make ``Toggle(state, name=, condition=)``."""
    kopf_toggles = _pristine(aiotoggles)
    original = kopf_toggles.ToggleSet
    ours = {"make_toggle": kopf_fixes._make_toggle, "drop_toggle": kopf_fixes._drop_toggle,
            "drop_toggles": kopf_fixes._drop_toggles, "wait_for": kopf_fixes._wait_for}
    for name, replacement in ours.items():
        kopf_fn = getattr(original, name, None)
        assert kopf_fn is not None, f"kopf's ToggleSet has no {name}() any more: {UPGRADE}"
        assert inspect.iscoroutinefunction(kopf_fn), (
            f"ToggleSet.{name} is no longer async: {UPGRADE}")
        assert _params(kopf_fn) == _params(replacement), (
            f"ToggleSet.{name}{inspect.signature(kopf_fn)} changed; kopf_fixes replaces it "
            f"with {inspect.signature(replacement)}: {UPGRADE}")
    probe = original(all)
    assert isinstance(getattr(probe, "_toggles", None), set), f"ToggleSet._toggles: {UPGRADE}"
    assert isinstance(getattr(probe, "_condition", None), asyncio.Condition), (
        f"ToggleSet._condition: {UPGRADE}")
    assert getattr(probe, "_fn", None) is all, f"ToggleSet._fn: {UPGRADE}"
    assert probe.is_on() is True, "an empty ToggleSet(all) is on"
    toggle = inspect.signature(kopf_toggles.Toggle)
    first = next(iter(toggle.parameters.values()))
    assert first.kind in (inspect.Parameter.POSITIONAL_ONLY,
                          inspect.Parameter.POSITIONAL_OR_KEYWORD), (
        f"Toggle{toggle} no longer takes its state first: {UPGRADE}")
    for keyword in ("name", "condition"):
        assert toggle.parameters.get(keyword) is not None and toggle.parameters[
            keyword].kind is inspect.Parameter.KEYWORD_ONLY, (
            f"Toggle{toggle} lost its keyword {keyword!r}: {UPGRADE}")


def test_the_watch_stream_the_patch_wraps_keeps_its_keywords_and_bookmark() -> None:
    """``_lean_watch(**kwargs)`` passes every argument on and reads ``resource`` and
    ``namespace``; it reports ``Bookmark.LISTED`` to the gate."""
    kopf_watching = _pristine(watching)
    fn = getattr(kopf_watching, "infinite_watch", None)
    assert fn is not None, f"kopf's watching.infinite_watch is gone: {UPGRADE}"
    assert inspect.isasyncgenfunction(fn), (
        f"watching.infinite_watch is no async generator: {UPGRADE}")
    params = inspect.signature(fn).parameters
    positional = [p for p in params.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, (
        f"watching.infinite_watch{inspect.signature(fn)} takes positional arguments; "
        f"kopf_fixes passes keywords only: {UPGRADE}")
    assert {"resource", "namespace"} <= set(params), (
        f"watching.infinite_watch{inspect.signature(fn)}: {UPGRADE}")
    assert hasattr(getattr(kopf_watching, "Bookmark", None), "LISTED"), (
        f"watching.Bookmark.LISTED is gone: {UPGRADE}")


def _source(fn: Any) -> str:
    return re.sub(r"\s+", " ", inspect.getsource(fn))


def test_kopf_calls_the_patched_internals_where_the_patches_expect() -> None:
    """The patches only act if kopf looks them up at call time and uses them as written
    against: the index set is the one ``ToggleSet(all)`` (the gate binds to it); each
    object's worker waits on it with ``wait_for(True)`` (the gate's run skips that wait);
    the watcher reads ``watching.infinite_watch`` through the module (so the lean stream is
    the one it iterates) and drops a kind's toggle on ``Bookmark.LISTED``."""
    package = Path(kopf.__file__).parent
    index_sets = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                        if "ToggleSet(all)" in p.read_text())
    assert index_sets == ["_core/reactor/orchestration.py"], (
        f"kopf makes a ToggleSet(all) in {index_sets}; kopf_fixes binds the IndexGate to the "
        f"first one made after it (the index set of kopf.operator's run): {UPGRADE}")
    assert "operator_indexed=aiotoggles.ToggleSet(all)" in _source(
        orchestration.orchestrator), f"orchestrator's index set: {UPGRADE}"
    assert "await operator_indexed.wait_for(True)" in _source(
        processing.process_resource_event), f"the object workers' index wait: {UPGRADE}"
    watcher = _source(queueing.watcher)
    assert "watching.infinite_watch(" in watcher and queueing.watching is watching, (
        f"queueing.watcher no longer calls watching.infinite_watch through the module: "
        f"{UPGRADE}")
    assert not hasattr(queueing, "infinite_watch"), f"queueing imports infinite_watch: {UPGRADE}"
    assert "watching.Bookmark.LISTED" in watcher, f"the watcher's LISTED bookmark: {UPGRADE}"
    assert "operator_indexed.make_toggle(" in watcher, f"the watcher's object toggles: {UPGRADE}"


def test_apply_patches_what_kopf_calls() -> None:
    """``apply()`` leaves a kopf of another shape alone (a warning, a slow start): here that
    is a failure. Once applied, what kopf looks up is kopf_fixes' code."""
    kopf_fixes.apply()
    assert kopf_fixes.applied(), f"kopf_fixes.apply() found kopf changed and did nothing: {UPGRADE}"
    toggle_set = queueing.aiotoggles.ToggleSet
    assert toggle_set.make_toggle is kopf_fixes._make_toggle
    assert toggle_set.drop_toggle is kopf_fixes._drop_toggle
    assert toggle_set.drop_toggles is kopf_fixes._drop_toggles
    assert toggle_set.wait_for is kopf_fixes._wait_for
    assert queueing.watching.infinite_watch is kopf_fixes._lean_watch
    assert kopf_fixes._ORIGINAL_WAIT_FOR is not kopf_fixes._wait_for
    assert kopf_fixes._ORIGINAL_WATCH is not kopf_fixes._lean_watch

    resource = _Resource("services")

    async def upstream(**kwargs: object):  # type: ignore[no-untyped-def]
        assert kwargs == {"settings": "s", "resource": resource, "namespace": "ns"}
        yield {"type": "ADDED", "object": {"metadata": {"name": "a", "managedFields": [{}]}}}
        yield watching.Bookmark.LISTED

    async def watched() -> list[Any]:
        # what kopf's watcher iterates: the module attribute, called with keywords
        stream = queueing.watching.infinite_watch(settings="s", resource=resource,
                                                  namespace="ns")
        return [e async for e in stream]

    original, kopf_fixes._ORIGINAL_WATCH = kopf_fixes._ORIGINAL_WATCH, upstream
    try:
        events = asyncio.run(watched())
    finally:
        kopf_fixes._ORIGINAL_WATCH = original
    assert events == [{"type": "ADDED", "object": {"metadata": {"name": "a"}}},
                      watching.Bookmark.LISTED]


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


def test_a_cluster_scoped_kind_is_expected_once_without_a_namespace() -> None:
    """Nodes (GPU fit) are listed once whatever namespaces are watched."""
    async def scenario() -> None:
        gate = kopf_fixes.IndexGate(["modelservices"], ["ns-a", "ns-b"],
                                    cluster_plurals=["nodes"])
        for namespace in ("ns-a", "ns-b"):
            gate._listed_one("modelservices", namespace)
        assert gate.waiting_for() == "kopf to start watching"
        gate._bind(aiotoggles.ToggleSet(all))
        assert gate.waiting_for() == "the first list of nodes"
        gate._listed_one("nodes", None)
        assert gate.waiting_for() == "kopf to index the listed objects"
        assert gate.is_open()  # the (empty) set is on

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
