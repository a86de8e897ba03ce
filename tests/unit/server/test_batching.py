"""The dynamic batcher under concurrency, with a test-double model in its worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest

from model_server.batching import Batcher, Predict
from model_server.errors import InternalError, InvalidInput, ServerBusy, Timeout


class Model:
    """Records batch sizes; can block until released; rejects rows containing -1."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.gate.wait(10)
        x = inputs["x"]
        if (x == -1).any():
            raise InvalidInput("row contains -1")
        self.batches.append(x.shape[0])
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        return {"y": x * 10, "rowsum": x.sum(axis=1)}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def batcher_for(model: Predict, **options: Any) -> AsyncIterator[Batcher]:
    """A started Batcher around `model`, stopped when the block ends."""
    batcher = Batcher(model, **options)
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


def submit_task(batcher: Batcher, x: np.ndarray) -> asyncio.Future[dict[str, np.ndarray]]:
    """`x` submitted as input "x" in a task of its own, already under way."""
    return asyncio.ensure_future(batcher.submit({"x": x}))


def test_each_caller_gets_its_own_rows_under_concurrency() -> None:
    model = Model(delay_s=0.005)

    async def main() -> None:
        async with batcher_for(model, max_batch_size=8, max_delay_s=0.002) as b:
            # callers with 1 to 3 rows each, all different values
            reqs = [np.full((1 + i % 3, 2), i, dtype=np.float32) for i in range(40)]
            outs = await asyncio.gather(*(b.submit({"x": r}) for r in reqs))
        for r, out in zip(reqs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], r * 10)
            np.testing.assert_array_equal(out["rowsum"], r.sum(axis=1))

    run(main())
    assert sum(model.batches) == sum(1 + i % 3 for i in range(40))
    assert max(model.batches) > 3  # requests were merged
    assert max(model.batches) <= 8  # and never beyond the limit
    assert model.threads == {"model_0"}  # one worker thread


def test_idle_request_dispatches_at_once_alone() -> None:
    model = Model()

    async def main() -> None:
        # a huge delay must not apply
        async with batcher_for(model, max_batch_size=8, max_delay_s=5.0) as b:
            out = await asyncio.wait_for(b.submit({"x": np.ones((1, 2), np.float32)}), 2.0)
        np.testing.assert_array_equal(out["y"], [[10, 10]])

    run(main())
    assert model.batches == [1]


def test_batching_off_runs_one_request_per_batch() -> None:
    model = Model()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=1) as b:
            await asyncio.gather(*(b.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(6)))

    run(main())
    assert model.batches == [1] * 6


def test_incompatible_shapes_are_not_merged() -> None:
    model = Model()
    model.gate.clear()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=16) as b:
            first = submit_task(b, np.ones((1, 2), np.float32))
            await asyncio.sleep(0.05)  # first is running (blocked); queue the rest
            others = [submit_task(b, np.ones((1, w), np.float32)) for w in (2, 3, 2, 3)]
            await asyncio.sleep(0.05)
            model.gate.set()
            outs = await asyncio.gather(first, *others)
        assert [o["y"].shape for o in outs] == [(1, 2), (1, 2), (1, 3), (1, 2), (1, 3)]

    run(main())
    assert sorted(model.batches) == [1, 2, 2]


def test_full_queue_sheds_load_with_retry_after() -> None:
    model = Model()
    model.gate.clear()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=1, max_queue=2) as b:
            running = submit_task(b, np.ones((1, 2), np.float32))
            await asyncio.sleep(0.05)
            queued = [submit_task(b, np.ones((1, 2), np.float32)) for _ in range(2)]
            await asyncio.sleep(0.01)
            assert b.queue_depth == 2
            with pytest.raises(ServerBusy) as info:
                await b.submit({"x": np.ones((1, 2), np.float32)})
            assert info.value.status_code == 503
            assert info.value.headers() == {"Retry-After": "1"}
            model.gate.set()
            await asyncio.gather(running, *queued)

    run(main())
    assert model.batches == [1, 1, 1]


def test_timeout_is_504_and_drops_the_waiting_request() -> None:
    model = Model()
    model.gate.clear()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=4, timeout_s=0.1) as b:
            blocked = submit_task(b, np.ones((1, 2), np.float32))
            await asyncio.sleep(0.02)
            with pytest.raises(Timeout) as info:
                await b.submit({"x": np.full((1, 2), 5, np.float32)})
            assert info.value.status_code == 504
            with pytest.raises(Timeout):
                await blocked
            model.gate.set()
            out = await b.submit({"x": np.full((1, 2), 7, np.float32)})
            np.testing.assert_array_equal(out["y"], [[70, 70]])

    run(main())
    # the timed-out queued request (value 5) never reached the model
    assert model.batches == [1, 1]


def test_one_invalid_request_does_not_fail_its_batch_mates() -> None:
    model = Model()
    model.gate.clear()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=8) as b:
            first = submit_task(b, np.zeros((1, 2), np.float32))
            await asyncio.sleep(0.05)
            good = [submit_task(b, np.full((1, 2), i, np.float32)) for i in (1, 2)]
            bad = submit_task(b, np.full((1, 2), -1, np.float32))
            await asyncio.sleep(0.01)
            model.gate.set()
            outs = await asyncio.gather(first, *good)
            with pytest.raises(InvalidInput, match="row contains -1"):
                await bad
            assert [float(o["y"][0, 0]) for o in outs] == [0.0, 10.0, 20.0]

    run(main())


def test_model_crash_is_internal_error_and_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA exploded")
        return {"y": inputs["x"]}

    async def main() -> None:
        async with batcher_for(flaky, max_batch_size=4) as b:
            with pytest.raises(InternalError, match="CUDA exploded"):
                await b.submit({"x": np.ones((1, 2), np.float32)})
            out = await b.submit({"x": np.ones((1, 2), np.float32)})
            assert out["y"].shape == (1, 2)

    run(main())


def test_follow_on_batch_waits_up_to_max_delay_for_more() -> None:
    model = Model()
    model.gate.clear()

    async def main() -> None:
        async with batcher_for(model, max_batch_size=8, max_delay_s=1.0) as b:
            first = submit_task(b, np.zeros((1, 2), np.float32))
            await asyncio.sleep(0.05)  # first runs alone (idle server) and blocks
            a = submit_task(b, np.ones((1, 2), np.float32))
            await asyncio.sleep(0.01)
            model.gate.set()  # first finishes; a's batch is not full and may wait for more
            await asyncio.sleep(0.1)
            c = submit_task(b, np.full((1, 2), 2, np.float32))
            outs = await asyncio.gather(first, a, c)
        assert [float(o["y"][0, 0]) for o in outs] == [0.0, 10.0, 20.0]

    run(main())
    assert model.batches == [1, 2]  # a and c were merged although c came 0.1 s later
