"""PURE: the GPU pools a cluster offers, and the cheapest one a variant fits.

Pools come from Node objects as NVIDIA's GPU feature discovery (GFD) and device plugin
leave them: a full GPU is ``nvidia.com/gpu`` in the node's allocatable with labels
``nvidia.com/gpu.product`` and ``nvidia.com/gpu.memory`` (MiB per GPU); under the MIG
``mixed`` strategy (label ``nvidia.com/mig.strategy``) each partition profile is a resource
of its own, ``nvidia.com/mig-<profile>`` (``mig-1g.10gb``, ``mig-3g.40gb``), its memory in
the label ``nvidia.com/mig-<profile>.memory`` (MiB) or, without it, from the profile's name
(``10gb``: 10 GB, the name's unit); under the ``single`` strategy the partitions are
``nvidia.com/gpu`` and the product label carries the profile (``A100-SXM4-40GB-MIG-1g.5gb``).
Cordoned nodes offer nothing. An ``Offer`` is one (product, resource) with its memory per
device, the devices all nodes hold and the most one node holds. ``trim_node`` keeps of a
Node only what this reads (the operator's watch cache of Nodes).

Prices per device-hour are ``prices``' (list prices with their sources, the configured
table, MIG profiles priced as their share of the GPU).

``choose`` places one variant: the cheapest offer whose devices hold the need and of which
one node holds ``gpu.count`` (ties: the smaller device, then the name), as node affinity on
the product label and the resource to request (``Target``). ``gpu.resourceName`` narrows the
choice to that resource; ``gpu.products`` to those products, whose fit alone is checked (the
pods may go to any pinned product that holds the variant). Nothing fits: ``DoesNotFit``
(reason ``InsufficientGPUMemory``), naming the need and the largest offer; no offer at all
among what is allowed: ``DoesNotFit`` with no ``largest`` (``no_offer``), which the caller
treats as a fit it cannot check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from msv_operator import quantity
from msv_operator.gpufit import gib
from msv_operator.prices import Prices, mig_memory_bytes

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
"""MiB per GPU (per MIG device under the single strategy)."""
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
NVIDIA_PREFIX = "nvidia.com/"
"""The labels and resources GFD and NVIDIA's device plugin set."""
SINGLE_MIG_MARK = "-MIG-"
"""The single strategy's product label: ``<product>-MIG-<profile>``."""
INSUFFICIENT = "InsufficientGPUMemory"
"""The ``Ready`` reason when no offer holds a variant."""


@dataclass(frozen=True)
class Offer:
    """Devices of one kind the cluster offers: a GPU product, or one MIG profile of it."""

    product: str
    resource: str
    """What a pod requests: ``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``."""
    memory_bytes: int
    """Per device."""
    devices: int
    """Allocatable on all schedulable nodes together."""
    max_per_node: int
    """The most one node holds (a pod's ``gpu.count`` must fit on one node)."""
    nodes: tuple[str, ...]
    profile: str | None = None
    """The MIG profile (``3g.40gb``), None for a whole GPU."""
    gpu_memory_bytes: int | None = None
    """The whole GPU's memory, for a MIG profile's price share (None when unknown)."""

    @property
    def label(self) -> str:
        """``NVIDIA-L4``, ``NVIDIA-H100-80GB-HBM3 MIG 1g.10gb``."""
        if self.profile and self.resource != GPU_RESOURCE:
            return f"{self.product} MIG {self.profile}"
        return self.product

    @property
    def parent_product(self) -> str:
        """The whole GPU's product (the single strategy's label without ``-MIG-...``)."""
        return self.product.split(SINGLE_MIG_MARK, 1)[0]


@dataclass(frozen=True)
class Pools:
    offers: tuple[Offer, ...]
    ignored: tuple[str, ...] = ()
    """GPU nodes or resources left out, each with why (no memory label, ...)."""


def _int_label(labels: Mapping[str, Any], key: str) -> int | None:
    value = labels.get(key)
    try:
        n = int(str(value))
    except ValueError:
        return None
    return n if n > 0 else None


