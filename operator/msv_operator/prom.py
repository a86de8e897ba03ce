"""The only module that talks to Prometheus (its HTTP API, stdlib ``urllib``, with timeouts).

``Prometheus.query`` runs one instant query and returns ``(labels, value)`` pairs; every
failure (connection, timeout, HTTP error, an answer that is not a vector) raises
``PrometheusError``. ``PrometheusAnalyzer`` implements ``rollout.Analyzer``: it turns the
model server's metrics into a ``rollout.Sample`` per ModelService. The series carry the labels
``model`` (the ModelService) and ``variant`` from the server, and ``namespace`` from the
ServiceMonitor scrape (prometheus-operator adds it). A failure becomes ``Sample.error``, which
pauses a rollout: the operator never promotes on metrics it could not read.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from msv_contract import metrics as m
from msv_operator.rollout import Sample, VariantMetrics
from msv_operator.state import VariantStatus

REQUESTS = m.total(m.REQUESTS)
DURATION = m.bucket(m.REQUEST_DURATION)
AGREEMENT = m.MIRROR_AGREEMENT
PARAMETERS = m.MODEL_PARAMETERS
SIZE = m.MODEL_SIZE_BYTES
GPU_PEAK = m.GPU_MEMORY_PEAK_BYTES
VARIANT, TARGET, STATUS = m.LABEL_VARIANT, m.LABEL_TARGET, m.LABEL_STATUS


class PrometheusError(Exception):
    """Prometheus could not answer a query (the message says why)."""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _range(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


class Prometheus:
    """Instant queries against ``url`` (``http://host:9090``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as e:
            detail = ""
            with contextlib.suppress(ValueError, OSError, AttributeError):
                detail = str(json.loads(e.read()).get("error", ""))
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {e.code}"
                                  + (f": {detail}" if detail else "")) from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {reason}") from e
        if not isinstance(body, Mapping) or body.get("status") != "success":
            why = body.get("error", body) if isinstance(body, Mapping) else body
            raise PrometheusError(f"Prometheus at {self.url} refused the query: {why}")
        data = body.get("data")
        if not isinstance(data, Mapping) or data.get("resultType") != "vector":
            kind = data.get("resultType") if isinstance(data, Mapping) else None
            raise PrometheusError(f"Prometheus at {self.url}: expected a vector, got {kind!r}")
        out: list[tuple[dict[str, str], float]] = []
        for item in data.get("result") or ():
            try:
                value = float(item["value"][1])
                labels = dict(item.get("metric") or {})
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                continue
            if math.isfinite(value):
                out.append((labels, value))
        return out

    def by(self, expr: str, label: str) -> dict[str, float]:
        """``query`` keyed by one label's value."""
        return {labels.get(label, ""): value for labels, value in self.query(expr)}


class PrometheusAnalyzer:
    """``rollout.Analyzer`` over a ``Prometheus``."""

    def __init__(self, prometheus: Prometheus) -> None:
        self.prometheus = prometheus

    def queries(self, namespace: str, model: str, window_seconds: float,
                step_seconds: float | None) -> dict[str, str]:
        """The PromQL of one sample (by variant, agreement by target)."""
        sel = (f'{m.LABEL_NAMESPACE}="{_label(namespace)}",'
               f'{m.LABEL_MODEL}="{_label(model)}"')
        w = _range(window_seconds)
        out = {
            "p95": f"histogram_quantile(0.95, sum by (le, {VARIANT}) "
                   f"(rate({DURATION}{{{sel}}}[{w}])))",
            "rps": f"sum by ({VARIANT}) (rate({REQUESTS}{{{sel}}}[{w}]))",
            "errors": f'sum by ({VARIANT}) (rate({REQUESTS}{{{sel},{STATUS}=~"5.."}}[{w}]))',
            "agreement": f"sum by ({TARGET}) (rate({AGREEMENT}_sum{{{sel}}}[{w}])) / "
                         f"sum by ({TARGET}) (rate({AGREEMENT}_count{{{sel}}}[{w}]))",
            # the comparisons behind it, in the same window: the gate's confidence interval
            "agreementSamples": f"sum by ({TARGET}) (increase({AGREEMENT}_count{{{sel}}}[{w}]))",
            "parameters": f"max by ({VARIANT}) ({PARAMETERS}{{{sel}}})",
            "size": f"max by ({VARIANT}) ({SIZE}{{{sel}}})",
            "gpuMemory": f"max by ({VARIANT}) ({GPU_PEAK}{{{sel}}})",
        }
        if step_seconds is not None:
            out["step"] = (f"sum by ({VARIANT}) (increase({REQUESTS}{{{sel}}}"
                           f"[{_range(step_seconds)}]))")
        return out

    def sample(self, namespace: str, model: str, variants: Sequence[str],
               window_seconds: float, step_seconds: float | None) -> Sample:
        q = self.queries(namespace, model, window_seconds, step_seconds)
        try:
            p95 = self.prometheus.by(q["p95"], VARIANT)
            rps = self.prometheus.by(q["rps"], VARIANT)
            errors = self.prometheus.by(q["errors"], VARIANT)
            agreement = self.prometheus.by(q["agreement"], TARGET)
            compared = self.prometheus.by(q["agreementSamples"], TARGET)
            parameters = self.prometheus.by(q["parameters"], VARIANT)
            size = self.prometheus.by(q["size"], VARIANT)
            gpu_memory = self.prometheus.by(q["gpuMemory"], VARIANT)
            step = self.prometheus.by(q["step"], VARIANT) if "step" in q else {}
        except PrometheusError as e:
            return Sample(error=str(e))
        out: dict[str, VariantMetrics] = {}
        for v in variants:
            total = rps.get(v)
            out[v] = VariantMetrics(
                p95_ms=None if v not in p95 else p95[v] * 1000.0,
                rps=total,
                error_rate=(errors.get(v, 0.0) / total) if total else None,
                agreement=agreement.get(v),
                agreement_samples=compared.get(v),
                parameters=parameters.get(v),
                size_bytes=size.get(v),
                gpu_memory_bytes=gpu_memory.get(v),
            )
        return Sample(variants=out, step_requests={v: step.get(v, 0.0) for v in variants})


FIELDS = ("p95Ms", "rps", "errorRate", "agreement", "parameters", "sizeBytes", "gpuMemory")
"""The ``status.variants[]`` fields that come from Prometheus (of ``gpuMemory`` its
``measuredBytes``: the peak the server's pods reserved)."""


def measured_fields(metrics: VariantMetrics) -> dict[str, Any]:
    """The ``status.variants[]`` fields of one variant's metrics (rounded, so an unchanged
    measurement writes nothing)."""
    def r(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)
    fields: dict[str, Any] = {
        "p95Ms": r(metrics.p95_ms, 1), "rps": r(metrics.rps, 2),
        "errorRate": r(metrics.error_rate, 4), "agreement": r(metrics.agreement, 4),
        "parameters": None if metrics.parameters is None else int(metrics.parameters),
        "sizeBytes": None if metrics.size_bytes is None else int(metrics.size_bytes),
        "gpuMemory": None if metrics.gpu_memory_bytes is None else {
            VariantStatus.MEASURED_GPU_MEMORY: int(metrics.gpu_memory_bytes)},
    }
    return {k: v for k, v in fields.items() if v is not None}
