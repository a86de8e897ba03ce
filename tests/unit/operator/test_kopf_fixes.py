"""kopf's ToggleSet with ``kopf_fixes`` applied: waiters wake exactly when the set flips."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles
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