def pools_from_nodes(nodes: Iterable[Mapping[str, Any]]) -> Pools:
    """The offers of these Node objects (dicts as the API returns them)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    ignored: list[str] = []
    for node in nodes:
        meta = node.get("metadata") or {}
        name = str(meta.get("name") or "")
        labels = meta.get("labels") or {}
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        status = node.get("status") or {}
        allocatable = status.get("allocatable") or status.get("capacity") or {}
        product = labels.get(PRODUCT_LABEL)
        gpu_mib = _int_label(labels, MEMORY_LABEL)
        for resource, amount in sorted(allocatable.items()):
            count = quantity.parse(amount)
            if count is None or count < 1:
                continue
            if resource == GPU_RESOURCE:
                profile = None
                if product and SINGLE_MIG_MARK in product:
                    profile = product.split(SINGLE_MIG_MARK, 1)[1]
                memory = gpu_mib * 2**20 if gpu_mib else None
                parent = None
            elif resource.startswith(MIG_RESOURCE_PREFIX):
                profile = resource[len(MIG_RESOURCE_PREFIX):]
                mib = _int_label(labels, f"{resource}.memory")
                memory = mib * 2**20 if mib else mig_memory_bytes(profile)
                parent = gpu_mib * 2**20 if gpu_mib else None
            else:
                continue
            if not product:
                ignored.append(f"node {name}: {resource} without label {PRODUCT_LABEL}")
                continue
            if memory is None:
                label = MEMORY_LABEL if resource == GPU_RESOURCE else f"{resource}.memory"
                ignored.append(f"node {name}: {resource} of {product} without its memory "
                               f"(label {label})")
                continue
            entry = found.setdefault((product, resource), {
                "memory": memory, "devices": 0, "max": 0, "nodes": [], "profile": profile,
                "parent": parent})
            entry["memory"] = min(entry["memory"], memory)  # the least a pod may land on
            entry["devices"] += int(count)
            entry["max"] = max(entry["max"], int(count))
            entry["nodes"].append(name)
    offers = tuple(Offer(product=p, resource=r, memory_bytes=e["memory"], devices=e["devices"],
                         max_per_node=e["max"], nodes=tuple(sorted(e["nodes"])),
                         profile=e["profile"], gpu_memory_bytes=e["parent"])
                   for (p, r), e in sorted(found.items()))
    return Pools(offers, tuple(ignored))


def is_gpu_resource(resource: str) -> bool:
    """``nvidia.com/gpu`` or a MIG resource (``nvidia.com/mig-<profile>``)."""
    return resource == GPU_RESOURCE or resource.startswith(MIG_RESOURCE_PREFIX)


def trim_node(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``pools_from_nodes`` reads of a Node: its name, its ``nvidia.com/`` labels, its
    GPU resources (allocatable) and whether it is cordoned; None for a node without GPUs."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    gpus = {str(k): str(v) for k, v in allocatable.items() if is_gpu_resource(str(k))}
    if not gpus:
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()
              if str(k).startswith(NVIDIA_PREFIX)}
    out: dict[str, Any] = {"metadata": {"name": str(meta.get("name") or ""), "labels": labels},
                           "status": {"allocatable": gpus}}
    if (node.get("spec") or {}).get("unschedulable"):
        out["spec"] = {"unschedulable": True}
    return out


# ---- placement -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What a variant's pods request and where they may run: ``count`` devices of
    ``resource`` (requests = limits), on nodes whose product label is one of ``products``
    (empty: any node)."""

    resource: str
    count: int
    products: tuple[str, ...] = ()

    def resources(self) -> dict[str, str]:
        """The requests and limits of the resource (extended resources: equal)."""
        return {self.resource: str(self.count)}

    def node_affinity(self) -> dict[str, Any] | None:
        """``affinity.nodeAffinity``: the products, required (None without products)."""
        if not self.products:
            return None
        return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": PRODUCT_LABEL, "operator": "In",
                                   "values": list(self.products)}]}]}}


