"""The activator's Prometheus metrics (names in ``msv_contract.scaletozero``), in a registry
of its own. The held gauge is read from the holder at scrape time and counts this replica's
requests only: Prometheus sums the replicas."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from msv_contract import scaletozero as stz
from msv_operator.activator.holder import Target

RESULTS = ("forwarded", "timeout", "full", "error")
HOLD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)


class _Held:
    def __init__(self, counts: Callable[[], dict[Target, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Any]:
        gauge = GaugeMetricFamily(stz.HELD, "Requests this replica is holding now.",
                                  labels=["namespace", "modelservice", "variant"])
        for (namespace, modelservice, variant), n in sorted(self.counts().items()):
            gauge.add_metric([namespace, modelservice, variant], n)
        yield gauge


class Metrics:
    def __init__(self, held: Callable[[], dict[Target, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Held(held))
        self.requests = Counter(
            stz.REQUESTS, "Requests the activator answered, by result: forwarded to a pod, "
            "timeout (held too long), full (queue full), error (bad request or no pod "
            "reachable).", ["namespace", "modelservice", "result"], registry=self.registry)
        self.hold_seconds = Histogram(
            stz.HOLD_SECONDS, "How long forwarded requests were held.",
            ["namespace", "modelservice"], buckets=HOLD_BUCKETS, registry=self.registry)

    def result(self, target: Target, result: str) -> None:
        if result not in RESULTS:
            raise ValueError(f"result: {result!r} is not one of {RESULTS}")
        self.requests.labels(target[0], target[1], result).inc()

    def held_for(self, target: Target, seconds: float) -> None:
        self.hold_seconds.labels(target[0], target[1]).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
