"""The Wilson score bounds of the agreement gate and the comparisons a decision needs."""

from __future__ import annotations

import math

import pytest
from msv_operator import confidence as c

Z95 = c.z_score(0.95)


def test_z_of_the_usual_levels() -> None:
    assert c.z_score(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert c.z_score(0.8) == pytest.approx(1.281552, abs=1e-6)
    assert c.z_score(0.999) == pytest.approx(3.290527, abs=1e-6)
    with pytest.raises(ValueError, match="outside"):
        c.z_score(1.0)


@pytest.mark.parametrize(("p", "n", "low", "high"), [
    (1.0, 20, 0.8389, 1.0),        # 20/20: n / (n + z**2)
    (0.97, 200, 0.9361, 0.9862),
    (0.5, 200, 0.4314, 0.5686),
    (0.0, 10, 0.0, 0.2775),
])
def test_wilson_bounds_of_fixed_counts(p: float, n: int, low: float, high: float) -> None:
    got = c.wilson(p, n, Z95)
    assert got == pytest.approx((low, high), abs=1e-4)
    assert got[0] <= p <= got[1]


def test_no_observations_bound_nothing() -> None:
    assert c.wilson(0.9, 0, Z95) == (0.0, 1.0)
    assert c.decide(0.9, 0, 0.5, Z95) is None


def test_twenty_perfect_comparisons_do_not_decide_but_200_do() -> None:
    assert c.decide(1.0, 20, 0.9, Z95) is None
    assert c.decide(0.97, 200, 0.9, Z95) is True
    assert c.decide(0.5, 200, 0.9, Z95) is False
    assert c.decide(0.5, 20, 0.9, Z95) is False   # far below: few comparisons suffice


def test_the_closed_form_is_where_the_bound_meets_the_threshold() -> None:
    # p = 1: the low bound n / (n + z**2) reaches t at n = z**2 t / (1 - t)
    assert c.samples_for(1.0, 0.9, Z95) == pytest.approx(Z95 ** 2 * 9)
    n = c.samples_for(0.97, 0.9, Z95)
    assert c.wilson(0.97, n, Z95)[0] == pytest.approx(0.9)
    n = c.samples_for(0.85, 0.9, Z95)
    assert c.wilson(0.85, n, Z95)[1] == pytest.approx(0.9)
    assert c.samples_for(0.9, 0.9, Z95) == math.inf


@pytest.mark.parametrize(("p", "n", "threshold"), [
    (1.0, 20, 0.9), (1.0, 20, 0.99), (0.98, 100, 0.99), (0.95, 50, 0.9), (0.85, 30, 0.9),
    (0.5, 3, 0.6), (0.999, 10, 0.99),
])
def test_samples_needed_is_exactly_what_decides(p: float, n: int, threshold: float) -> None:
    needed = c.samples_needed(p, n, threshold, Z95)
    assert needed is not None and needed > 0
    assert c.decide(p, n + needed, threshold, Z95) is (p > threshold)
    assert c.decide(p, n + needed - 1, threshold, Z95) is None


def test_twenty_perfect_comparisons_need_fifteen_more_at_0_9() -> None:
    assert c.samples_needed(1.0, 20, 0.9, Z95) == 15      # 35 in all: 35/(35+3.84) = 0.901
    assert c.samples_needed(1.0, 20, 0.99, Z95) == 361    # 381 in all


def test_samples_needed_falls_as_comparisons_come_in_and_is_0_once_decided() -> None:
    seen = [c.samples_needed(0.97, n, 0.9, Z95) for n in range(0, 120, 5)]
    assert all(isinstance(x, int) for x in seen)
    numbers = [x for x in seen if x is not None]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] > numbers[-1] == 0
    # at each n, the count still needed plus n is the same total (the closed form, rounded up)
    totals = {n + x for n, x in zip(range(0, 120, 5), numbers, strict=True) if x}
    assert totals == {math.ceil(c.samples_for(0.97, 0.9, Z95))}


def test_samples_needed_grows_as_the_agreement_nears_the_threshold() -> None:
    above = [c.samples_needed(p, 10, 0.9, Z95) for p in (1.0, 0.98, 0.95, 0.92, 0.91)]
    below = [c.samples_needed(p, 10, 0.9, Z95) for p in (0.6, 0.8, 0.85, 0.88, 0.89)]
    for series in (above, below):
        numbers = [x for x in series if x is not None]
        assert len(numbers) == len(series)
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_at_the_threshold_or_too_close_it_is_not_reachable() -> None:
    assert c.samples_needed(0.9, 1000, 0.9, Z95) is None
    assert c.samples_needed(0.9001, 1000, 0.9, Z95) is None   # about 35 million needed
    assert c.samples_for(0.9001, 0.9, Z95) > c.SAMPLES_NEEDED_CAP


def test_a_higher_confidence_needs_more_comparisons() -> None:
    needs = [c.samples_needed(1.0, 10, 0.9, c.z_score(level)) for level in (0.8, 0.95, 0.999)]
    assert needs == sorted(needs) and len(set(needs)) == 3
