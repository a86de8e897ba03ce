"""Benchmark: unstructured vs structured pruning vs the dense fp32 model (CPU), side by side.

    python bench/pruning.py [--amount 0.5] [--iterations 6] [--seq-len 128] [--threads 1]

On a BERT-base-shaped classifier, in one run with interleaved timing:
- unstructured: 50% of every Linear weight zeroed by magnitude (torch.nn.utils.prune, made
  permanent). Dense kernels do not skip zeros: the expected latency and size ratio is ~1.0;
  it is reported as sparsity, not as a speedup.
- structured: 50% of the FFN intermediate neurons of every block physically removed
  (model_server.optimize.prune.prune_structured_ffn, the function the server uses).
  Goal (issue 4): latency <= 0.80x and size <= 0.80x.
Agreement with the dense model is measured on a small classifier trained here on synthetic
data, without fine-tuning after pruning (so it shows the raw cost of pruning).
Results: bench/results/pruning.json.
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
    torch,
    trained_classifier,
)

from model_server.optimize.prune import prune_structured_ffn, prune_unstructured
from model_server.optimize.stats import torch_param_stats, torch_serialized_size, torch_sparsity

GOALS = {"structured_latency": 0.80, "structured_size": 0.80, "unstructured_latency": "~1.0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amount", type=float, default=0.5)
    args = parse_args(parser, iterations=6)
    started = time.time()

    dense = bert_base()
    models = {
        "dense": dense,
        "unstructured": prune_unstructured(copy.deepcopy(dense), args.amount),
        "structured": copy.deepcopy(dense),
    }
    prune_structured_ffn(models["structured"], args.amount)

    stats = {}
    for name, model in models.items():
        params, _ = torch_param_stats(model)
        stats[name] = {
            "parameters": params,
            "size_bytes": torch_serialized_size(model),
            "sparsity": round(torch_sparsity(model), 4),
        }

    latency = batch_latency(models, args.seq_len, args.iterations)
    del models, dense

    small, tokenizer, heldout_accuracy = trained_classifier()
    enc, y = sentiment_eval_set(tokenizer, args.agreement_samples)
    variants = {
        "unstructured": prune_unstructured(copy.deepcopy(small), args.amount),
        "structured": copy.deepcopy(small),
    }
    prune_structured_ffn(variants["structured"], args.amount)
    with torch.inference_mode():
        ref = small(**enc).logits
        outs = {name: m(**enc).logits for name, m in variants.items()}
    agreement = {
        name: {
            "argmax_agreement": argmax_agreement(ref, out),
            "accuracy": accuracy(out, y),
        }
        for name, out in outs.items()
    }
    agreement["dense"] = {"accuracy": accuracy(ref, y)}

    ratios = {
        name: {
            "latency_batch1": p50_ratio(latency["batch1"], name, "dense"),
            "latency_batch8": p50_ratio(latency["batch8"], name, "dense"),
            "size": round(stats[name]["size_bytes"] / stats["dense"]["size_bytes"], 3),
            "parameters": round(stats[name]["parameters"] / stats["dense"]["parameters"], 3),
        }
        for name in ("unstructured", "structured")
    }
    s = ratios["structured"]
    verdict = {
        "structured_latency_batch1": s["latency_batch1"] <= GOALS["structured_latency"],
        "structured_latency_batch8": s["latency_batch8"] <= GOALS["structured_latency"],
        "structured_size": s["size"] <= GOALS["structured_size"],
    }
    doc = {
        "benchmark": f"pruning {args.amount:.0%}, BERT-base shape, CPU",
        "command": f"python bench/pruning.py --amount {args.amount} --iterations "
        f"{args.iterations} --seq-len {args.seq_len} --threads {args.threads}",
        "labels": {
            "unstructured": "sparsity only: zeros stored densely, latency/size ratio ~1.0 "
            "expected (no speedup)",
            "structured": "FFN neurons physically removed: smaller and faster",
        },
        "amount": args.amount,
        "seq_len": args.seq_len,
        "stats": stats,
        "latency": latency,
        "ratios": ratios,
        "agreement_trained_classifier_no_finetune": agreement,
        "trained_classifier_heldout_accuracy": heldout_accuracy,
    }
    print(f"pruning {args.amount:.0%} vs dense, BERT-base shape, seq {args.seq_len}")
    for batch in ("batch1", "batch8"):
        d = latency[batch]["dense"]["p50_ms"]
        u = latency[batch]["unstructured"]["p50_ms"]
        st = latency[batch]["structured"]["p50_ms"]
        print(
            f"  {batch}: dense {d:8.1f} ms  unstructured {u:8.1f} ms ({u / d:.3f}x, "
            f"sparsity only)  structured {st:8.1f} ms ({st / d:.3f}x)"
        )
    for name in ("unstructured", "structured"):
        print(
            f"  {name}: size {ratios[name]['size']:.3f}x  params {ratios[name]['parameters']:.3f}x"
            f"  sparsity {stats[name]['sparsity']:.3f}  agreement "
            f"{agreement[name]['argmax_agreement']:.3f} (no fine-tuning)"
        )
    finish("pruning", doc, GOALS, verdict, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
