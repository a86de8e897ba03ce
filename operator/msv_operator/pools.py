"""PURE: the GPU pools a cluster offers, their prices, and the cheapest one a variant fits.

Pools come from Node objects as NVIDIA's GPU feature discovery (GFD) and device plugin
leave them: a full GPU is ``nvidia.com/gpu`` in the node's allocatable with labels
``nvidia.com/gpu.product`` and ``nvidia.com/gpu.memory`` (MiB per GPU); under the MIG
``mixed`` strategy (label ``nvidia.com/mig.strategy``) each partition profile is a resource
of its own, ``nvidia.com/mig-<profile>`` (``mig-1g.10gb``, ``mig-3g.40gb``), its memory in
the label ``nvidia.com/mig-<profile>.memory`` (MiB) or, without it, from the profile's name
(``10gb``: 10 GB, the name's unit); under the ``single`` strategy the partitions are
``nvidia.com/gpu`` and the product label carries the profile (``A100-SXM4-40GB-MIG-1g.5gb``).
Cordoned nodes offer nothing. An ``Offer`` is one (product, resource) with its memory per
device, the devices all nodes hold and the most one node holds.

Prices are per device-hour, in US dollars: per GPU product, and per MIG profile either set
or derived from its product's price times the profile's share of the GPU (the larger of its
compute slices over the GPU's and its memory over the GPU's: a slice holds both).
``DEFAULT_PRICES`` are approximate on-demand list prices (``LIST_PRICES`` names each
source); a cluster sets its own.

``choose`` places one variant: the cheapest offer whose devices hold the need and of which
one node holds ``gpu.count`` (ties: the smaller device, then the name), as node affinity on
the product label and the resource to request; a variant that pins products or a resource
is only checked against what it pins. Nothing fits: ``DoesNotFit`` (reason
``InsufficientGPUMemory``), naming the need and the largest offer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from msv_operator import quantity
from msv_operator.gpufit import gib

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
"""MiB per GPU (per MIG device under the single strategy)."""
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
SINGLE_MIG_MARK = "-MIG-"
"""The single strategy's product label: ``<product>-MIG-<profile>``."""
_PROFILE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:\+me)?$")
"""``1g.10gb``, ``1c.3g.40gb`` (a compute instance of a 3g), ``1g.10gb+me`` (media engines)."""
MIG_COMPUTE_SLICES: Mapping[str, int] = {"A30": 4}
"""Compute slices of a whole GPU, by a part of its product name; 7 otherwise (A100, H100,
H200, B200)."""
FULL_COMPUTE_SLICES = 7
INSUFFICIENT = "InsufficientGPUMemory"
"""The ``Ready`` reason when no offer holds a variant."""


def mig_memory_bytes(profile: str) -> int | None:
    """A profile's memory from its name (``3g.40gb``: 40 GB); None when it is not one."""
    m = _PROFILE.match(profile)
    return int(m.group(3)) * 10**9 if m else None


def mig_compute_slices(profile: str) -> int | None:
    m = _PROFILE.match(profile)
    if not m:
        return None
    return int(m.group(1) or m.group(2))


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


# ---- prices ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListPrice:
    product: str
    """GFD's ``nvidia.com/gpu.product`` value."""
    usd_per_hour: float
    """Per GPU."""
    source: str


LIST_PRICES: tuple[ListPrice, ...] = (
    ListPrice("Tesla-T4", 0.53, "Amazon EC2 g4dn.xlarge (1 x T4), $0.526/h"),
    ListPrice("NVIDIA-A10G", 1.01, "Amazon EC2 g5.xlarge (1 x A10G), $1.006/h"),
    ListPrice("NVIDIA-L4", 0.80, "Amazon EC2 g6.xlarge (1 x L4), $0.8048/h"),
    ListPrice("NVIDIA-L40S", 1.86, "Amazon EC2 g6e.xlarge (1 x L40S), $1.861/h"),
    ListPrice("NVIDIA-A100-SXM4-40GB", 4.10, "Amazon EC2 p4d.24xlarge (8 x A100 40GB), "
              "$32.77/h / 8"),
    ListPrice("NVIDIA-A100-SXM4-80GB", 5.12, "Amazon EC2 p4de.24xlarge (8 x A100 80GB), "
              "$40.97/h / 8"),
    ListPrice("NVIDIA-H100-80GB-HBM3", 12.29, "Amazon EC2 p5.48xlarge (8 x H100 80GB), "
              "$98.32/h / 8"),
)
"""Approximate on-demand list prices per GPU-hour: the smallest Amazon EC2 instance holding
the GPU, US East (N. Virginia), Linux, as listed on the Amazon EC2 On-Demand Pricing page in
2024, divided by its GPUs (so the host's share of CPU and memory is included). Providers
change them (Amazon lowered P4 and P5 prices in 2025) and discounts differ: set your own."""
OTHER_PRODUCTS = ("NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-80GB-PCIe", "NVIDIA-H100-PCIe",
                  "NVIDIA-A10", "NVIDIA-L40")
