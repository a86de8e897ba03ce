"""Thin kopf handlers: decide *when* a ModelService is reconciled; ``reconcile`` does the work.

``register(config)`` returns a fresh kopf registry with:

* ``@kopf.on.event`` for ModelServices -> the ModelService goes onto a work queue when it is
  new, listed at start or its spec/labels/annotations changed (not for its own status
  patches); a worker runs one reconcile pass; API conflicts, transient and unexpected errors
  are retried with exponential backoff, an invalid spec only sets the ``InvalidSpec``
  condition (no retry). No kopf change handlers: kopf writes no bookkeeping annotation to a
  ModelService and builds no per-event "essence" copy of watched objects;
* ``@kopf.index`` caches of the owned Deployments, Services, HPAs and Pods (selected by the
  label ``serving.modelservice.dev/modelservice``) and of the ModelServices themselves, so a pass
  reads nothing from the API server; each cached object is kept packed (``cache.pack``:
  compressed JSON without managedFields) and unpacked only by the pass that reads it;
* ``@kopf.on.event`` for those owned kinds -> the owner goes onto a coalescing work queue, so a
  Deployment becoming ready, a Pod that cannot be scheduled or an object edited/deleted by hand
  reaches the ModelService (status or repair) within seconds;
* a resync loop that re-queues every ModelService every ``resync_seconds`` (a resync with
  nothing changed writes nothing; no kopf timer, because timers make kopf put a finalizer on
  every ModelService and deletion would then wait for the operator) and a capability watcher
  that re-queues every ModelService when ServiceMonitor/HTTPRoute appear or disappear.

Success Events of kopf are not posted (``posting.level = WARNING``); our Events are posted on
condition transitions and for repairs of owned objects (``events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf

from msv_operator import (
    builders,
    cache,
    conditions,
    events,
    kopf_fixes,
    kube,
    leader,
    memory,
    prom,
    reconcile,
)
from msv_operator.config import PREFIX, OperatorConfig
from msv_operator.metrics import OperatorMetrics
from msv_operator.workqueue import WorkQueue

log = logging.getLogger("msv_operator.handlers")

GROUP = kube.MODELSERVICE_GROUP
VERSION = kube.MODELSERVICE_VERSION
PLURAL = kube.MODELSERVICE_PLURAL
LABEL = builders.LABEL_MODELSERVICE

Key = tuple[str, str]

OWNED = (
    ("apps", "v1", "deployments", "apps/v1", "Deployment"),
    ("", "v1", "services", "v1", "Service"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "autoscaling/v2", "HorizontalPodAutoscaler"),
)


# Annotations that are bookkeeping of kubectl or of earlier kopf-based versions, not input.
NOISE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",
                     f"{PREFIX}/last-handled-configuration")

# Owned-object events wait this long on the queue, so a burst (a Deployment and its Pods
# changing together) costs one pass instead of one per event.
OWNED_EVENT_DELAY = 0.3

# Objects per page of kopf's initial LISTs (see ``configure``).
LIST_CHUNK = 500
# Seconds a kopf object worker waits for that object's next event before it ends.
WORKER_IDLE_SECONDS = 0.5


def now() -> str:
    return conditions.rfc3339(datetime.now(UTC))


def trigger(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a ModelService makes a pass worthwhile: identity, spec generation, labels,
    annotations and deletion (not the status, which the operator itself writes)."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in NOISE_ANNOTATIONS}
    return (meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"),
            sorted((meta.get("labels") or {}).items()), sorted(annotations.items()))


class _NoDiffBase(kopf.DiffBaseStorage):
    """No kopf change handlers, so no diff base: kopf would otherwise deep-copy every watched
    object on every event to build one, and patch its annotation onto every ModelService."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


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
        """Re-queue ``key`` after an exponential backoff (0.5 s doubling, at most 60 s)."""
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
        )

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
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService",
                    "metadata": ms.get("metadata") or {}}
        for type_, reason, message in events.for_pass(result.transitions,
                                                       result.repaired):
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
        except kube.ApiError as e:
            log.warning("Could not post event %s: %s", reason, e)


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    owner = labels.get(LABEL)
    if not namespace or not owner:
        return None
    return (namespace, owner)


