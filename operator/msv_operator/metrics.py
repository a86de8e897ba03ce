"""The operator's own Prometheus metrics, on an injected registry (served at ``/metrics``).

Names end in a unit or ``_total``. ``runtime`` and ``handlers`` record into one
``OperatorMetrics`` created by ``__main__`` (tests create their own with a fresh registry).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    """Reconciles, their duration, applies and errors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = self._counter(
            "msv_operator_reconciles_total",
            "Reconcile passes of a ModelService by result (applied, unchanged, invalid, error, "
            "terminating).",
            "result")
        self.reconcile_duration = Histogram(
            "msv_operator_reconcile_duration_seconds",
            "Duration of one reconcile pass (build, apply, prune, status).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.applies = self._counter(
            "msv_operator_applies_total",
            "Owned objects sent with server-side apply, by kind.", "kind")
        self.skipped_applies = self._counter(
            "msv_operator_apply_skipped_total",
            "Owned objects not sent because the live object already matches, by kind.", "kind")
        self.deletes = self._counter(
            "msv_operator_prunes_total",
            "Owned objects deleted because their variant or feature was removed, by kind.",
            "kind")
        self.status_writes = self._counter(
            "msv_operator_status_writes_total",
            "ModelService status patches (only sent when the status changed).")
        self.errors = self._counter(
            "msv_operator_errors_total",
            "Errors by kind (conflict, transient, rejected, unexpected).", "kind")
        self.rollout_events = self._counter(
            "msv_operator_rollout_events_total",
            "Rollout moves by Event reason (RolloutStep, RolloutPromoted, RolloutRolledBack, "
            "RolloutPaused, AnalysisFailed, ...).", "reason")
        self.modelservices = Gauge(
            "msv_operator_modelservices",
            "ModelServices currently known to the operator.",
            registry=self.registry)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, list(labels), registry=self.registry)
