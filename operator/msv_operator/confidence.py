"""Confidence bounds on an agreement share: the Wilson score interval (pure: stdlib only).

The rollout's agreement gate (``rollout.evaluate``) decides on these bounds, not on the
measured share alone, so a handful of mirrored comparisons never decides a rollout.

The Wilson interval at confidence ``c`` is the set of shares ``q`` the measurement does not
reject: ``(p - q)**2 <= z**2 * q * (1 - q) / n`` with ``p`` the measured share over ``n``
comparisons and ``z`` the standard normal quantile of ``(1 + c) / 2``. A threshold ``t``
therefore lies outside the interval exactly when ``n >= z**2 * t * (1 - t) / (p - t)**2``
(``samples_for``): that closed form is what ``samples_needed`` starts from.

Each comparison is one observation in [0, 1]: 1 or 0 for a classification row (top label
equal or not), a fraction for a generation (the share of equal tokens) or a raw tensor (the
share of close elements). The Wilson interval is the standard one for a share of 1/0 rows.
For fractions it is an approximation that errs on the careful side: an observation in [0, 1] with
mean ``p`` has a variance of at most ``p * (1 - p)``, the variance of a 1/0 observation with
that mean, which is the variance the interval assumes; so for fractional observations the
interval is at least as wide as the normal approximation with their true variance would be.
"""

from __future__ import annotations

import math
from statistics import NormalDist

SAMPLES_NEEDED_CAP = 1_000_000
"""More comparisons than this still needed (at the measured share) is reported as not
reachable: the measured share is at, or too close to, the threshold to decide."""


def z_score(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval at ``confidence`` (0.95: 1.96)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} is outside (0, 1)")
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a share ``p`` measured over ``n``
    observations; (0, 1) without observations."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, p))
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = 0.0 if p == 0.0 else max(0.0, centre - half)  # exact at the ends, no rounding dust
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high


def decide(p: float, n: float, threshold: float, z: float) -> bool | None:
    """True when the interval's low bound is at or above ``threshold``, False when its high
    bound is below it, None (undecided) otherwise."""
    low, high = wilson(p, n, z)
    if low >= threshold:
        return True
    if high < threshold:
        return False
    return None


def samples_for(p: float, threshold: float, z: float) -> float:
    """The observations at which the interval around ``p`` reaches ``threshold`` (infinite
    when ``p`` is the threshold): ``z**2 * t * (1 - t) / (p - t)**2``."""
    if p == threshold:
        return math.inf
    return z * z * threshold * (1.0 - threshold) / (p - threshold) ** 2


def samples_needed(p: float, n: float, threshold: float, z: float) -> int | None:
    """More observations needed, if the measured share ``p`` holds, until the interval clears
    ``threshold`` on ``p``'s side (0 when it already does); None when that is not reachable:
    ``p`` is the threshold, or more than ``SAMPLES_NEEDED_CAP`` would be needed."""
    have = max(0, math.floor(n))
    if decide(p, have, threshold, z) is not None:
        return 0
    target = samples_for(p, threshold, z)
    if not math.isfinite(target) or target - have > SAMPLES_NEEDED_CAP:
        return None
    total = max(have + 1, math.ceil(target))
    # the closed form is exact; these steps only absorb floating-point rounding at the edge
    while decide(p, total, threshold, z) is None:
        total += 1
    while total - 1 > have and decide(p, total - 1, threshold, z) is not None:
        total -= 1
    needed = total - have
    return needed if needed <= SAMPLES_NEEDED_CAP else None