def register(config: OperatorConfig, metrics: OperatorMetrics,
             runtime_factory: Any = None, write_gate: Any = None,
             on_stopped: Any = None, index_gate: kopf_fixes.IndexGate | None = None
             ) -> kopf.OperatorRegistry:
    """A kopf registry with every handler of the operator, configured by ``config``
    (``write_gate``, ``on_stopped``: see ``leader``; ``index_gate``: see ``kopf_fixes``)."""
    registry = kopf.OperatorRegistry()
    factory = runtime_factory or (lambda c, m: Runtime(c, m, write_gate=write_gate,
                                                       index_gate=index_gate))

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.persistence.finalizer = f"{PREFIX}/finalizer"
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        # The initial LIST in pages: a single answer with every object of a kind (10,000
        # Services at 5,000 ModelServices) was decoded at once and set the restart's peak RSS.
        settings.watching.chunk_size = LIST_CHUNK
        # kopf's per-object worker keeps its last watch event until it idles out: at start,
        # with thousands of objects listed per second, 5 s (kopf's default) kept thousands.
        settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
        settings.peering.standalone = True
        settings.execution.max_workers = config.max_workers
        runtime = factory(config, metrics)
        memo["runtime"] = runtime
        runtime.start()
        log.info("Started the ModelService operator (%s)",
                 "all namespaces" if config.clusterwide else ", ".join(config.namespaces))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster service account, else the kubeconfig (``$KUBECONFIG``)."""
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return in_cluster_address(info, os.environ)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def shutdown(memo: kopf.Memo, **_: Any) -> None:
        runtime = memo.get("runtime")
        if runtime is not None:
            await runtime.stop()
        log.info("Stopped the ModelService operator")
        if on_stopped is not None:
            on_stopped()

    # ---- caches -----------------------------------------------------------------------------
    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="msv_bodies")
    async def msv_bodies(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        ms = cache.strip_live(body, f"{GROUP}/{VERSION}", "ModelService")
        annotations = ms["metadata"].get("annotations") or {}
        for noise in NOISE_ANNOTATIONS:
            annotations.pop(noise, None)
        return {(str(namespace), name): cache.pack(ms)}

    def owned_index(api_version: str, kind: str) -> Any:
        async def index(namespace: str | None, labels: Mapping[str, str], body: kopf.Body,
                  **_: Any) -> Any:
            key = _owner_key(namespace, labels)
            return None if key is None else {
                key: cache.pack(cache.strip_live(body, api_version, kind))}
        return index

    for group, version, plural, api_version, kind in OWNED:
        kopf.index(group, version, plural, labels={LABEL: kopf.PRESENT}, registry=registry,
                   id=f"msv_owned_{plural}")(owned_index(api_version, kind))

    @kopf.index("", "v1", "pods", labels={LABEL: kopf.PRESENT}, registry=registry,
                id="msv_pods")
    async def msv_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body,
                 **_: Any) -> Any:
        key = _owner_key(namespace, labels)
        return None if key is None else {key: cache.pack(cache.trim_pod(body))}

    # ---- the ModelService -------------------------------------------------------------------
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modelservice")
    async def modelservice_changed(namespace: str | None, name: str, body: kopf.Body,
                                   memo: Any, type: str | None, **kwargs: Any) -> None:
        """A new, changed or (on start) listed ModelService goes onto the work queue; its own
        status patches do not (their ``trigger`` is unchanged)."""
        index = kwargs.get("msv_bodies")
        if index is not None:
            metrics.modelservices.set(len(index))
        runtime: Runtime | None = memo.get("runtime")
        if runtime is None or not namespace:
            return
        key = (str(namespace), name)
        if type == "DELETED":
            runtime.forget(key)
            return
        fingerprint = trigger(body)
        if runtime.triggers.get(key) == fingerprint:
            return
        runtime.triggers[key] = fingerprint
        runtime.bind(_indexes(kwargs))
        runtime.enqueue(key)

    # ---- owned objects -------------------------------------------------------------------
    async def owned_changed(namespace: str | None, labels: Mapping[str, str], memo: Any,
                            **kwargs: Any) -> None:
        runtime: Runtime | None = memo.get("runtime")
        key = _owner_key(namespace, labels)
        if runtime is None or key is None:
            return
        runtime.bind(_indexes(kwargs))
        runtime.enqueue(key, OWNED_EVENT_DELAY)

    async def pod_changed(namespace: str | None, labels: Mapping[str, str], memo: Any,
                          body: kopf.Body, uid: str, type: str | None, **kwargs: Any) -> None:
        """Only Pod changes that can change the status (scheduling, readiness, container
        waiting reasons) wake the owner; kwok's and the scheduler's other updates do not."""
        runtime: Runtime | None = memo.get("runtime")
        key = _owner_key(namespace, labels)
        if runtime is None or key is None:
            return
        if type == "DELETED":
            runtime.pod_summaries.pop(uid, None)
        else:
            summary = cache.pod_summary(body)
            if runtime.pod_summaries.get(uid) == summary:
                return
            runtime.pod_summaries[uid] = summary
        runtime.bind(_indexes(kwargs))
        runtime.enqueue(key, OWNED_EVENT_DELAY)

    for group, version, plural, _api_version, _kind in OWNED:
        kopf.on.event(group, version, plural, labels={LABEL: kopf.PRESENT}, registry=registry,
                      id=f"owned_{plural}")(owned_changed)
    kopf.on.event("", "v1", "pods", labels={LABEL: kopf.PRESENT}, registry=registry,
                  id="owned_pods")(pod_changed)

    return registry


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the per-kind owned-object indexes into one view (they share their keys)."""
    out: dict[str, Any] = {}
    for name in ("msv_bodies", "msv_pods"):
        if name in kwargs:
            out[name] = kwargs[name]
    owned = [kwargs[f"msv_owned_{plural}"] for _g, _v, plural, _a, _k in OWNED
             if f"msv_owned_{plural}" in kwargs]
    if owned:
        out["msv_owned"] = _Union(owned)
    return out


