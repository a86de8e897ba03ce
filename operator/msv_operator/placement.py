"""GPU fit in a reconcile pass: per variant of a ModelService with spec.gpu, its memory need
(the artifact's headers, ``artifacts``, cached), where its pods go (``pools.choose``, or the
placement its live Deployment already has) and what the status says of both.

Called by ``reconcile`` with its ``Context`` (``Sources`` names what is read of it) when the
operator's GPU fit is on and the Nodes are watched (``reconcile.Observed.nodes``). Per
variant, with its artifact (``variants[].model`` or ``spec.model``):

* **Inputs.** A hash of what the placement depends on: the artifact (URI, sha256), the
  framework and task, the variant's optimization, ``server.batching.maxBatchSize`` and
  ``spec.gpu`` (count, resourceName, products). It is written on the Deployment
  (``builders.PLACEMENT_ANNOTATION``).
* **Kept.** A live Deployment whose hash is the same (or that carries none: made before GPU
  fit, adopted as it is) keeps its placement (``builders.gpu_target_of``): pools or prices
  that changed move nothing that runs. Unless none of its pods can be scheduled (every one
  ``PodScheduled=False``): then it is placed again from the pools of now.
* **Chosen.** Otherwise the estimate's total against the pools (``pools.choose``): the
  cheapest offer that holds it. Nothing holds it: the variant is ``refused``
  (``Ready=False``, reason ``InsufficientGPUMemory``): no Deployment is created, and a live one
  is left as it is. An artifact that cannot be read, or pools that offer nothing at all of
  what the spec allows (no GPU node labelled by GPU feature discovery, or none of the pinned
  products): placed as spec.gpu says, with one Warning Event ``GPUFitNotChecked`` per URI and
  generation.

* **Pending.** The artifact is read in the background (``HeaderReads``), not in the pass: the
  first pass that needs an artifact the cache has no answer for starts its read (at most one
  per URI, sha256 and credentials Secret in flight, on a bounded pool of threads) and waits
  ``READ_GRACE`` for it. Not read by then, the variant is placed ``pending``: without pinned
  products (``spec.gpu.products``) the pool cannot be chosen, so no Deployment is made yet
  (a live one is left as it is) and the status says ``EstimatingGPUMemory``; with them it is
  placed as pinned at once (its inputs hash marked ``UNESTIMATED``) and placed again once the
  read ends: on the pinned products that hold it, or refused. The read's end wakes
  every ModelService that waited for it (``HeaderReads.wake``: the runtime queues a pass); a
  read still running after ``READ_TIMEOUT`` counts as failed (``NotChecked``), and the pass
  is queued again by then (``Fit.requeue_after``) so that it is placed even if no read ends.

The artifact is read at most once per URI, sha256 and credentials Secret
(``ArtifactCache``): kept while the operator runs when the spec pins its sha256, an hour
without, and a read that failed (``NotChecked``) is tried again after ``NOT_CHECKED_TTL``.
With ``gpu_fit_read_credentials``, an ``s3://`` read is signed with the keys of
``spec.model.credentialsSecret`` (read with the artifact, only when the cache has no answer).

A ModelService without spec.gpu is priced as CPU (``cpu_priced``): each pod its server
container's CPU request in cores (``builders.cpu_request``) times the price per vCPU-hour
(``prices.Prices.cpu``); no fit, no placement choice.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from msv_contract.api import LABEL_VARIANT
from msv_operator import artifacts, builders, gpufit, pools, prices, quantity, spec, status
from msv_operator import kube as kubeapi
from msv_operator.config import OperatorConfig

log = logging.getLogger("msv_operator.placement")

NOT_CHECKED = "GPUFitNotChecked"
"""The reason of the Warning Event for a placement made without the fit check."""
NOT_CHECKED_TTL = 300.0
"""Seconds a failed read is remembered before the artifact is tried again."""
UNPINNED_TTL = 3600.0
"""Seconds a read is kept when the spec does not pin the artifact's sha256."""
CACHE_LIMIT = 1024
"""Artifacts remembered at most (the least recently used are dropped)."""
READ_WORKERS = 4
"""Artifact reads running at once (the others wait for a thread)."""
READ_TIMEOUT = artifacts.DEADLINE_SECONDS + 2 * artifacts.TIMEOUT_SECONDS
"""Seconds after which a read not yet ended (waiting for a thread included) counts as
failed; ``artifacts.read`` itself gives up after its deadline plus one request's timeout."""
READ_GRACE = 0.25
"""Seconds a pass waits for a read it started before placing the variant as pending: a store
that answers at once costs no second pass."""
ESTIMATING = status.ESTIMATING
UNESTIMATED = "+pending"
"""Follows the inputs hash of a placement made before its estimate (pinned products): the
pass after the read places the variant again (among the pinned products that hold it, or
refused), which changes no pod that the estimate does not move."""

