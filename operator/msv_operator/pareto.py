"""PURE: what each variant costs, and which variants another one beats on every axis.

Cost per hour is the variant's pods times the price of one pod (its ``gpu.count`` devices of
the offer it was placed on, ``pools.Placement.price_per_hour``; without GPUs its CPU request
at the price per vCPU-hour, ``prices.Prices.of_cpu``). Cost per 1,000 requests is
that hour's cost over the requests it served in an hour at its measured rate
(``status.variants[].rps``): the cost at the traffic it received, so a variant holding a
small share looks dear per request; compare variants at comparable load (a rollout's later
steps, an engaged brownout). No requests measured: no cost per request.

The frontier is over three axes: p95 latency (lower is better), cost per 1,000 requests
(lower) and agreement with the stable variant (higher; the stable variant is the reference,
so its agreement is 1). Variant A dominates B when A is no worse on every axis and better on
one; B is then marked ``dominated`` with the names of all that dominate it, the others are
on the ``frontier``. Equal measurements dominate neither way. A variant missing any of the
three is ``unmeasured``: neither dominated nor dominating, so a variant that served nothing
yet is never called worse (nor better) than the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FRONTIER = "frontier"
DOMINATED = "dominated"
UNMEASURED = "unmeasured"
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class Cost:
    per_hour: float | None
    """None: the offer has no price."""
    per_1k_requests: float | None
    """None: no price, or no requests measured."""

    def to_status(self) -> dict[str, Any]:
        """``costPerHour`` and ``costPer1kRequests`` (US dollars), the ones known."""
        out: dict[str, Any] = {}
        if self.per_hour is not None:
            out["costPerHour"] = round(self.per_hour, 6)
        if self.per_1k_requests is not None:
            out["costPer1kRequests"] = round(self.per_1k_requests, 6)
        return out


def cost(replicas: int, price_per_pod_hour: float | None, rps: float | None) -> Cost:
    """A variant's cost: ``replicas`` pods at ``price_per_pod_hour``, serving ``rps``."""
    if price_per_pod_hour is None:
        return Cost(None, None)
    per_hour = max(0, replicas) * price_per_pod_hour
    if rps is None or rps <= 0:
        return Cost(per_hour, None)
    return Cost(per_hour, per_hour / (rps * SECONDS_PER_HOUR) * 1000)


@dataclass(frozen=True)
class Point:
    """One variant's place on the three axes (None: not measured)."""

    name: str
    p95_ms: float | None
    cost_per_1k: float | None
    agreement: float | None

    @property
    def missing(self) -> tuple[str, ...]:
        """The status keys of the axes it lacks."""
        return tuple(key for key, v in (("p95Ms", self.p95_ms),
                                        ("costPer1kRequests", self.cost_per_1k),
                                        ("agreement", self.agreement)) if v is None)


@dataclass(frozen=True)
class Mark:
    name: str
    state: str
    """``frontier``, ``dominated`` or ``unmeasured``."""
    dominated_by: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    """For ``unmeasured``: the status keys it lacks."""

    def to_status(self) -> dict[str, Any]:
        """``pareto`` and, when dominated, ``dominatedBy``."""
        out: dict[str, Any] = {"pareto": self.state}
        if self.dominated_by:
            out["dominatedBy"] = list(self.dominated_by)
        return out


def dominates(a: Point, b: Point) -> bool:
    """A no worse than B on every axis and better on one (both fully measured)."""
    if a.missing or b.missing:
        return False
    assert a.p95_ms is not None and b.p95_ms is not None
    assert a.cost_per_1k is not None and b.cost_per_1k is not None
    assert a.agreement is not None and b.agreement is not None
    no_worse = (a.p95_ms <= b.p95_ms and a.cost_per_1k <= b.cost_per_1k
                and a.agreement >= b.agreement)
    better = (a.p95_ms < b.p95_ms or a.cost_per_1k < b.cost_per_1k
              or a.agreement > b.agreement)
    return no_worse and better


def frontier(points: Iterable[Point]) -> dict[str, Mark]:
    """Each variant's mark, by name (in the order given)."""
    pts = list(points)
    marks: dict[str, Mark] = {}
    for p in pts:
        if p.missing:
            marks[p.name] = Mark(p.name, UNMEASURED, missing=p.missing)
            continue
        by = tuple(q.name for q in pts if q.name != p.name and dominates(q, p))
        marks[p.name] = Mark(p.name, DOMINATED if by else FRONTIER, dominated_by=by)
    return marks
