"""PURE: what a GPU costs per device-hour and a CPU per vCPU-hour, and the price tables the
operator accepts.

Prices are per device-hour, in US dollars: per GPU product (GPU feature discovery's
``nvidia.com/gpu.product`` value), and per MIG profile either set or derived from its
product's price times the profile's share of the GPU (the larger of its compute slices over
the GPU's and its memory over the GPU's: a slice holds both). A variant without GPUs is priced
per vCPU-hour of its CPU request (``cpu``; 0: CPU is free). ``DEFAULT_PRICES`` are
approximate on-demand list prices (``LIST_PRICES`` and ``CPU_LIST_PRICE`` name each source); a
cluster sets its own (``parse_prices``: the chart's ``gpuPrices``, the operator's
``MSV_GPU_PRICES``).

MIG profile names (``1g.10gb``, ``1c.3g.40gb``, ``1g.10gb+me``) are read here too: a price
table names them, and ``pools`` reads a profile's memory and compute slices from them.

The bottom of the operator's layers (it imports nothing of the operator), so ``config`` can
refuse a bad table at start, naming the setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PROFILE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:\+me)?$")
"""``1g.10gb``, ``1c.3g.40gb`` (a compute instance of a 3g), ``1g.10gb+me`` (media engines)."""
MIG_COMPUTE_SLICES: Mapping[str, int] = {"A30": 4}
"""Compute slices of a whole GPU, by a part of its product name; 7 otherwise (A100, H100,
H200, B200)."""
FULL_COMPUTE_SLICES = 7


def mig_memory_bytes(profile: str) -> int | None:
    """A profile's memory from its name (``3g.40gb``: 40 GB); None when it is not one."""
    m = PROFILE.match(profile)
    return int(m.group(3)) * 10**9 if m else None


def mig_compute_slices(profile: str) -> int | None:
    m = PROFILE.match(profile)
    if not m:
        return None
    return int(m.group(1) or m.group(2))


class Priced(Protocol):
    """What a price is looked up by (``pools.Offer``)."""

    @property
    def product(self) -> str: ...

    @property
    def profile(self) -> str | None: ...

    @property
    def memory_bytes(self) -> int: ...

    @property
    def gpu_memory_bytes(self) -> int | None: ...

    @property
    def parent_product(self) -> str: ...


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
CPU_LIST_PRICE = ListPrice("vCPU", 0.0446, "Amazon EC2 c7i.large (2 vCPU, 4 GiB), $0.08925/h / 2")
"""Per vCPU-hour (one core of a CPU request), as the GPU list prices: the general-purpose
compute-optimized instance's on-demand price in US East (N. Virginia), Linux, listed 2024,
divided by its vCPUs (so its memory is included)."""
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
    cpu: float = CPU_LIST_PRICE.usd_per_hour
    """Per vCPU-hour of a variant without GPUs (0: CPU is free)."""

    def of_cpu(self, cores: float) -> float:
        """One pod requesting ``cores`` CPUs (a GPU's price includes its host's CPU)."""
        return round(max(0.0, cores) * self.cpu, 6)

    def of(self, offer: Priced) -> float | None:
        """One device of ``offer``; None when neither it nor its GPU has a price."""
        parent = offer.parent_product
        if offer.profile is None:
            return self.products.get(offer.product)
        if offer.product != parent and offer.product in self.products:
            return self.products[offer.product]  # single strategy, priced as its label
        set_ = self.mig.get(parent, {}).get(offer.profile)
        if set_ is not None:
            return set_
        whole = self.products.get(parent)
        share = mig_share(offer)
        return None if whole is None or share is None else round(whole * share, 4)


def mig_share(offer: Priced) -> float | None:
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
PRICE_LIMIT = 10**6
"""Prices are below this (USD per device- or vCPU-hour; the chart's schema says the same)."""


def _price(value: Any, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0 <= value < PRICE_LIMIT):
        raise PriceError(f"{where}: {value!r} is not a price per hour (a number from 0)")
    return float(value)


def parse_prices(raw: Mapping[str, Any] | None, *,
                 known: Sequence[str] = KNOWN_PRODUCTS) -> Prices:
    """A price table as configured (``{products: {product: usd}, mig: {product: {profile:
    usd}}, cpu: usd}``), over the defaults (``cpu`` absent or null: its list price); a product
    outside ``known``, a malformed profile or a price that is not one is refused, naming the
    key."""
    if raw is None:
        return DEFAULT_PRICES
    if not isinstance(raw, Mapping):
        raise PriceError("gpuPrices: expected an object with products, mig and cpu")
    unknown = set(raw) - {"products", "mig", "cpu"}
    if unknown:
        raise PriceError(f"gpuPrices.{sorted(unknown)[0]}: unknown key; use products, mig "
                         "and cpu")

    def product(name: Any, where: str) -> str:
        if name not in known:
            raise PriceError(f"{where}: {name!r} is not a known GPU product "
                             f"(nvidia.com/gpu.product); known: {', '.join(known)}")
        return str(name)

    def section(key: str) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise PriceError(f"gpuPrices.{key}: expected an object")
        return value

    products = dict(DEFAULT_PRICES.products)
    for name, value in section("products").items():
        products[product(name, f"gpuPrices.products.{name}")] = _price(
            value, f"gpuPrices.products.{name}")
    mig: dict[str, dict[str, float]] = {}
    for name, profiles in section("mig").items():
        where = f"gpuPrices.mig.{name}"
        if not isinstance(profiles, Mapping):
            raise PriceError(f"{where}: expected profile -> price, e.g. 1g.10gb: 1.76")
        for profile, value in profiles.items():
            if not PROFILE.match(str(profile)):
                raise PriceError(f"{where}.{profile}: not a MIG profile such as 1g.10gb")
            mig.setdefault(product(name, where), {})[str(profile)] = _price(
                value, f"{where}.{profile}")
    cpu = raw.get("cpu")
    return Prices(products, mig, DEFAULT_PRICES.cpu if cpu is None else _price(
        cpu, "gpuPrices.cpu"))
