"""The operator's per-process runtime: the work queue and its workers around ``reconcile``.

``handlers`` create one ``Runtime`` in kopf's startup handler and, from watch events, only
``enqueue`` keys; everything after that happens here:

* workers (``config.max_workers``) take keys from the coalescing ``WorkQueue`` (a key queued
  several times is one pass; one pass per key at a time) and run ``reconcile.reconcile`` in a
  thread pool on the ModelService and owned objects of kopf's caches (``cache.unpack``); no
  pass starts before the index gate opens (``kopf_fixes.IndexGate``);
* a pass's ``requeue_after`` (a timed rollout step, the next measurement) queues the key
  again, and so does the end of an artifact read a pass waited for (GPU fit,
  ``placement.HeaderReads.wake``, from the reading thread into the event loop);
  ``kube.Conflict``/``kube.Transient`` and every other error re-queue it after an
  exponential backoff (1 s, 2 s, 4 s, ... at most 60 s), reset by the next good pass;
* a resync loop queues every known ModelService every ``resync_seconds``, a capability
  watcher queues them all when ServiceMonitor/HTTPRoute/XBackendTrafficPolicy appear or
  disappear, and once the start-up burst is over the process hands its memory back
  (``memory.release``);
* each pass is counted into ``OperatorMetrics``, and its Events (``events.for_pass``, a
  variant's first start (``startup``), then the rollout's and the brownout's) are posted
  through ``kube.post_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from msv_contract.api import API_VERSION, KIND
from msv_operator import cache, conditions, events, kopf_fixes, kube, memory, prom, reconcile
from msv_operator.config import OperatorConfig
from msv_operator.metrics import OperatorMetrics
from msv_operator.workqueue import WorkQueue

log = logging.getLogger("msv_operator.runtime")

Key = tuple[str, str]
"""(namespace, name) of a ModelService."""


def now() -> str:
    return conditions.rfc3339(datetime.now(UTC))


class Runtime:
    """Per-process state: API facade, capability cache, caches, work queue, executor."""

    def __init__(self, config: OperatorConfig, metrics: OperatorMetrics,
                 client: kube.Kube | None = None, write_gate: Any = None,
                 index_gate: kopf_fixes.IndexGate | None = None) -> None:
        self.config = config
        self.index_gate = index_gate
        self.metrics = metrics
        self.kube = client or kube.Kube(config.field_manager, qps=config.qps, burst=config.burst,
                                        pool_size=max(4, config.max_workers * 2),
                                        write_gate=write_gate)
        analyzer = (prom.PrometheusAnalyzer(prom.Prometheus(config.prometheus_url,
                                                            config.prometheus_timeout))
                    if config.prometheus_url else None)
        self.ctx = reconcile.Context(config=config, kube=self.kube,
                                     capabilities=kube.Capabilities(self.kube,
                                                                    config.discovery_seconds),
                                     analyzer=analyzer)
        self.executor = ThreadPoolExecutor(max_workers=config.max_workers,
                                           thread_name_prefix="reconcile")
        self.indexes: dict[str, Any] = {}
        self.locks: dict[Key, asyncio.Lock] = {}
        self.queue: WorkQueue[Key] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.retries: dict[Key, int] = {}
        self.pod_summaries: dict[str, str] = {}
        self.triggers: dict[Key, tuple[Any, ...]] = {}

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.queue = WorkQueue()
        loop = asyncio.get_running_loop()

        def wake(key: Key) -> None:  # from a reading thread
            loop.call_soon_threadsafe(self.enqueue, key)
        self.ctx.gpu.reads.wake = wake
        self.ctx.pipeline.reads.wake = wake  # a MANIFEST or report read that ended
        self.tasks = [asyncio.create_task(self._worker(), name=f"msv-worker-{i}")
                      for i in range(self.config.max_workers)]
        self.tasks.append(asyncio.create_task(self._watch_capabilities(), name="msv-discovery"))
        self.tasks.append(asyncio.create_task(self._resync(), name="msv-resync"))
        self.tasks.append(asyncio.create_task(self._release_after_start(), name="msv-release"))
        if self.index_gate is not None:
            self.tasks.append(asyncio.create_task(self.index_gate.report(log),
                                                  name="msv-index-gate-report"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.executor.shutdown(wait=True, cancel_futures=True)
        for reads in (self.ctx.gpu.reads, self.ctx.pipeline.reads):
            reads.wake = None  # a read that ends later queues nothing
            reads.close()
        self.kube.close()

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Remember the kopf index objects (live views handed to every handler)."""
        self.indexes.update(kwargs)

    # ---- work queue -----------------------------------------------------------------------
    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        """Queue a pass of ``key`` in ``delay`` seconds (the earliest of several wins)."""
        if self.queue is not None:
            self.queue.add(key, delay)

    async def _worker(self) -> None:
        assert self.queue is not None
        if self.index_gate is not None:
            # kopf's handlers run while kopf still lists (they only queue keys): no pass
            # before every cache is filled, or it would re-create what it has not seen yet.
            await self.index_gate.wait()
        while True:
            key = await self.queue.get()
            try:
                result = await self.run(key)
                self.retries.pop(key, None)
                if result is not None and result.requeue_after is not None:
                    self.enqueue(key, result.requeue_after)  # a timed rollout step, an analysis
            except (kube.Conflict, kube.Transient) as e:
                delay = self._retry_later(key)
                log.warning("Retrying ModelService %s/%s in %.1fs: %s", key[0], key[1], delay, e)
            except Exception:
                log.exception("Reconcile of ModelService %s/%s failed", *key)
                self._retry_later(key)
            finally:
                self.queue.done(key)

    def _retry_later(self, key: Key) -> float:
        """Re-queue ``key`` after an exponential backoff (1 s, 2 s, 4 s, ... at most 60 s)."""
        attempt = self.retries.get(key, 0) + 1
        self.retries[key] = attempt
        delay = min(60.0, 0.5 * 2 ** attempt)
        self.enqueue(key, delay)
        return delay

    async def _release_after_start(self) -> None:
        """Once the first pass of everything listed at start is over, hand the memory of
        that burst back (``memory.release``): a lower RSS for the rest of the process."""
        assert self.queue is not None
        if self.index_gate is not None:
            await self.index_gate.wait()
        await asyncio.sleep(0)  # let the workers take the first keys
        await self.queue.idle()
        memory.release()

    async def _watch_capabilities(self) -> None:
        loop = asyncio.get_running_loop()
        previous = None
        while True:
            try:
                answer = await loop.run_in_executor(self.executor, self.ctx.capabilities.get)
                if previous is not None and answer != previous:
                    for key in self.known():
                        self.enqueue(key)
                previous = answer
            except kube.ApiError as e:
                log.warning("Capability discovery failed: %s", e)
            await asyncio.sleep(max(1.0, self.config.discovery_seconds))

    async def _resync(self) -> None:
        """Re-queue every known ModelService every ``resync_seconds``; a pass that finds
        nothing changed writes nothing."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for key in self.known():
                self.enqueue(key)

    def forget(self, key: Key) -> None:
        """A ModelService was deleted: drop what the runtime kept about it."""
        self.triggers.pop(key, None)
        self.retries.pop(key, None)
        self.ctx.measured_at.pop(key, None)
        self.ctx.unrouted_since.pop(key, None)
        self.ctx.gpu.forget(key)

    def known(self) -> list[Key]:
        index = self.indexes.get("msv_bodies")
        return list(index.keys()) if index is not None else []

    # ---- one pass -------------------------------------------------------------------------
    def body_of(self, key: Key) -> dict[str, Any] | None:
        index = self.indexes.get("msv_bodies")
        if index is None or key not in index:
            return None
        for body in index[key]:
            return cache.unpack(body)
        return None

    def observed(self, key: Key) -> reconcile.Observed:
        owned = self.indexes.get("msv_owned")
        pods = self.indexes.get("msv_pods")
        return reconcile.Observed(
            objects=[cache.unpack(o)
                     for o in (owned[key] if owned is not None and key in owned else ())],
            pods=[cache.unpack(p) for p in (pods[key] if pods is not None and key in pods
                                            else ())],
            nodes=self.gpu_nodes(),
        )

    def gpu_nodes(self) -> list[dict[str, Any]] | None:
        """The GPU nodes of the Node watch cache (a snapshot, taken in the event loop); None
        when Nodes are not watched (GPU fit off)."""
        if not self.config.gpu_fit:
            return None
        nodes = self.indexes.get("msv_nodes")
        if nodes is None or cache.GPU_NODES not in nodes:
            return []
        return list(nodes[cache.GPU_NODES])

    async def run(self, key: Key, body: Mapping[str, Any] | None = None
                  ) -> reconcile.Result | None:
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            ms = cache.plain(body) if body is not None else self.body_of(key)
            if ms is None:
                self.locks.pop(key, None)
                return None
            observed = self.observed(key)
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(
                    self.executor, reconcile.reconcile, self.ctx, ms, observed, now())
            except (kube.Conflict, kube.Transient) as e:
                self.metrics.reconciles.labels(result="error").inc()
                self.metrics.errors.labels(
                    kind="conflict" if isinstance(e, kube.Conflict) else "transient").inc()
                raise
            except kube.ApiError:
                self.metrics.reconciles.labels(result="error").inc()
                self.metrics.errors.labels(kind="rejected").inc()
                raise
            except Exception:
                self.metrics.reconciles.labels(result="error").inc()
                self.metrics.errors.labels(kind="unexpected").inc()
                raise
            finally:
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            self.metrics.reconciles.labels(result=result.outcome).inc()
            for item in result.applied:
                self.metrics.applies.labels(kind=item.split(" ", 1)[0]).inc()
            self.metrics.skipped_applies.labels(kind="any").inc(result.unchanged)
            for item in result.pruned:
                self.metrics.deletes.labels(kind=item.split(" ", 1)[0]).inc()
            if result.apply_error:
                self.metrics.errors.labels(kind="rejected").inc()
            if result.status_written:
                self.metrics.status_writes.inc()
            await self._post_events(ms, result)
            return result

    async def _post_events(self, ms: Mapping[str, Any], result: reconcile.Result) -> None:
        """Events of condition transitions and of the rollout (step, promotion, rollback,
        pause), once the status recording them is written."""
        involved = {"apiVersion": API_VERSION, "kind": KIND,
                    "metadata": ms.get("metadata") or {}}
        for type_, reason, message in events.for_pass(result.transitions,
                                                       result.repaired):
            await self._post(involved, type_, reason, message)
        for type_, reason, message in result.started:  # a variant's first pod is Ready
            await self._post(involved, type_, reason, message)
        for type_, reason, message in result.events:
            self.metrics.rollout_events.labels(reason=reason).inc()
            await self._post(involved, type_, reason, message)

    async def _post(self, involved: Mapping[str, Any], type_: str, reason: str,
                    message: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, kube.post_event, self.kube, involved,
                                       type_, reason, message, now())
        except kube.NamespaceTerminating:
            return  # the namespace and its Events are being deleted
        except kube.ApiError as e:
            log.warning("Could not post event %s: %s", reason, e)
