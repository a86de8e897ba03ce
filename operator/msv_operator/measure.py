"""Per-variant measurements of a ModelService: what a pass reads from Prometheus (through
``rollout.Analyzer``, ``prom``) and from metrics.k8s.io (through ``kube``) into the
``status.variants[]`` fields, on the analysis interval rather than on every pass.

Called by ``reconcile`` with its ``Context`` (``Sources`` names what is read of it); the
samples it returns feed the rollout's analysis and the brownout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from msv_operator import builders, prom, quantity, rollout, spec
from msv_operator.config import OperatorConfig

NO_PROMETHEUS = ("no Prometheus address is configured (operator setting MSV_PROMETHEUS_URL, "
                 "chart value prometheus.url)")


class PodMetricsReader(Protocol):
    def pod_metrics(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...


class Sources(Protocol):
    """What measuring reads of ``reconcile.Context``."""

    @property
    def config(self) -> OperatorConfig: ...

    @property
    def kube(self) -> PodMetricsReader: ...

    @property
    def analyzer(self) -> rollout.Analyzer | None: ...

    @property
    def measured_at(self) -> dict[tuple[str, str], datetime]: ...


@dataclass
class Measurement:
    """What ``measure`` took in one pass."""

    for_rollout: rollout.Sample | None = None
    """The sample for the rollout (only when its analysis is due)."""
    taken: rollout.Sample | None = None
    """Any sample taken in this pass (the brownout reads the stable variant's p95 from it)."""
    wait: float | None = None
    """Seconds until the next refresh."""


def _cadence(ctx: Sources, parsed: spec.ModelServiceSpec, prior: Mapping[str, Any]
             ) -> tuple[float, float]:
    """(interval, window) of the measurements: the rollout's analysis while it is active
    or configured, else the brownout's, else the operator's MSV_MEASURE_SECONDS."""
    phase = (prior.get("rollout") or {}).get("phase")
    b = parsed.autoscaling.brownout if parsed.autoscaling else None
    if parsed.rollout and (b is None or phase in rollout.ACTIVE):
        return parsed.rollout.analysis.interval_seconds, parsed.rollout.analysis.window_seconds
    if b is not None:
        return b.interval_seconds, b.window_seconds
    return ctx.config.measure_seconds, ctx.config.measure_seconds


def measure(ctx: Sources, parsed: spec.ModelServiceSpec, prior: Mapping[str, Any],
            moment: datetime, measured: dict[str, dict[str, Any]]) -> Measurement:
    """Refresh ``measured`` (per-variant fields) when due; returns the samples for the
    rollout (only when its analysis is due) and the brownout, and the seconds until the next
    refresh. A sample that reads Prometheus replaces its fields (a value it no longer has is
    dropped, not kept stale); one that cannot read it keeps the last ones."""
    key = (parsed.namespace, parsed.name)
    step_seconds = rollout.analysis_due(parsed, prior.get("rollout"), moment)
    brownout = parsed.autoscaling is not None and parsed.autoscaling.brownout is not None
    if ctx.analyzer is None:
        blind = rollout.Sample(error=NO_PROMETHEUS)
        return Measurement(for_rollout=None if step_seconds is None else blind,
                           taken=blind if brownout or step_seconds is not None else None)
    interval, window = _cadence(ctx, parsed, prior)
    last = ctx.measured_at.get(key)
    since = None if last is None else (moment - last).total_seconds()
    if step_seconds is None and since is not None and since < interval:
        return Measurement(wait=interval - since)
    ctx.measured_at[key] = moment
    variants = [v.name for v in parsed.variants]
    sample = ctx.analyzer.sample(parsed.namespace, parsed.name, variants, window, step_seconds)
    if sample.error is None:
        for v, metrics in sample.variants.items():
            kept = {k: x for k, x in measured.get(v, {}).items() if k not in prom.FIELDS}
            measured[v] = {**kept, **prom.measured_fields(metrics)}
    usage = pod_usage(ctx, parsed)
    for v, fields in usage.items():
        measured[v] = {**measured.get(v, {}), **fields}
    return Measurement(for_rollout=sample if step_seconds is not None else None, taken=sample,
                       wait=interval)


def pod_usage(ctx: Sources, parsed: spec.ModelServiceSpec) -> dict[str, dict[str, int]]:
    """Average CPU (millicores) and memory (bytes) per pod of each variant, from
    metrics.k8s.io; {} when the cluster does not serve it."""
    sums: dict[str, list[float]] = {}
    selector = f"{builders.LABEL_MODELSERVICE}={parsed.name}"
    for item in ctx.kube.pod_metrics(parsed.namespace, selector):
        variant = ((item.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_VARIANT)
        if not variant:
            continue
        cpu = memory = 0.0
        for c in item.get("containers") or ():
            usage = c.get("usage") or {}
            cpu += quantity.parse(usage.get("cpu")) or 0.0
            memory += quantity.parse(usage.get("memory")) or 0.0
        entry = sums.setdefault(str(variant), [0.0, 0.0, 0.0])
        entry[0] += cpu
        entry[1] += memory
        entry[2] += 1
    return {v: {"cpuMillicores": round(cpu * 1000 / n), "memoryBytes": round(memory / n)}
            for v, (cpu, memory, n) in sums.items() if n}