class _Union:
    """A read-only union of several kopf indexes with the same key type."""

    def __init__(self, indexes: list[Any]) -> None:
        self.indexes = indexes

    def __contains__(self, key: object) -> bool:
        return any(key in index for index in self.indexes)

    def __getitem__(self, key: Key) -> list[Any]:
        out: list[Any] = []
        for index in self.indexes:
            if key in index:
                out.extend(index[key])
        return out


def in_cluster_address(info: kopf.ConnectionInfo, env: Mapping[str, str]
                       ) -> kopf.ConnectionInfo:
    """Point kopf's in-cluster login at the address the kubelet gives every pod.

    kopf names ``https://kubernetes.default.svc``, which needs cluster DNS; client-go and the
    Kubernetes Python client use ``KUBERNETES_SERVICE_HOST``/``_PORT`` instead, so the
    operator does too and runs in clusters whose DNS is missing or not ready yet.
    """
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return info
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return dataclasses.replace(info, server=f"https://{host}:{port}")


async def operate(config: OperatorConfig, metrics: OperatorMetrics, *,
                  stop_flag: Any = None, ready_flag: Any = None,
                  liveness_endpoint: str | None = None) -> None:
    """Run the operator until ``stop_flag`` (or SIGINT/SIGTERM in the main thread); with
    leader election only while this replica holds the Lease (``leader.run_elected``)."""
    kopf_fixes.apply()
    async def run(write_gate: Any, stop: Any) -> None:
        # Elected: kopf's cleanup sets ``stop`` too, so kopf's waiter on it ends at once.
        on_stopped = stop.set if write_gate is not None else None
        # Made before kopf.operator: it binds to this run's indexes (kopf_fixes.IndexGate).
        index_gate = (kopf_fixes.IndexGate([*(o[2] for o in OWNED), "pods", PLURAL],
                                           config.namespaces)
                      if kopf_fixes.applied() else None)
        await kopf.operator(
            registry=register(config, metrics, write_gate=write_gate, on_stopped=on_stopped,
                              index_gate=index_gate),
            standalone=True,
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop,
            ready_flag=ready_flag,
            memo=kopf.Memo(),
        )

    if not config.leader_election:
        await run(None, stop_flag)
        return
    await leader.run_elected(config, run, stop_flag=stop_flag,
                             liveness_endpoint=liveness_endpoint)