"""Products a price table may name beyond those with a list price."""
KNOWN_PRODUCTS = tuple(p.product for p in LIST_PRICES) + OTHER_PRODUCTS
"""The products a price table may name (the chart's schema lists the same): a name outside
it is a typo for GFD's label more often than a GPU this table lacks (add it here)."""


class PriceError(ValueError):
    """A price table the operator cannot use; the message names the key."""


@dataclass(frozen=True)
class Prices:
    """Per device-hour, US dollars."""

    products: Mapping[str, float] = field(default_factory=dict)
    mig: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """product -> MIG profile -> price of one slice; a profile not set is derived."""

    def of(self, offer: Offer) -> float | None:
        """One device of ``offer``; None when neither it nor its GPU has a price."""
        parent = offer.parent_product
        if offer.profile is None:
            return self.products.get(offer.product)
        if offer.resource == GPU_RESOURCE and offer.product in self.products:
            return self.products[offer.product]  # single strategy, priced as its label
        set_ = self.mig.get(parent, {}).get(offer.profile)
        if set_ is not None:
            return set_
        whole = self.products.get(parent)
        share = mig_share(offer)
        return None if whole is None or share is None else round(whole * share, 4)


def mig_share(offer: Offer) -> float | None:
    """The share of its GPU a MIG device takes: the larger of its compute slices over the
    GPU's and its memory over the GPU's (None when the profile name is not one)."""
    if offer.profile is None:
        return None
    slices = mig_compute_slices(offer.profile)
    if slices is None:
        return None
    full = next((n for part, n in MIG_COMPUTE_SLICES.items() if part in offer.product),
                FULL_COMPUTE_SLICES)
    share = slices / full
    if offer.gpu_memory_bytes:
        share = max(share, offer.memory_bytes / offer.gpu_memory_bytes)
    return min(1.0, share)


DEFAULT_PRICES = Prices(products={p.product: p.usd_per_hour for p in LIST_PRICES})


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10**6:
        raise PriceError(f"{where}: {value!r} is not a price per hour (a number from 0)")
    return float(value)


def parse_prices(raw: Mapping[str, Any] | None, *,
                 known: Sequence[str] = KNOWN_PRODUCTS) -> Prices:
    """A price table as configured (``{products: {product: usd}, mig: {product: {profile:
    usd}}}``), over the defaults; a product outside ``known`` or a malformed profile is
    refused, naming the key."""
    if raw is None:
        return DEFAULT_PRICES
    if not isinstance(raw, Mapping):
        raise PriceError("gpuPrices: expected an object with products and mig")
    unknown = set(raw) - {"products", "mig"}
    if unknown:
        raise PriceError(f"gpuPrices.{sorted(unknown)[0]}: unknown key; use products and mig")

    def product(name: Any, where: str) -> str:
        if name not in known:
            raise PriceError(f"{where}: {name!r} is not a known GPU product "
                             f"(nvidia.com/gpu.product); known: {', '.join(known)}")
        return str(name)

    products = dict(DEFAULT_PRICES.products)
    for name, value in (raw.get("products") or {}).items():
        products[product(name, f"gpuPrices.products.{name}")] = _price(
            value, f"gpuPrices.products.{name}")
    mig: dict[str, dict[str, float]] = {}
    for name, profiles in (raw.get("mig") or {}).items():
        where = f"gpuPrices.mig.{name}"
        if not isinstance(profiles, Mapping):
            raise PriceError(f"{where}: expected profile -> price, e.g. 1g.10gb: 1.76")
        for profile, value in profiles.items():
            if not _PROFILE.match(str(profile)):
                raise PriceError(f"{where}.{profile}: not a MIG profile such as 1g.10gb")
            mig.setdefault(product(name, where), {})[str(profile)] = _price(
                value, f"{where}.{profile}")
    return Prices(products, mig)


