"""Benchmark: dynamic int8 vs fp32 on a BERT-base-shaped classifier (CPU), side by side.

    python bench/quantization.py [--iterations 8] [--seq-len 128] [--threads 1]

Measures, in one run with interleaved timing:
- latency at sequence length 128, batch 1 and batch 8 (p50 of N forward passes);
- size: bytes of the serialized state dict (what lands on disk / in memory);
- argmax agreement int8 vs fp32 on 1,024 held-out inputs of a small classifier trained here
  on synthetic sentiment data (random weights say nothing about agreement), plus, for
  information, agreement of the random BERT-base on random token inputs.
Goals (issue 4): latency <= 0.45x, size <= 0.42x, agreement >= 99%.
The int8 model is produced by the same function the server uses at load time
(model_server.optimize.quantize.quantize_dynamic_int8). Results: bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import copy
import time

from _optim_common import (
    accuracy,
    argmax_agreement,
    batch_latency,
    bert_base,
    finish,
    p50_ratio,
    parse_args,
    sentiment_eval_set,
    token_batch,
    torch,
    trained_classifier,
)

from model_server.optimize.quantize import quantize_dynamic_int8
from model_server.optimize.stats import torch_param_stats, torch_serialized_size

GOALS = {"latency": 0.45, "size": 0.42, "agreement": 0.99}


def main() -> int:
    args = parse_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), iterations=8)

    started = time.time()
    fp32 = bert_base()
    t0 = time.perf_counter()
    int8 = quantize_dynamic_int8(copy.deepcopy(fp32))
    quantize_s = time.perf_counter() - t0

    size = {"fp32": torch_serialized_size(fp32), "int8": torch_serialized_size(int8)}
    params = {"fp32": torch_param_stats(fp32)[0], "int8": torch_param_stats(int8)[0]}

    latency = batch_latency({"fp32": fp32, "int8": int8}, args.seq_len, args.iterations)

    with torch.inference_mode():
        rand = token_batch(64, args.seq_len, seed=1)
        random_agreement = argmax_agreement(fp32(**rand).logits, int8(**rand).logits)
    del fp32, int8

    small, tokenizer, heldout_accuracy = trained_classifier()
    small_int8 = quantize_dynamic_int8(copy.deepcopy(small))
    enc, y = sentiment_eval_set(tokenizer, args.agreement_samples)
    with torch.inference_mode():
        a, b = small(**enc).logits, small_int8(**enc).logits
    agreement = argmax_agreement(a, b)
    acc_fp32, acc_int8 = accuracy(a, y), accuracy(b, y)

    ratios = {
        "latency_batch1": p50_ratio(latency["batch1"], "int8", "fp32"),
        "latency_batch8": p50_ratio(latency["batch8"], "int8", "fp32"),
        "size": round(size["int8"] / size["fp32"], 3),
    }
    verdict = {
        "latency_batch1": ratios["latency_batch1"] <= GOALS["latency"],
        "latency_batch8": ratios["latency_batch8"] <= GOALS["latency"],
        "size": ratios["size"] <= GOALS["size"],
        "agreement": agreement >= GOALS["agreement"],
    }
    doc = {
        "benchmark": "dynamic int8 vs fp32, BERT-base shape, CPU",
        "command": "python bench/quantization.py "
        f"--iterations {args.iterations} --seq-len {args.seq_len} --threads {args.threads}",
        "seq_len": args.seq_len,
        "latency": latency,
        "size_bytes": size,
        "parameters": params,
        "quantize_seconds": round(quantize_s, 2),
        "agreement": {
            "trained_classifier_argmax": agreement,
            "trained_classifier_samples": args.agreement_samples,
            "trained_classifier_accuracy": {"fp32": acc_fp32, "int8": acc_int8},
            "trained_classifier_train_accuracy_heldout": heldout_accuracy,
            "random_bert_base_argmax_on_random_tokens": random_agreement,
        },
        "ratios": ratios,
    }
    print(f"int8 / fp32 on BERT-base shape, seq {args.seq_len}, {args.threads} threads")
    for batch in ("batch1", "batch8"):
        f, q = latency[batch]["fp32"]["p50_ms"], latency[batch]["int8"]["p50_ms"]
        print(f"  {batch}: fp32 {f:8.1f} ms  int8 {q:8.1f} ms  ratio {q / f:.3f}")
    print(
        f"  size: fp32 {size['fp32'] / 1e6:.1f} MB  int8 {size['int8'] / 1e6:.1f} MB  "
        f"ratio {ratios['size']:.3f}"
    )
    print(
        f"  argmax agreement (trained classifier, {args.agreement_samples} inputs): "
        f"{agreement:.4f}; accuracy fp32 {acc_fp32:.3f} int8 {acc_int8:.3f}"
    )
    print(f"  (random BERT-base on random tokens: agreement {random_agreement:.3f})")
    finish("quantization", doc, GOALS, verdict, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
