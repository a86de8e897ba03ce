"""The offline optimization report: what changed (size, parameters, sparsity, latency) and
how closely the optimized model's outputs agree with the original on sample inputs.

Written by `model-server optimize` as `optimization-report.json` and a human-readable
`optimization-report.txt` next to the optimized artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

JSON_NAME = "optimization-report.json"
TEXT_NAME = "optimization-report.txt"


@dataclass
class Measure:
    """One model's numbers (baseline or optimized)."""

    parameters: int
    size_bytes: int
    sparsity: float
    latency_ms_p50: float
    latency_ms_mean: float


@dataclass
class OptimizationReport:
    """Everything `model-server optimize` found out, ratios optimized / baseline."""

    framework: str
    task: str | None
    source: str
    output: str
    quantization: str
    pruning_method: str
    pruning_amount: float
    samples: int
    baseline: Measure
    optimized: Measure
    agreement: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return round(a / b, 4) if b else float("nan")

        return {
            "size": ratio(self.optimized.size_bytes, self.baseline.size_bytes),
            "parameters": ratio(self.optimized.parameters, self.baseline.parameters),
            "latency_p50": ratio(self.optimized.latency_ms_p50, self.baseline.latency_ms_p50),
        }

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ratios"] = self.ratios
        return doc


def compare_outputs(
    baseline: dict[str, np.ndarray], optimized: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: exact-match rate for BYTES; max/mean |diff| and argmax agreement for numbers.

    Argmax agreement is computed over the last axis for outputs with rank >= 2 (logits,
    probabilities): the fraction of rows whose top class is unchanged.
    """
    result: dict[str, dict[str, float]] = {}
    for name, base in baseline.items():
        opt = optimized.get(name)
        if opt is None:
            continue
        if base.dtype == object or opt.dtype == object:
            same = [a == b for a, b in zip(base.ravel(), opt.ravel(), strict=True)]
            result[name] = {"exact_match": float(np.mean(same)) if same else 1.0}
            continue
        b = base.astype(np.float64)
        o = opt.astype(np.float64)
        diff = np.abs(b - o)
        entry = {
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        }
        if b.ndim >= 2 and b.shape[-1] > 1:
            entry["argmax_agreement"] = float(np.mean(b.argmax(-1) == o.argmax(-1)))
            bn = b.reshape(-1, b.shape[-1])
            on = o.reshape(-1, o.shape[-1])
            denom = np.linalg.norm(bn, axis=1) * np.linalg.norm(on, axis=1)
            cos = np.where(denom > 0, (bn * on).sum(1) / np.where(denom > 0, denom, 1), 1.0)
            entry["cosine_min"] = float(cos.min())
        result[name] = entry
    return result


def render_text(report: OptimizationReport) -> str:
    """A short human-readable summary."""
    r = report.ratios
    b, o = report.baseline, report.optimized
    lines = [
        f"model-server optimize: {report.framework}" + (f" / {report.task}" if report.task else ""),
        f"  source: {report.source}",
        f"  output: {report.output}",
        f"  quantization={report.quantization} pruning={report.pruning_method}"
        + (f" amount={report.pruning_amount}" if report.pruning_method != "none" else ""),
        "",
        f"{'':14}{'baseline':>14}{'optimized':>14}{'ratio':>9}",
        f"{'parameters':14}{b.parameters:>14,}{o.parameters:>14,}{r['parameters']:>9.3f}",
        f"{'size bytes':14}{b.size_bytes:>14,}{o.size_bytes:>14,}{r['size']:>9.3f}",
        f"{'sparsity':14}{b.sparsity:>14.3f}{o.sparsity:>14.3f}",
        f"{'p50 ms':14}{b.latency_ms_p50:>14.3f}{o.latency_ms_p50:>14.3f}{r['latency_p50']:>9.3f}",
        "",
        f"agreement with the original on {report.samples} sample inputs:",
    ]
    for name, entry in report.agreement.items():
        parts = ", ".join(f"{k}={v:.4g}" for k, v in entry.items())
        lines.append(f"  {name}: {parts}")
    if report.pruning_method == "unstructured":
        lines.append("")
        lines.append("note: unstructured sparsity is stored densely: no size or speed gain.")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def write_report(report: OptimizationReport, out_dir: Path) -> tuple[Path, Path]:
    """Write the JSON and text reports into `out_dir`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / JSON_NAME
    text_path = out_dir / TEXT_NAME
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    text_path.write_text(render_text(report), encoding="utf-8")
    return json_path, text_path