# ---- placement -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where a variant's pods go: ``gpu_count`` devices of ``offer``."""

    offer: Offer
    gpu_count: int
    need_bytes: int
    price_per_hour: float | None
    """Per pod (``gpu_count`` devices); None: no price for this offer."""
    pinned: bool
    """The user pinned it (products or resource): only its fit was checked."""

    @property
    def resource(self) -> str:
        return self.offer.resource

    def resources(self) -> dict[str, str]:
        """The requests and limits of the resource (extended resources: equal)."""
        return {self.offer.resource: str(self.gpu_count)}

    def node_affinity(self) -> dict[str, Any]:
        """``affinity.nodeAffinity``: the offer's product, required."""
        return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": PRODUCT_LABEL, "operator": "In",
                                   "values": [self.offer.product]}]}]}}

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
                               "pinned": self.pinned}
        if self.offer.profile:
            out["migProfile"] = self.offer.profile
        if self.price_per_hour is not None:
            out["pricePerHour"] = self.price_per_hour
        return out


@dataclass(frozen=True)
class DoesNotFit:
    """No offer holds the variant; ``message`` names the need and the largest offer."""

    need_bytes: int
    largest: Offer | None
    message: str
    pinned: bool
    reason: str = INSUFFICIENT


def choose(need_bytes: int, gpu_count: int, pools: Pools | Sequence[Offer], prices: Prices,
           pinned_products: Sequence[str] = (), pinned_resource: str | None = None
           ) -> Placement | DoesNotFit:
    """The cheapest offer where ``gpu_count`` devices holding ``need_bytes`` each fit on one
    node; with pins (``gpu.products``; a ``gpu.resourceName`` other than nvidia.com/gpu),
    only what they allow is checked (a pinned product without a pinned resource means whole
    GPUs, as the pods request them)."""
    offers = pools.offers if isinstance(pools, Pools) else tuple(pools)
    pinned = bool(pinned_products) or pinned_resource is not None
    if pinned:
        resource = pinned_resource or GPU_RESOURCE
        offers = tuple(o for o in offers if o.resource == resource
                       and (not pinned_products or o.product in pinned_products))
    fits = [o for o in offers if o.memory_bytes >= need_bytes and o.max_per_node >= gpu_count]
    if fits:
        def key(o: Offer) -> tuple[bool, float, int, str, str]:
            p = prices.of(o)
            return (p is None, p or 0.0, o.memory_bytes, o.product, o.resource)
        best = min(fits, key=key)
        unit = prices.of(best)
        return Placement(best, gpu_count, need_bytes,
                         None if unit is None else round(unit * gpu_count, 4), pinned)
    return _does_not_fit(need_bytes, gpu_count, offers, pinned, pinned_products,
                         pinned_resource)


def _does_not_fit(need: int, count: int, offers: Sequence[Offer], pinned: bool,
                  products: Sequence[str], resource: str | None) -> DoesNotFit:
    scope = ""
    if pinned:
        what = resource or GPU_RESOURCE
        scope = (f" among {what} of the pinned products {', '.join(products)}" if products
                 else f" among {what}")
    if not offers:
        return DoesNotFit(need, None, f"needs {gib(need)} of GPU memory, and the cluster "
                          f"offers no GPU{scope or ''} (no schedulable node carries "
                          f"{PRODUCT_LABEL} with its memory)", pinned)
    largest = max(offers, key=lambda o: (o.memory_bytes, o.max_per_node, o.product))
    if largest.memory_bytes >= need:
        most = max(o.max_per_node for o in offers if o.memory_bytes >= need)
        return DoesNotFit(need, largest, f"needs {count} devices of at least {gib(need)} on "
                          f"one node, the most any node offers{scope} is {most}", pinned)
    return DoesNotFit(need, largest, f"needs {gib(need)} of GPU memory, the largest "
                      f"offer{scope} is {gib(largest.memory_bytes)} ({largest.label})", pinned)
