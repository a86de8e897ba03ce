"""The work queue: coalescing, earliest due time wins, delays, one worker per key."""

from __future__ import annotations

import asyncio

import pytest
from msv_operator.workqueue import WorkQueue


async def next_key(q: WorkQueue[str], timeout: float = 2.0) -> str:
    return await asyncio.wait_for(q.get(), timeout)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_adds_of_a_queued_key_coalesce() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        assert {await next_key(q), await next_key(q)} == {"a", "b"}
        assert len(q) == 0
        with pytest.raises(TimeoutError):
            await next_key(q, 0.05)
    run(main())


def test_a_delayed_key_is_not_handed_out_before_it_is_due_and_earlier_add_wins() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("timed", 30.0)
        due = q.due_in("timed")
        assert due is not None and 29 < due <= 30
        with pytest.raises(TimeoutError):
            await next_key(q, 0.05)
        q.add("timed", 60.0)  # a later add does not postpone it
        due = q.due_in("timed")
        assert due is not None and due <= 30
        q.add("timed")  # an event that needs a pass now overtakes the timer
        assert await next_key(q) == "timed"
        assert q.due_in("timed") is None
    run(main())


def test_short_delay_is_handed_out_after_the_delay() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        q.add("k", 0.05)
        assert await next_key(q) == "k"
        assert loop.time() - start >= 0.05
    run(main())


def test_a_key_is_never_processed_twice_at_once() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("k")
        assert await next_key(q) == "k"
        q.add("k")  # changed while processing
        with pytest.raises(TimeoutError):
            await next_key(q, 0.05)  # a second worker does not get it
        assert "k" in q
        q.done("k")
        assert await next_key(q) == "k"  # handed out again after done
        q.done("k")
        assert len(q) == 0
    run(main())


def test_waiting_workers_wake_for_a_new_key() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        workers = [asyncio.create_task(q.get()) for _ in range(3)]
        await asyncio.sleep(0)
        q.add("x")
        done, pending = await asyncio.wait(workers, timeout=1.0,
                                           return_when=asyncio.FIRST_COMPLETED)
        assert [t.result() for t in done] == ["x"]
        for t in pending:
            t.cancel()
    run(main())


def test_idle_waits_until_nothing_is_queued_or_processing() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        await asyncio.wait_for(q.idle(), 1)  # a new queue is idle
        q.add("a")
        q.add("b", 0.05)
        idle = asyncio.create_task(q.idle())
        assert await next_key(q) == "a"
        q.add("a")  # queued again while processing: handed out after done()
        q.done("a")
        await asyncio.sleep(0)
        assert not idle.done()
        assert await next_key(q) == "a"
        q.done("a")
        assert await next_key(q) == "b"  # the delayed key still counted
        await asyncio.sleep(0)
        assert not idle.done()
        q.done("b")
        await asyncio.wait_for(idle, 1)
    run(main())


def test_a_worker_cancelled_as_a_key_arrives_stops() -> None:
    """The cancellation of a worker waiting in get() wins over a wakeup in the same loop
    step (a stopping operator must not go on taking keys)."""

    async def main() -> None:
        for _ in range(50):
            q: WorkQueue[str] = WorkQueue()
            q.add("later", 100.0)  # a timed wait, not an untimed one
            taken: list[str] = []

            async def worker(q: WorkQueue[str] = q, taken: list[str] = taken) -> None:
                while True:
                    taken.append(await q.get())

            task = asyncio.create_task(worker())
            await asyncio.sleep(0)
            q.add("now")
            task.cancel()
            await asyncio.sleep(0.01)
            assert task.done(), "the worker survived its cancellation"
            assert taken == []

    run(main())