Reader = Callable[..., artifacts.Artifact | artifacts.NotChecked]
"""``artifacts.read`` (a test's double in its place)."""
Event = tuple[str, str, str]
Read = artifacts.Artifact | artifacts.NotChecked
Stored = Read | artifacts.SmallFile
"""What the cache and the background reads hold: GPU fit's reads, and the small files the
optimization pipeline reads (``optimize``: MANIFEST, report.json)."""
ABSENT_TTL = 20.0
"""Seconds a small file found missing is remembered (a Job may publish it any moment)."""
CacheKey = tuple[str, str | None, str | None]
"""(URI, sha256, credentials Secret)."""
MsKey = tuple[str, str]
"""(namespace, name) of a ModelService."""


class SecretReader(Protocol):
    def get(self, api_version: str, kind: str, namespace: str | None, name: str
            ) -> dict[str, Any] | None: ...


class Sources(Protocol):
    """What GPU fit reads of ``reconcile.Context``."""

    @property
    def config(self) -> OperatorConfig: ...

    @property
    def kube(self) -> SecretReader: ...

    @property
    def gpu(self) -> GpuFitState: ...


@dataclass
class _Entry:
    value: Stored
    until: float | None


class ArtifactCache:
    """What was read of each artifact, by (URI, sha256, credentials Secret); thread-safe
    (passes of different ModelServices run at once; two may read the same URI once each)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 limit: int = CACHE_LIMIT) -> None:
        self.clock = clock
        self.limit = limit
        self.entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: CacheKey) -> Stored | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            if entry.until is not None and self.clock() >= entry.until:
                del self.entries[key]
                return None
            self.entries.move_to_end(key)
            return entry.value

    def put(self, key: CacheKey, value: Stored) -> None:
        if isinstance(value, artifacts.NotChecked):
            ttl: float | None = NOT_CHECKED_TTL
        elif isinstance(value, artifacts.SmallFile) and value.data is None:
            ttl = ABSENT_TTL
        else:
            ttl = None if key[1] else UNPINNED_TTL
        with self.lock:
            self.entries[key] = _Entry(value, None if ttl is None else self.clock() + ttl)
            self.entries.move_to_end(key)
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)


@dataclass(frozen=True)
class Pending:
    """A read not ended yet."""

    uri: str
    due_in: float
    """Seconds until it counts as failed (``READ_TIMEOUT`` after it started)."""


@dataclass
class _Flight:
    started: float
    waiters: set[MsKey] = field(default_factory=set)
    """The ModelServices to wake when it ends."""
    future: concurrent.futures.Future[None] | None = None


class HeaderReads:
    """Artifact reads in the background: at most one per cache key in flight, on at most
    ``workers`` threads (made on the first read); each answer goes into the cache, then every
    ModelService that waited for it is woken (``wake``, set by the runtime: it queues a pass).
    Thread-safe: passes of different ModelServices ask at once."""

    def __init__(self, *, workers: int = READ_WORKERS, timeout: float = READ_TIMEOUT,
                 grace: float = READ_GRACE, clock: Callable[[], float] = time.monotonic,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.workers, self.timeout, self.grace, self.clock = workers, timeout, grace, clock
        self.executor = executor
        self.flights: dict[CacheKey, _Flight] = {}
        self.lock = threading.Lock()
        self.wake: Callable[[MsKey], None] | None = None

    def _pool(self) -> concurrent.futures.Executor:
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="artifact-read")
        return self.executor

    def in_flight(self) -> list[CacheKey]:
        with self.lock:
            return list(self.flights)

    def ask(self, key: CacheKey, job: Callable[[], Stored], cache: ArtifactCache,
            waiter: MsKey) -> Stored | Pending:
        """The cached answer for ``key``; else its read (started now with ``job`` unless one
        is in flight) as ``Pending``, ``waiter`` to be woken when it ends; ``NotChecked``
        once it has run ``timeout`` seconds."""
        for _ in range(2):  # a read that ended and was dropped from the cache: read again
            with self.lock:
                found = cache.get(key)
                if found is not None:
                    return found
                flight = self.flights.get(key)
                start = flight is None
                if flight is None:
                    flight = self.flights[key] = _Flight(self.clock())
            if start:
                flight.future = self._pool().submit(self._run, key, job, cache)
                if self.grace > 0:
                    concurrent.futures.wait([flight.future], timeout=self.grace)
            with self.lock:
                found = cache.get(key)
                if found is not None:
                    return found
                if self.flights.get(key) is not flight:
                    continue
                waited = self.clock() - flight.started
                if waited >= self.timeout:  # still running: its answer, if any, comes later
                    late = artifacts.NotChecked(
                        key[0], f"reading it took longer than {self.timeout:.0f} s")
                    cache.put(key, late)
                    return late
                flight.waiters.add(waiter)
                return Pending(key[0], self.timeout - waited)
        return artifacts.NotChecked(key[0], "its answer was dropped from the cache at once")

    def _run(self, key: CacheKey, job: Callable[[], Stored], cache: ArtifactCache) -> None:
        try:
            value = job()
        except Exception as e:  # a reader's bug must not lose the wake-up
            log.exception("Reading %s failed", key[0])
            value = artifacts.NotChecked(key[0], f"reading it failed: {type(e).__name__}")
        with self.lock:
            cache.put(key, value)
            flight = self.flights.pop(key, None)
        for waiter in sorted(flight.waiters if flight is not None else ()):
            try:
                if self.wake is not None:
                    self.wake(waiter)
            except Exception:
                log.exception("Waking ModelService %s/%s failed", *waiter)

    def close(self) -> None:
        """Stop taking reads (those running end on their own deadline)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class GpuFitState:
    """GPU fit's state in one operator process (in memory: a restart reads again)."""

    reader: Reader = artifacts.read
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    reads: HeaderReads = field(default_factory=HeaderReads)
    warned: dict[tuple[str, str], set[tuple[str, int | None]]] = field(default_factory=dict)
    """Per ModelService: the (URI, generation) a GPUFitNotChecked Event was posted for."""
    ignored: tuple[str, ...] = ()
    """The GPU nodes or resources the pools last left out (logged when it changes)."""

    def forget(self, key: tuple[str, str]) -> None:
        self.warned.pop(key, None)


