"""msv_operator.pareto: each variant's cost and its place on the frontier of p95 latency,
cost per 1,000 requests and agreement."""

from __future__ import annotations

import pytest
from msv_operator import pareto
from msv_operator.pareto import Point


def test_cost_per_hour_is_pods_times_price_and_per_1k_requests_from_the_measured_rate() -> None:
    c = pareto.cost(replicas=2, price_per_pod_hour=5.12, rps=100.0)
    assert c.per_hour == pytest.approx(10.24)
    assert c.per_1k_requests == pytest.approx(10.24 / 360_000 * 1000)
    assert c.to_status() == {"costPerHour": 10.24, "costPer1kRequests": 0.028444}
    idle = pareto.cost(replicas=1, price_per_pod_hour=0.8, rps=0.0)
    assert (idle.per_hour, idle.per_1k_requests) == (0.8, None)
    assert pareto.cost(3, 0.8, None).to_status() == {"costPerHour": 2.4}
    assert pareto.cost(3, None, 50.0) == pareto.Cost(None, None)
    assert pareto.cost(3, None, 50.0).to_status() == {}


def three_variants() -> list[Point]:
    """fp32 on 2 A100s, int8 on 2 L4s, fp16 on 2 A100s at less traffic."""
    return [
        Point("baseline", 40.0, pareto.cost(2, 5.12, 100.0).per_1k_requests, 1.0),
        Point("int8", 30.0, pareto.cost(2, 0.80, 100.0).per_1k_requests, 0.97),
        Point("fp16", 45.0, pareto.cost(2, 5.12, 80.0).per_1k_requests, 0.995),
    ]


def test_three_variants_of_known_measurements() -> None:
    marks = pareto.frontier(three_variants())
    assert list(marks) == ["baseline", "int8", "fp16"]
    # int8 is faster and cheaper but agrees less: both it and the baseline are on the frontier
    assert marks["baseline"].state == marks["int8"].state == pareto.FRONTIER
    # fp16 is slower, dearer per request and agrees less than the baseline
    assert marks["fp16"].state == pareto.DOMINATED
    assert marks["fp16"].dominated_by == ("baseline",)
    assert marks["fp16"].to_status() == {"pareto": "dominated", "dominatedBy": ["baseline"]}
    assert marks["int8"].to_status() == {"pareto": "frontier"}


def test_a_variant_beaten_on_every_axis_names_each_that_beats_it() -> None:
    points = [*three_variants(), Point("pruned", 50.0, 0.05, 0.9)]
    marks = pareto.frontier(points)
    assert marks["pruned"].dominated_by == ("baseline", "int8", "fp16")
    assert marks["fp16"].dominated_by == ("baseline",)  # a dominated variant still dominates
    assert not pareto.dominates(points[3], points[2])


def test_equal_measurements_dominate_neither_way() -> None:
    a, b = Point("a", 10.0, 0.01, 0.99), Point("b", 10.0, 0.01, 0.99)
    assert not pareto.dominates(a, b) and not pareto.dominates(b, a)
    assert {m.state for m in pareto.frontier([a, b]).values()} == {pareto.FRONTIER}


def test_a_variant_missing_a_measurement_is_neither_dominated_nor_dominating() -> None:
    # the candidate has no agreement yet; it is faster and cheaper than fp16 on the two axes
    # it has, and slower than int8: it neither removes fp16's mark nor gets one
    points = [*three_variants(), Point("candidate", 20.0, 0.001, None)]
    marks = pareto.frontier(points)
    assert marks["candidate"].state == pareto.UNMEASURED
    assert marks["candidate"].missing == ("agreement",)
    assert marks["candidate"].to_status() == {"pareto": "unmeasured"}
    assert marks["fp16"].dominated_by == ("baseline",)
    idle = Point("idle", None, None, None)
    assert pareto.frontier([idle])["idle"].missing == ("p95Ms", "costPer1kRequests", "agreement")
    assert not pareto.dominates(points[0], idle) and not pareto.dominates(idle, points[0])
