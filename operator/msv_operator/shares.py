"""Honest shares: the part of the requests each variant receives, and whether a replica split
can represent a weight (pure: no I/O, no clock).

Without a gateway the stable Service selects every Ready pod that carries the ``serving``
label, so a variant receives its part of those pods, not its weight. With a Gateway that
accepted the ModelService's HTTPRoute (``routed``) the weights are exact per request.

* ``delivered`` (``status``): the share each variant receives, ``status.variants[].share``
  and ``status.shares`` (``text``);
* ``represent`` is THE policy (docs/rollouts.md, "What a weight means with and without a
  gateway"): without a gateway, the fewest pods at or above what each weighted variant
  would run anyway (``floors``) and at most its bound (``bounds``) whose split puts every
  variant within ``TOLERANCE`` points of its weight; when no such split exists the floors
  stay as they are and the split is *not representable*;
* ``plan`` reads the floors and bounds from the spec: without autoscaling the split of
  ``spec.replicas`` by weight (at least one pod per weighted variant, ``spec.variants[].
  replicas`` fixed) and at most ``spec.replicas`` pods per variant; with autoscaling the
  HPAs' ``minReplicas`` and ``maxReplicas``. ``builders`` turns a representable plan into
  Deployment replicas (or HPA minReplicas), ``rollout`` holds a step that is not
  representable (``Paused``, reason ``SHARE_NOT_REPRESENTABLE``), ``status`` says so
  (``Progressing=False``, same reason, message from ``explain``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from msv_contract.api import LABEL_SERVING, LABEL_VARIANT
from msv_operator.spec import ModelServiceSpec

TOLERANCE = 5
"""Points (of 100) a delivered share may be off its weight and still count as that weight."""
SHARE_NOT_REPRESENTABLE = "ShareNotRepresentable"
"""Reason of ``Progressing=False`` and of a held rollout (``status.rollout``, ``Paused``)."""
NO_ENDPOINTS = "no ready endpoints"
"""Said in ``status.shares`` when no pod serves (every share is 0)."""
HINT_SPAN = 200
"""How far above the current bound ``plan`` looks for one that would do (the hint)."""
MAX_REPLICAS = 1000
"""The CRD's maximum of spec.replicas and spec.autoscaling.maxReplicas."""


# ---- what is delivered ---------------------------------------------------------------------

def percents(counts: Mapping[str, int]) -> dict[str, int]:
    """Integer percent of ``counts`` per key, summing to 100 (largest remainder; ties go to
    the earlier key); all 0 when the counts are."""
    total = sum(max(0, c) for c in counts.values())
    if total <= 0:
        return dict.fromkeys(counts, 0)
    exact = {k: 100 * max(0, c) / total for k, c in counts.items()}
    out = {k: int(x) for k, x in exact.items()}
    order = list(counts)
    left = 100 - sum(out.values())
    for k in sorted(order, key=lambda k: (-(exact[k] - out[k]), order.index(k)))[:left]:
        out[k] += 1
    return out


