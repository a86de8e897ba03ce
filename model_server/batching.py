"""Dynamic batching: requests queue here and reach the model in batches, in one worker thread.

Policy
- A request that arrives while the model is idle is dispatched at once (no idle penalty).
- While a batch runs, new requests queue; when it finishes, the queued requests that share
  input names, datatypes and per-row shapes are merged along axis 0, up to `max_batch_size`
  rows. If that follow-on batch is not full, it may wait until its oldest request is
  `max_delay_s` old for more to arrive.
- The queue is bounded: beyond `max_queue` waiting requests, `submit` raises ServerBusy
  (503 + Retry-After) instead of growing without bound.
- Every request has a timeout (Timeout, 504); a request that timed out before dispatch is
  dropped from the queue.
- Each caller gets its own rows of every output back. If a merged batch is rejected as
  invalid input, its requests are retried one by one so only the bad one fails.

The model runs in a single worker thread (`run_exclusive` lets the generate endpoint share
it), so backends never see concurrent calls and the event loop never blocks on the model.
One exception keeps tiny models fast: when the model's measured time per batch (a moving
average) stays below `inline_below_s` (default 0.3 ms), batches run directly on the event
loop, because the hand-off to a thread and back costs more than the model itself. A slower
batch raises the average and sends the next ones back to the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any, TypeVar

import numpy as np

from model_server.errors import InternalError, InvalidInput, ServerBusy, ServerError, Timeout

log = logging.getLogger(__name__)

Predict = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
T = TypeVar("T")


class _Item:
    __slots__ = ("arrival", "future", "inputs", "rows", "signature")

    def __init__(self, inputs: Mapping[str, np.ndarray], future: asyncio.Future[Any]) -> None:
        self.inputs = inputs
        self.future = future
        self.arrival = time.monotonic()
        self.rows = _rows(inputs)
        self.signature = tuple(
            (name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(inputs.items())
        )


class Batcher:
    """Queue + dispatcher for one model. Create, `start()` inside the event loop, `stop()`."""

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.0,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        on_batch: Callable[[int], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        inline_below_s: float = 0.0003,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or timeout_s <= 0 or max_delay_s < 0:
            raise ValueError("batcher limits must be positive")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._queue: deque[_Item] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inline_below_s = inline_below_s
        self._avg_s: float | None = None  # moving average of the model's time per batch
        self._inline = False  # that average is known and below inline_below_s
        self._exclusive = 0  # run_exclusive calls in flight (never run inline beside them)
        self._busy = False  # a batch is being executed

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop dispatching, fail whatever still waits, release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ServerBusy("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # requests ----------------------------------------------------------------------------
    def run_now(self, inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray] | None:
        """Run a tiny model at once on the event loop when it is idle; None: use `submit`.

        The request's own outputs (or its error), without a queue, a future or a thread hop,
        when nothing waits or runs and the model's moving average is below `inline_below_s`.
        The call is synchronous, so nothing else on the loop can queue or run beside it.
        """
        if self._queue or self._busy or self._exclusive or not self._inline:
            return None
        on_batch = self._on_batch
        if on_batch is not None:
            on_batch(rows)
        try:
            outputs = self._timed_predict(inputs)
        except ServerError:
            raise
        except Exception as exc:
            log.exception("The model failed on a batch of %d rows", rows)
            raise InternalError(f"the model failed: {type(exc).__name__}: {exc}") from exc
        for name, arr in outputs.items():
            shape = arr.shape
            if not shape or shape[0] != rows:
                raise InternalError(
                    f"the model returned output {name!r} without the batch dimension"
                )
        return outputs

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request (arrays batched along axis 0): its own outputs, at once or queued."""
        if self._wakeup is None or self._loop is None:
            raise RuntimeError("Batcher.start() was not called")
        outputs = self.run_now(inputs, _rows(inputs))
        if outputs is None:
            outputs = await self.enqueue(inputs)
        return outputs

    async def enqueue(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request and wait for its own outputs (callers that tried `run_now`)."""
        if self._wakeup is None or self._loop is None:
            raise RuntimeError("Batcher.start() was not called")
        queue = self._queue
        if len(queue) >= self.max_queue:
            raise ServerBusy(
                f"the request queue is full ({self.max_queue} waiting); retry later",
                retry_after_s=1,
            )
        future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
        queue.append(_Item(inputs, future))
        if self._on_queue_depth is not None:
            self._on_queue_depth(len(queue))
        self._wakeup.set()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise Timeout(
                f"the model did not answer within {self.timeout_s:g} s "
                "(MODEL_SERVER_REQUEST_TIMEOUT_S)"
            ) from None

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the model's worker thread (serialised with batches)."""
        loop = asyncio.get_running_loop()
        self._exclusive += 1
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            self._exclusive -= 1

    def run_later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)` on the model's worker thread without waiting (clean-up that
        must not run beside a call still in progress, e.g. closing an abandoned stream)."""
        self._executor.submit(fn, *args)

    # dispatcher --------------------------------------------------------------------------
    def _take(self, batch: list[_Item], rows: int) -> int:
        """Move queued requests compatible with `batch` into it, up to max_batch_size rows."""
        keep: deque[_Item] = deque()
        queue = self._queue
        while queue:
            item = queue.popleft()
            if item.future.done():  # timed out or cancelled while waiting
                continue
            if not batch:
                batch.append(item)
                rows = item.rows
                continue
            if item.signature == batch[0].signature and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
                if rows >= self.max_batch_size:
                    break
            else:
                keep.append(item)
        if keep:
            keep.extend(queue)
            self._queue = keep
        if self._on_queue_depth is not None:
            self._on_queue_depth(len(self._queue))
        return rows

    async def _run(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            idle = False
            if not self._queue:
                wakeup.clear()
                await wakeup.wait()
                idle = True
            batch: list[_Item] = []
            rows = self._take(batch, 0)
            if not batch:
                continue
            self._busy = True  # from here until the batch is done: no inline runs beside it
            try:
                if not idle and self.max_delay_s > 0 and rows < self.max_batch_size:
                    rows = await self._fill(batch, rows)
                await self._execute(batch, rows)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ServerBusy("the server is shutting down"))
                raise
            except Exception:  # never let the dispatcher die
                log.exception("Batch dispatch failed")
            finally:
                self._busy = False

    async def _fill(self, batch: list[_Item], rows: int) -> int:
        """Wait until the oldest request is max_delay old, taking compatible arrivals."""
        assert self._wakeup is not None
        deadline = batch[0].arrival + self.max_delay_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            rows = self._take(batch, rows)
        return rows

    async def _execute(self, batch: list[_Item], rows: int) -> None:
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([item.inputs[name] for item in batch], axis=0)
                for name in batch[0].inputs
            }
        if self._on_batch is not None:
            self._on_batch(rows)
        try:
            if self._inline and not self._exclusive:
                outputs = self._timed_predict(inputs)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, self._timed_predict, inputs)
        except InvalidInput as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._execute([item], item.rows)
                return
            _fail(batch, exc)
            return
        except ServerError as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            log.exception("The model failed on a batch of %d rows", rows)
            _fail(batch, InternalError(f"the model failed: {type(exc).__name__}: {exc}"))
            return
        if len(batch) == 1:
            item = batch[0]
            bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != rows]
            if bad:
                _fail(
                    batch,
                    InternalError(f"the model returned outputs {bad} without the batch dimension"),
                )
            elif not item.future.done():
                item.future.set_result(outputs)
            return
        bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != rows]
        if bad:
            _fail(batch, InternalError(f"the model returned outputs {bad} without {rows} rows"))
            return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result({n: a[start:end] for n, a in outputs.items()})
            start = end

    def _timed_predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = perf_counter()
        try:
            return self._predict(inputs)
        finally:
            took = perf_counter() - started
            avg = self._avg_s
            avg = took if avg is None else 0.8 * avg + 0.2 * took
            self._avg_s = avg
            self._inline = avg < self.inline_below_s


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Batch size of a request: the first axis of its (first) input."""
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def _fail(batch: list[_Item], exc: ServerError) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