@dataclass(frozen=True)
class VariantFit:
    """GPU fit's answer for one variant."""

    name: str
    inputs: str
    target: pools.Target | None
    """What its pods request and where; None: refused (no Deployment is made)."""
    estimate: gpufit.MemoryEstimate | None
    placement: dict[str, Any] | None
    """``status.variants[].placement``."""
    price_per_pod: float | None
    refused: str | None = None
    """Why nothing holds it (the ``InsufficientGPUMemory`` message)."""
    not_checked: str | None = None
    kept: bool = False
    """Its live Deployment's placement was kept."""
    pending: str | None = None
    """Waits for its artifact's read to choose a pool (the ``EstimatingGPUMemory`` message):
    no Deployment is made yet."""

    def to_status(self) -> status.GpuVariant:
        return status.GpuVariant(
            gpu_memory=self.estimate.to_status() if self.estimate is not None else None,
            placement=self.placement, price_per_pod=self.price_per_pod, refused=self.refused,
            pending=self.pending)


@dataclass
class Fit:
    """GPU fit's answer for a ModelService: per variant, and the Events to post."""

    variants: dict[str, VariantFit] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until a pending read counts as failed (a pass then places its variants even
    if no read ends); None: nothing pending."""

    @property
    def placements(self) -> dict[str, builders.GpuPlacement]:
        return {v.name: builders.GpuPlacement(v.target, v.inputs)
                for v in self.variants.values() if v.target is not None}

    @property
    def withheld(self) -> set[str]:
        """Refused and pending variants: no Deployment or HPA is built, a live one is left
        alone."""
        return {v.name for v in self.variants.values() if v.target is None}

    def status(self) -> dict[str, status.GpuVariant]:
        return {name: v.to_status() for name, v in self.variants.items()}


def inputs_of(parsed: spec.ModelServiceSpec, variant: spec.Variant) -> str:
    """The hash of what the variant's placement depends on (``builders.PLACEMENT_ANNOTATION``)."""
    assert parsed.gpu is not None
    source = variant.model or parsed.model
    doc = {"uri": source.uri, "sha256": source.sha256, "framework": parsed.framework,
           "task": parsed.task, "quantization": variant.quantization,
           "pruning": [variant.pruning_method, variant.pruning_amount],
           "maxBatchSize": parsed.max_batch_size, "count": parsed.gpu.count,
           "resource": parsed.gpu.resource_name, "products": list(parsed.gpu.products)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every one of ``pods`` (at least one) waits with ``PodScheduled=False``."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return bool(live) and all(
        any(c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in (p.get("status") or {}).get("conditions") or ())
        for p in live)