@dataclass(frozen=True)
class Placement:
    """Where a variant's pods go: ``gpu_count`` devices of ``offer`` (with pinned products:
    of any of ``products`` that holds the variant, ``offer`` the cheapest of them)."""

    offer: Offer
    gpu_count: int
    need_bytes: int
    price_per_hour: float | None
    """Per pod (``gpu_count`` devices); None: no price for this offer."""
    pinned: bool
    """The spec pins products or the resource: the choice was only among what they allow."""
    products: tuple[str, ...] = ()
    """The products the pods may run on (empty: ``offer``'s alone)."""

    @property
    def resource(self) -> str:
        return self.offer.resource

    @property
    def target(self) -> Target:
        return Target(self.offer.resource, self.gpu_count, self.products or (self.offer.product,))

    def resources(self) -> dict[str, str]:
        return self.target.resources()

    def node_affinity(self) -> dict[str, Any] | None:
        return self.target.node_affinity()

    @property
    def message(self) -> str:
        how = "pinned" if self.pinned else "cheapest that fits"
        price = ("no price" if self.price_per_hour is None
                 else f"${self.price_per_hour:.2f}/h per pod")
        return (f"{self.offer.label} ({how}): needs {gib(self.need_bytes)} of the "
                f"{gib(self.offer.memory_bytes)} per device, {price}")

    def to_status(self) -> dict[str, Any]:
        """The ``status.variants[].placement`` object."""
        out: dict[str, Any] = {"product": self.offer.product, "resource": self.offer.resource,
                               "count": self.gpu_count,
                               "deviceMemoryBytes": self.offer.memory_bytes,
                               "pinned": self.pinned, "checked": True}
        if self.offer.profile:
            out["migProfile"] = self.offer.profile
        if self.price_per_hour is not None:
            out["pricePerHour"] = self.price_per_hour
        if len(self.products) > 1:
            out["products"] = list(self.products)
        return out


@dataclass(frozen=True)
class DoesNotFit:
    """No offer holds the variant; ``message`` names the need and the largest offer."""

    need_bytes: int
    largest: Offer | None
    message: str
    pinned: bool
    reason: str = INSUFFICIENT

    @property
    def no_offer(self) -> bool:
        """Nothing is offered at all among what the spec allows (no GPU node, or none of the
        pinned products or resource): the fit cannot be judged."""
        return self.largest is None


def choose(need_bytes: int, gpu_count: int, pools: Pools | Sequence[Offer], prices: Prices,
           pinned_products: Sequence[str] = (), pinned_resource: str | None = None
           ) -> Placement | DoesNotFit:
    """The cheapest offer where ``gpu_count`` devices holding ``need_bytes`` each fit on one
    node, among the offers of ``pinned_resource`` (``gpu.resourceName``; any when None) and
    of ``pinned_products`` (``gpu.products``; whole GPUs unless a resource is pinned too, as
    the pods request them). With pinned products the pods may go to every pinned product
    that holds the variant (``Placement.products``)."""
    offers = pools.offers if isinstance(pools, Pools) else tuple(pools)
    pinned = bool(pinned_products) or pinned_resource is not None
    if pinned_products:
        resource = pinned_resource or GPU_RESOURCE
        offers = tuple(o for o in offers if o.resource == resource
                       and o.product in pinned_products)
    elif pinned_resource is not None:
        offers = tuple(o for o in offers if o.resource == pinned_resource)
    fits = [o for o in offers if o.memory_bytes >= need_bytes and o.max_per_node >= gpu_count]
    if fits:
        def key(o: Offer) -> tuple[bool, float, int, str, str]:
            p = prices.of(o)
            return (p is None, p or 0.0, o.memory_bytes, o.product, o.resource)
        best = min(fits, key=key)
        unit = prices.of(best)
        holding = {o.product for o in fits}
        products = tuple(p for p in dict.fromkeys(pinned_products) if p in holding)
        return Placement(best, gpu_count, need_bytes,
                         None if unit is None else round(unit * gpu_count, 4), pinned,
                         products)
    return _does_not_fit(need_bytes, gpu_count, offers, pinned, pinned_products,
                         pinned_resource)


def _does_not_fit(need: int, count: int, offers: Sequence[Offer], pinned: bool,
                  products: Sequence[str], resource: str | None) -> DoesNotFit:
    scope = ""
    if products:
        scope = f" among {resource or GPU_RESOURCE} of the pinned products {', '.join(products)}"
    elif resource is not None:
        scope = f" among {resource}"
    if not offers:
        return DoesNotFit(need, None, f"needs {gib(need)} of GPU memory, and the cluster "
                          f"offers no GPU{scope} (no schedulable node carries "
                          f"{PRODUCT_LABEL} with its memory)", pinned)
    largest = max(offers, key=lambda o: (o.memory_bytes, o.max_per_node, o.product))
    if largest.memory_bytes >= need:
        most = max(o.max_per_node for o in offers if o.memory_bytes >= need)
        return DoesNotFit(need, largest, f"needs {count} devices of at least {gib(need)} on "
                          f"one node, the most any node offers{scope} is {most}", pinned)
    return DoesNotFit(need, largest, f"needs {gib(need)} of GPU memory, the largest "
                      f"offer{scope} is {gib(largest.memory_bytes)} ({largest.label})", pinned)
