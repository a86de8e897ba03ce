"""Batched text generation: concurrent streams with the same settings share one `generate` call.

A generation step of a small or medium model costs about the same for one sequence as for
eight, so eight clients streaming at once are served best by one forward pass per step for
all of them (what TGI and vLLM do with continuous batching; this is the static form: a batch
starts, runs to its longest row, and requests arriving meanwhile form the next batch).

`GenerationBatcher` owns one thread that drives the model; `submit` returns a `Stream`, an
async iterator of text pieces for the caller's event loop. Requests are grouped by a key
(the generation settings without `max_new_tokens`; a seeded request gets a key of its own so
its sampling stays reproducible). The batch collector waits briefly for companions: until
`max_batch` requests are pending, no request arrived for `quiet_s`, or `window_s` passed since
the first one. A client that goes away (`aclose`) marks its row cancelled; the runner stops
feeding it and ends the batch early when every row is cancelled or done.

Framework-free: the runner (`run(streams)`) is the backend's; it calls `Stream.push` for
each piece and `Stream.finish` when a row ends. This module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

log = logging.getLogger(__name__)

_END = object()


class Stream:
    """One request's text pieces, produced on the batcher thread, consumed on an event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt: str, kwargs: Mapping[str, Any],
                 key: Hashable, max_new_tokens: int, seed: int | None = None) -> None:
        self.prompt = prompt
        self.kwargs = dict(kwargs)
        self.key = key
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._finished = False
        self.tokens = 0
        """Tokens generated for this row so far (the runner counts them)."""

    # producer side (batcher thread) -----------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def push(self, piece: str) -> None:
        if piece and not self._finished:
            self._put(piece)

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream (once): normally, or with the error the consumer will raise."""
        if not self._finished:
            self._finished = True
            self._put(_END if error is None else error)

    def _put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # consumer side (event loop) ----------------------------------------------------------
    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return str(item)

    async def aclose(self) -> None:
        """The consumer is done (or went away): the runner stops generating for this row."""
        self._cancelled.set()


Runner = Callable[[list[Stream]], None]


class GenerationBatcher:
    """Collects streams into batches and runs them, one batch at a time, on its own thread."""

    def __init__(self, run: Runner, *, max_batch: int = 8, window_s: float = 0.02,
                 quiet_s: float = 0.003) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self.quiet_s = quiet_s
        self._pending: list[tuple[float, Stream]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # how many batches ran (tests and logs read it)
        self.largest_batch = 0

    def submit(self, prompt: str, kwargs: Mapping[str, Any], *, max_new_tokens: int,
               seed: int | None = None) -> Stream:
        """Queue a request; call on the event loop that will consume the returned stream."""
        loop = asyncio.get_running_loop()
        settings = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        key: Hashable = settings if seed is None else (settings, object())
        stream = Stream(loop, prompt, kwargs, key, max_new_tokens, seed)
        with self._cv:
            if self._closed:
                raise RuntimeError("the generation batcher is stopped")
            self._pending.append((time.monotonic(), stream))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="generate-batches",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()
        return stream

    def close(self) -> None:
        """Stop after the running batch; pending streams end with an error."""
        with self._cv:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cv.notify()
        for _, stream in pending:
            stream.finish(RuntimeError("the server is shutting down"))

    # batcher thread -------------------------------------------------------------------------
    def _take_batch(self) -> list[Stream] | None:
        """Wait for a batch worth running (None once closed)."""
        with self._cv:
            while True:
                if self._closed:
                    return None
                self._pending = [(t, s) for t, s in self._pending if not s.cancelled]
                if not self._pending:
                    self._cv.wait()
                    continue
                first_key = self._pending[0][1].key
                group = [(t, s) for t, s in self._pending if s.key == first_key]
                now = time.monotonic()
                oldest, newest = group[0][0], group[-1][0]
                full = len(group) >= self.max_batch
                settled = now - newest >= self.quiet_s
                late = now - oldest >= self.window_s
                if full or settled or late:
                    chosen = [s for _, s in group[: self.max_batch]]
                    taken = set(map(id, chosen))
                    self._pending = [(t, s) for t, s in self._pending if id(s) not in taken]
                    return chosen
                wait = min(self.quiet_s - (now - newest), self.window_s - (now - oldest))
                self._cv.wait(timeout=max(wait, 0.0005))

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                self._run(batch)
            except BaseException as exc:  # every row learns why; the thread keeps serving
                log.exception("generation batch of %d failed", len(batch))
                for stream in batch:
                    stream.finish(exc)
            else:
                for stream in batch:
                    stream.finish()