def _credentials(ctx: Sources, parsed: spec.ModelServiceSpec, name: str | None = None
                 ) -> tuple[artifacts.S3Access | None, str | None]:
    """The S3 access of spec.model.credentialsSecret (when the operator may read it), or of
    the Secret ``name``, and what went wrong reading it."""
    if name is None:
        name = parsed.credentials_secret
        if not name or not ctx.config.gpu_fit_read_credentials:
            return None, None
    return secret_access(ctx.kube, parsed.namespace, name)


def secret_access(kube: SecretReader, namespace: str, name: str
                  ) -> tuple[artifacts.S3Access | None, str | None]:
    """The S3 access in the Secret ``name`` (its ``AWS_*`` keys, the pull's convention), and
    what went wrong reading it."""
    try:
        secret = kube.get("v1", "Secret", namespace, name)
    except kubeapi.ApiError as e:
        return None, f"the credentials Secret {name} could not be read: {e}"
    if secret is None:
        return None, f"the credentials Secret {name} does not exist"
    env: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            env[str(key)] = base64.b64decode(str(value)).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    return artifacts.S3Access.from_env(env), None


def read(ctx: Sources, parsed: spec.ModelServiceSpec, source: spec.ModelSource
         ) -> Read | Pending:
    """What the estimate needs of ``source``: cached, else read in the background
    (``HeaderReads``; Pending until it ends). Never raises for what it reads. A source with
    a Secret of its own (a built variant's artifact) is read with that Secret's keys."""
    own = source.credentials_secret
    secret = (own or parsed.credentials_secret) if source.scheme == "s3" else None
    key = (source.uri, source.sha256, secret)
    found = ctx.gpu.cache.get(key)
    if found is not None:
        return cast(Read, found)

    def job() -> Read:
        access, problem = _credentials(ctx, parsed, own) if secret else (None, None)
        value = ctx.gpu.reader(source.uri, s3=access)
        if isinstance(value, artifacts.NotChecked) and problem:
            value = artifacts.NotChecked(value.uri, f"{value.reason} ({problem})")
        return value

    return cast(Read | Pending, ctx.gpu.reads.ask(key, job, ctx.gpu.cache,
                                                  (parsed.namespace, parsed.name)))


def estimating(uri: str) -> str:
    """What a variant waits for while its artifact is read (``EstimatingGPUMemory``)."""
    return (f"its GPU memory estimate: the operator is reading the headers of {uri} to choose "
            "a GPU pool, and creates its Deployment then")


def cpu_priced(parsed: spec.ModelServiceSpec, table: prices.Prices
               ) -> dict[str, status.GpuVariant]:
    """What a ModelService without spec.gpu costs, per variant: its pods' CPU request
    (``builders.cpu_request``) at ``table.cpu`` per vCPU-hour; no price without a request."""
    assert parsed.gpu is None
    request = builders.cpu_request(parsed)
    cores = quantity.parse(request)
    if request is None or cores is None:
        return {v.name: status.GpuVariant() for v in parsed.variants}
    price = table.of_cpu(cores)
    shown = {"cpu": request, "pricePerHour": price}
    return {v.name: status.GpuVariant(placement=dict(shown), price_per_pod=price)
            for v in parsed.variants}


def describe(target: pools.Target, offers: pools.Pools, table: Any, need: int | None,
             pinned: bool) -> tuple[dict[str, Any], float | None]:
    """The status placement and price per pod of a placement not chosen by this pass (kept,
    or as spec.gpu says): the cheapest offer it may land on prices it (as ``pools.choose``
    prices several pinned products); ``product`` when it can land on one only; ``checked``
    when the estimate says every device it may land on holds the variant."""
    out: dict[str, Any] = {"resource": target.resource, "count": target.count,
                           "pinned": pinned}
    matching = [o for o in offers.offers if o.resource == target.resource
                and (not target.products or o.product in target.products)]
    possible = sorted({o.product for o in matching} or set(target.products))
    if len(possible) == 1:
        out["product"] = possible[0]
    elif target.products:
        out["products"] = list(target.products)
    price: float | None = None
    if matching:
        cheapest = pools.choose(0, target.count, matching, table)
        if isinstance(cheapest, pools.Placement):
            price = cheapest.price_per_hour
            if cheapest.offer.profile:
                out["migProfile"] = cheapest.offer.profile
        out["deviceMemoryBytes"] = min(o.memory_bytes for o in matching)
    if price is not None:
        out["pricePerHour"] = price
    out["checked"] = bool(need is not None and matching
                          and all(o.memory_bytes >= need for o in matching))
    return out, price


