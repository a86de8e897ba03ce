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
    argmax_agreement,
    bert_base,
    environment,
    forward,
    interleaved_latency,
    token_batch,
    torch,
    trained_classifier,
    write_result,
)

from model_server.optimize.quantize import quantize_dynamic_int8
from model_server.optimize.stats import torch_param_stats, torch_serialized_size

GOALS = {"latency": 0.45, "size": 0.42, "agreement": 0.99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--agreement-samples", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.time()
    fp32 = bert_base()
    t0 = time.perf_counter()
    int8 = quantize_dynamic_int8(copy.deepcopy(fp32))
    quantize_s = time.perf_counter() - t0

    size = {"fp32": torch_serialized_size(fp32), "int8": torch_serialized_size(int8)}
    params = {"fp32": torch_param_stats(fp32)[0], "int8": torch_param_stats(int8)[0]}

    latency: dict[str, dict] = {}
    for batch in (1, 8):
        inputs = token_batch(batch, args.seq_len)
        iters = args.iterations if batch == 1 else max(2, args.iterations // 2)
        latency[f"batch{batch}"] = interleaved_latency(
            {"fp32": forward(fp32, inputs), "int8": forward(int8, inputs)}, iters
        )

    with torch.inference_mode():
        rand = token_batch(64, args.seq_len, seed=1)
        random_agreement = argmax_agreement(fp32(**rand).logits, int8(**rand).logits)
    del fp32, int8

    small, tokenizer, accuracy = trained_classifier()
    small_int8 = quantize_dynamic_int8(copy.deepcopy(small))
    import modelfactory

    texts, labels = modelfactory.sentiment_sentences(args.agreement_samples, seed=999)
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        a, b = small(**enc).logits, small_int8(**enc).logits
    agreement = argmax_agreement(a, b)
    y = torch.tensor(labels)
    acc_fp32 = float((a.argmax(-1) == y).float().mean())
    acc_int8 = float((b.argmax(-1) == y).float().mean())

    ratios = {
        "latency_batch1": round(
            latency["batch1"]["int8"]["p50_ms"] / latency["batch1"]["fp32"]["p50_ms"], 3
        ),
        "latency_batch8": round(
            latency["batch8"]["int8"]["p50_ms"] / latency["batch8"]["fp32"]["p50_ms"], 3
        ),
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
            "trained_classifier_train_accuracy_heldout": accuracy,
            "random_bert_base_argmax_on_random_tokens": random_agreement,
        },
        "ratios": ratios,
        "goals": GOALS,
        "goal_met": verdict,
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
    }
    path = write_result("quantization", doc)
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
    print(f"  goals met: {verdict}")
    print(f"  wrote {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