def _ready(pod: Mapping[str, Any]) -> bool:
    """Ready and not being deleted: what an EndpointSlice lists as ready."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def endpoints(pods: Iterable[Mapping[str, Any]], marked: bool = True) -> dict[str, int]:
    """Ready pods per variant; ``marked``: only those carrying ``serving: "true"`` (the
    stable Service's endpoints)."""
    out: dict[str, int] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        variant = labels.get(LABEL_VARIANT)
        if variant is None or not _ready(pod):
            continue
        if marked and labels.get(LABEL_SERVING) != "true":
            continue
        out[str(variant)] = out.get(str(variant), 0) + 1
    return out


def delivered(weights: Mapping[str, int], pods: Iterable[Mapping[str, Any]],
              routed: bool) -> dict[str, int]:
    """The percent of the requests each variant of ``weights`` receives. ``routed``: its
    effective weight (a gateway routes by weight). Otherwise its Ready pods with the serving
    mark over all such pods. All 0 when no pod could answer (routed: no ready pod in any
    weighted variant; not routed: no endpoint in the stable Service)."""
    if routed:
        ready = endpoints(pods, marked=False)
        if not any(ready.get(v, 0) for v, w in weights.items() if w > 0):
            return dict.fromkeys(weights, 0)
        return dict(weights)
    counts = endpoints(pods)
    return percents({v: counts.get(v, 0) for v in weights})


def text(shares: Mapping[str, int]) -> str:
    """``baseline=67,int8=33`` (``status.shares``); says ``NO_ENDPOINTS`` when all are 0."""
    out = ",".join(f"{v}={s}" for v, s in shares.items())
    if shares and not any(shares.values()):
        out += f" ({NO_ENDPOINTS})"
    return out


# ---- the policy ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """Serving pods per weighted variant, and whether they represent the weights."""

    weights: Mapping[str, int]
    """The weights asked (variants with weight above 0 only)."""
    pods: Mapping[str, int]
    representable: bool
    """Every variant's part of the pods is within TOLERANCE points of its weight."""

    def shares(self) -> dict[str, int]:
        return percents(self.pods)

    def worst(self) -> str | None:
        """The variant furthest from its weight (of equals the one with less weight, then the
        first); None without any."""
        total = sum(self.pods.values())
        if not self.weights:
            return None
        # |100 pods/total - weight| x total, in integers (complementary errors compare equal)
        return max(self.weights, key=lambda v: (
            abs(100 * self.pods.get(v, 0) - self.weights[v] * total) if total else
            self.weights[v], -self.weights[v]))


def represent(weights: Mapping[str, int], floors: Mapping[str, int],
              bounds: Mapping[str, int], tolerance: int = TOLERANCE) -> Split:
    """THE representation policy. Among splits with every weighted variant at or above its
    floor and at or below its bound (a bound below the floor counts as the floor), the one
    with the fewest pods in total whose parts are all within ``tolerance`` points of the
    weights (the extra pods go, one at a time, to the variant furthest below its weight).
    None exists: the floors, not representable. Variants without weight take no part."""
    names = [v for v, w in weights.items() if w > 0]
    asked = {v: int(weights[v]) for v in names}
    base = {v: max(0, int(floors.get(v, 1))) for v in names}
    if not names:
        return Split(asked, base, True)
    top = {v: max(int(bounds.get(v, base[v])), base[v]) for v in names}
    for n in range(max(1, sum(base.values())), sum(top.values()) + 1):
        lo = {v: max(base[v], -(-n * (asked[v] - tolerance) // 100)) for v in names}
        if any(lo[v] > top[v] for v in names):
            break  # a variant would need more than its bound, and more pods only need more
        hi = {v: min(top[v], n * (asked[v] + tolerance) // 100) for v in names}
        if any(lo[v] > hi[v] for v in names) or not (
                sum(lo.values()) <= n <= sum(hi.values())):
            continue
        pods = dict(lo)
        for _ in range(n - sum(lo.values())):
            grow = max((v for v in names if pods[v] < hi[v]),
                       key=lambda v: (n * asked[v] / 100 - pods[v], -names.index(v)))
            pods[grow] += 1
        return Split(asked, pods, True)
    return Split(asked, base, False)


@dataclass(frozen=True)
class Plan:
    """``represent`` applied to a ModelService: the split, the bound that limits it and (when
    it is not representable) the bound that would do."""

    split: Split
    field: str
    """``spec.replicas`` or ``spec.autoscaling.maxReplicas``."""
    bound: int
    needed: int | None = None
    """The smallest value of ``field`` that represents the weights (within HINT_SPAN), when
    the current one does not; None when it does or none would (fixed variant replicas)."""


def floor_of(replicas: int, weight: int) -> int:
    """A variant's part of ``spec.replicas`` by weight: at least one pod with any weight."""
    return max(1, round(replicas * weight / 100)) if weight else 1


def _fixed(spec: ModelServiceSpec, weights: Mapping[str, int], replicas: int
           ) -> tuple[dict[str, int], dict[str, int]]:
    """(floors, bounds) without autoscaling, for ``spec.replicas`` = ``replicas``."""
    floors: dict[str, int] = {}
    bounds: dict[str, int] = {}
    for v in spec.variants:
        weight = int(weights.get(v.name, 0))
        if weight <= 0:
            continue
        if v.replicas is not None:  # the user's own count: neither raised nor lowered
            floors[v.name] = bounds[v.name] = v.replicas
        else:
            floors[v.name] = floor_of(replicas, weight)
            bounds[v.name] = max(replicas, floors[v.name])
    return floors, bounds


def plan(spec: ModelServiceSpec, weights: Mapping[str, int]) -> Plan:
    """The split of ``weights`` that ``spec``'s replica bounds allow (see ``represent``).

    Without autoscaling each weighted variant would run its part of ``spec.replicas``
    (``floor_of``) and runs at most ``spec.replicas`` pods (``spec.variants[].replicas``:
    exactly that many). With autoscaling it runs at least the HPA's minReplicas and at most
    its maxReplicas (the plan raises minReplicas; load may add pods, which
    ``status.variants[].share`` shows)."""
    a = spec.autoscaling
    if a is not None:
        names = [v for v, w in weights.items() if w > 0]
        floors = dict.fromkeys(names, a.min_replicas)
        split = represent(weights, floors, dict.fromkeys(names, a.max_replicas))
        out = Plan(split, "spec.autoscaling.maxReplicas", a.max_replicas)
        if split.representable:
            return out
        wide = represent(weights, floors, dict.fromkeys(names, MAX_REPLICAS))
        return Plan(split, out.field, out.bound,
                    max(wide.pods.values()) if wide.representable else None)
    split = represent(weights, *_fixed(spec, weights, spec.replicas))
    if split.representable:
        return Plan(split, "spec.replicas", spec.replicas)
    needed = next((r for r in range(spec.replicas + 1,
                                    min(MAX_REPLICAS, spec.replicas + HINT_SPAN) + 1)
                   if represent(weights, *_fixed(spec, weights, r)).representable), None)
    return Plan(split, "spec.replicas", spec.replicas, needed)


def explain(p: Plan, would: bool = False) -> str:
    """Why ``p`` is not representable and what to do, naming the worst variant's weight, the
    share the replicas give it (``would``: a step not taken yet) and the fields to change."""
    s = p.split
    worst = s.worst()
    if worst is None:
        return "nothing to split"
    total = sum(s.pods.values())
    what = (f"without a gateway requests split by ready pods, and {p.field}={p.bound} allows no "
            f"split within ±{TOLERANCE} points: {worst} at {s.weights[worst]}% "
            f"{'would get' if would else 'gets'} "
            f"{s.shares().get(worst, 0)}% ({s.pods.get(worst, 0)} of {total} pods)")
    fix = "add a gateway (spec.gateway) for exact weights"
    if p.needed is not None:
        fix += f", or raise {p.field} to {p.needed}"
    elif p.field == "spec.replicas":
        fix += ", or change spec.variants[].replicas"
    return f"{what}; {fix}"
