"""Thin kopf handlers: decide *when* a ModelService is reconciled; ``runtime`` runs the passes
(``reconcile``) and ``handlers`` only put keys on its work queue.

``register(config)`` returns a fresh kopf registry with:

* a startup handler that configures kopf and starts the ``runtime.Runtime`` (work queue,
  workers with retries and backoff, resync loop, capability watcher), and a cleanup handler
  that stops it;
* ``@kopf.on.event`` for ModelServices -> the ModelService goes onto the work queue when it is
  new, listed at start or its spec/labels/annotations changed (not for its own status
  patches). No kopf change handlers: kopf writes no bookkeeping annotation to a ModelService
  and builds no per-event "essence" copy of watched objects;
* ``@kopf.index`` caches of the owned Deployments, Services, HPAs and Pods (selected by the
  label ``serving.modelservice.dev/modelservice``) and of the ModelServices themselves, so a pass
  reads nothing from the API server; each cached object is kept packed (``cache.pack``:
  compressed JSON without managedFields) and unpacked only by the pass that reads it. With GPU
  fit on, one more of the GPU Nodes, each trimmed to its GPU labels and resources
  (``pools.trim_node``, under ``cache.GPU_NODES``): the pools a pass places variants on. A
  Node's events wake no ModelService (pools that change move nothing that runs; the resync
  and the variants' own events place what is new);
* ``@kopf.on.event`` for those owned kinds -> the owner goes onto the coalescing work queue, so
  a Deployment becoming ready, a Pod that cannot be scheduled or an object edited/deleted by
  hand reaches the ModelService (status or repair) within seconds.

No kopf timer for the resync: timers make kopf put a finalizer on every ModelService and
deletion would then wait for the operator. Success Events of kopf are not posted
(``posting.level = WARNING``); ours are posted by the runtime on condition transitions and
for repairs of owned objects (``events``). ``operate`` runs it all, under leader election
when configured (``leader``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from msv_contract import api
from msv_operator import builders, cache, kopf_fixes, leader, pools
from msv_operator.config import PREFIX, OperatorConfig
from msv_operator.metrics import OperatorMetrics
from msv_operator.runtime import Key, Runtime

log = logging.getLogger("msv_operator.handlers")

GROUP = api.GROUP
VERSION = api.VERSION
PLURAL = api.PLURAL
LABEL = builders.LABEL_MODELSERVICE

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

CLUSTER_INDEXED = ("nodes",)
"""Cluster-scoped kinds indexed with GPU fit on (listed once, whatever the namespaces)."""

# Objects per page of kopf's initial LISTs (see ``configure``).
LIST_CHUNK = 500
# Seconds a kopf object worker waits for that object's next event before it ends.
WORKER_IDLE_SECONDS = 0.5


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
        settings.persistence.finalizer = api.FINALIZER
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
        ms = cache.strip_live(body, api.API_VERSION, api.KIND)
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

    if config.gpu_fit:
        @kopf.index("", "v1", "nodes", registry=registry, id="msv_nodes")
        async def msv_nodes(body: kopf.Body, **_: Any) -> Any:
            trimmed = pools.trim_node(body)
            return None if trimmed is None else {cache.GPU_NODES: trimmed}

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
    for name in ("msv_bodies", "msv_pods", "msv_nodes"):
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
                                           config.namespaces,
                                           cluster_plurals=CLUSTER_INDEXED if config.gpu_fit
                                           else ())
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
