"""The operator's work queue: coalescing, delaying, one worker per key (like client-go's).

* ``add(key, delay)`` queues ``key`` to be handed out ``delay`` seconds from now; a key is in
  the queue at most once, and a second ``add`` keeps the *earlier* due time (an event that
  needs a pass now overtakes a timed requeue; a burst of events costs one pass);
* ``get()`` waits for the next due key and marks it processing; a key is never handed to two
  workers at once: added again while processing, it is handed out after ``done(key)``;
* ``done(key)`` ends the processing of ``key``;
* ``idle()`` waits until nothing is queued or processing (e.g. the start-up pass is over).

Pure asyncio, no kopf: ``runtime.Runtime`` feeds it from watch events, resyncs, retries with
backoff and the rollout's requeue-after.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._processing: set[K] = set()
        self._again: dict[K, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def __len__(self) -> int:
        return len(self._due) + len(self._again)

    def __contains__(self, key: object) -> bool:
        return key in self._due or key in self._again

    def due_in(self, key: K) -> float | None:
        """Seconds until ``key`` is due (None when not queued)."""
        due = self._due.get(key, self._again.get(key))
        return None if due is None else max(0.0, due - self._now())

    def add(self, key: K, delay: float = 0.0) -> None:
        due = self._now() + max(0.0, delay)
        if key in self._processing:
            if key not in self._again or due < self._again[key]:
                self._again[key] = due
            self._idle.clear()
            return
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        self._idle.clear()
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wakeup.set()

    async def get(self) -> K:
        while True:
            now = self._now()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._due.get(key) != due:
                    continue  # superseded by an earlier add
                del self._due[key]
                self._processing.add(key)
                return key
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives in the same loop step as the wakeup, and a stopping worker would
            # go on to take the next key.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def done(self, key: K) -> None:
        self._processing.discard(key)
        due = self._again.pop(key, None)
        if due is not None:
            self.add(key, max(0.0, due - self._now()))
        elif not self._due and not self._processing:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until no key is queued (due now or later) and none is processing."""
        await self._idle.wait()