def place(ctx: Sources, parsed: spec.ModelServiceSpec, generation: int | None,
          deployments: Mapping[str, Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
          nodes: Sequence[Mapping[str, Any]]) -> Fit:
    """GPU fit for every variant of ``parsed`` (which has spec.gpu): kept, chosen or refused
    (see the module's docstring); ``deployments`` the live ones by variant."""
    assert parsed.gpu is not None
    gpu = parsed.gpu
    offers = pools.pools_from_nodes(nodes)
    if offers.ignored != ctx.gpu.ignored:
        ctx.gpu.ignored = offers.ignored
        for why in offers.ignored:
            log.warning("GPU fit leaves out %s", why)
    table = ctx.config.gpu_prices
    pinned = bool(gpu.products) or gpu.resource_name is not None
    as_spec = builders.spec_target(parsed)
    assert as_spec is not None
    fit = Fit()
    warned = ctx.gpu.warned.setdefault((parsed.namespace, parsed.name), set())
    for variant in parsed.variants:
        source = variant.model or parsed.model
        inputs = inputs_of(parsed, variant)
        read_ = read(ctx, parsed, source)
        estimate: gpufit.MemoryEstimate | None = None
        problem: str | None = None
        waiting = isinstance(read_, Pending)
        if isinstance(read_, Pending):
            due = read_.due_in + 1.0  # then it counts as failed
            fit.requeue_after = due if fit.requeue_after is None else min(fit.requeue_after, due)
        elif isinstance(read_, artifacts.Artifact):
            try:
                estimate = read_.estimate(gpufit.Workload.of(parsed, variant))
            except gpufit.HeaderError as e:
                problem = artifacts.NotChecked(source.uri, str(e)).message
        else:
            problem = read_.message
        need = estimate.total_bytes if estimate is not None else None
        live = deployments.get(variant.name)
        live_target = builders.gpu_target_of(live)
        annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
        live_inputs = annotations.get(builders.PLACEMENT_ANNOTATION)
        mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
            LABEL_VARIANT) == variant.name]
        if (live_target is not None and live_inputs in (None, inputs)
                and not unschedulable(mine)):
            shown, price = describe(live_target, offers, table, need, pinned)
            if waiting:
                shown["pending"] = True
            fit.variants[variant.name] = VariantFit(variant.name, inputs, live_target,
                                                    estimate, shown, price, kept=True)
            continue
        if waiting and not gpu.products:  # the pool needs the estimate: nothing made yet
            shown = {"pending": True, "count": gpu.count, "pinned": pinned}
            if gpu.resource_name:
                shown["resource"] = gpu.resource_name
            fit.variants[variant.name] = VariantFit(variant.name, inputs, None, None, shown,
                                                    None, pending=estimating(source.uri))
            continue
        if waiting:  # pinned products: placed as pinned, placed again once it is read
            shown, price = describe(as_spec, offers, table, None, pinned)
            shown.update(checked=False, pending=True)
            fit.variants[variant.name] = VariantFit(variant.name, inputs + UNESTIMATED,
                                                    as_spec, None, shown, price)
            continue
        choice = (pools.choose(need, gpu.count, offers, table, gpu.products, gpu.resource_name)
                  if need is not None else None)
        if isinstance(choice, pools.Placement):
            fit.variants[variant.name] = VariantFit(
                variant.name, inputs, choice.target, estimate, choice.to_status(),
                choice.price_per_hour)
            continue
        if isinstance(choice, pools.DoesNotFit) and not choice.no_offer:
            fit.variants[variant.name] = VariantFit(
                variant.name, inputs, None, estimate, None, None, refused=choice.message)
            continue
        if isinstance(choice, pools.DoesNotFit):  # nothing offered at all: cannot judge
            problem = (f"the GPU memory fit of {source.uri} was not checked: it "
                       f"{choice.message}; the pods are placed as spec.gpu says")
        shown, price = describe(as_spec, offers, table, need, pinned)
        shown["checked"] = False
        fit.variants[variant.name] = VariantFit(variant.name, inputs, as_spec, estimate, shown,
                                                price, not_checked=problem)
        if problem is not None and (source.uri, generation) not in warned:
            warned.add((source.uri, generation))
            fit.events.append(("Warning", NOT_CHECKED, f"variant {variant.name}: {problem}"))
    return fit
