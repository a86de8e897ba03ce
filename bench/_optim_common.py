"""Shared pieces of the optimization benchmarks (quantization.py, pruning.py).

A BERT-base-shaped classifier (12 layers, hidden 768, FFN 3072, vocab 30522; random
weights: latency and size do not depend on them), interleaved timing so that load from
other processes on a shared machine hits both sides alike, serialized sizes, and a small
classifier trained here on synthetic data so output agreement means something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))  # modelfactory: tiny models and synthetic data

import torch  # noqa: E402

# TensorFlow is never used here; importing torch._dynamo early is harmless and keeps
# transformers' lazy imports out of the timed region.
import torch._dynamo  # noqa: E402


def parse_args(parser: argparse.ArgumentParser, iterations: int) -> argparse.Namespace:
    """Add the options both benchmarks take, parse the command line and apply --threads."""
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--agreement-samples", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def bert_base(num_labels: int = 2, seed: int = 0) -> Any:
    """A random-init BERT-base-shaped sequence classifier (110M parameters), eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def token_batch(batch: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def interleaved_latency(
    fns: dict[str, Callable[[], Any]], iterations: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """p50/mean milliseconds per function, run round-robin `iterations` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iterations):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: {
            "p50_ms": round(statistics.median(series), 3),
            "mean_ms": round(statistics.fmean(series), 3),
            "min_ms": round(min(series), 3),
            "iterations": len(series),
        }
        for name, series in times.items()
    }


def batch_latency(models: dict[str, Any], seq_len: int, iterations: int) -> dict[str, dict]:
    """Interleaved latency of `models` on random tokens at batch 1 (`iterations` passes)
    and batch 8 (half as many, at least 2), keyed batch1 / batch8."""
    latency: dict[str, dict] = {}
    for batch in (1, 8):
        inputs = token_batch(batch, seq_len)
        iters = iterations if batch == 1 else max(2, iterations // 2)
        latency[f"batch{batch}"] = interleaved_latency(
            {name: forward(model, inputs) for name, model in models.items()}, iters
        )
    return latency


def p50_ratio(timings: dict[str, dict[str, float]], name: str, base: str) -> float:
    """Median latency of `name` over that of `base`, rounded to 3 places."""
    return round(timings[name]["p50_ms"] / timings[base]["p50_ms"], 3)


def forward(model: Any, batch: dict[str, Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(**batch).logits

    return run


def trained_classifier(steps: int = 80) -> tuple[Any, Any, float]:
    """A 4-layer, hidden-128 BERT classifier trained on synthetic sentiment data."""
    import tempfile

    import modelfactory
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model = modelfactory.make_text_classifier(
            tmp,
            hidden_size=128,
            num_layers=4,
            num_heads=4,
            intermediate_size=512,
            save=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    accuracy = modelfactory.train_text_classifier(model, tokenizer, steps=steps)
    return model, tokenizer, accuracy


def sentiment_eval_set(tokenizer: Any, samples: int) -> tuple[Any, Any]:
    """`samples` held-out sentences of the synthetic sentiment task, tokenized, and their labels."""
    import modelfactory

    texts, labels = modelfactory.sentiment_sentences(samples, seed=999)
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return enc, torch.tensor(labels)


def argmax_agreement(a: Any, b: Any) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def accuracy(logits: Any, labels: Any) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "quantized_engine": torch.backends.quantized.engine,
        "load_average": os.getloadavg(),
    }


def finish(
    name: str, doc: dict[str, Any], goals: dict[str, Any], verdict: dict[str, bool], started: float
) -> None:
    """Complete `doc` with the goals, the verdict, the environment and the wall time, write
    it to results/<name>.json and print the verdict."""
    doc.update(
        goals=goals,
        goal_met=verdict,
        environment=environment(),
        wall_seconds=round(time.time() - started, 1),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"  goals met: {verdict}")
    print(f"  wrote {path.relative_to(path.parents[2])}")
