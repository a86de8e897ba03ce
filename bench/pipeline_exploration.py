"""Exploration of issue 19's agreement targets (bench/results/pipeline_exploration.md).

    python bench/pipeline_exploration.py [--source-steps 150] [--samples 3000] [--steps 200] \
        --variants distill,distill-cos,prune

One source as bench/pipeline.py trains it (cached in the temp directory per --source-steps and
--source-lr), then distill or prune-recover variants run through the build's training
functions on the same split the build uses; agreement and KL to the source on the held-out
split before and after training. No latency timing (bench/pipeline.py does that).
Variants: distill (the student build_student makes, constant rate, dropout on), distill-act
(its FFN neurons ranked on activations), distill-cos (warmup-cosine, dropout off: what the
recipe did before its hidden-state term), distill-cos-hidden (with it: what the recipe does;
each at the recipe's temperature unless --temperature is given),
prune (prune-recover as the build runs it: ranked on the activations, the
down-projections refitted, then recovery training with its kept-weights check).
--source-layers 4 distills a 4-layer source into a 2-layer student.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _optim_common import torch
from pipeline import NEAR_TIE

from model_server.optimize import train
from model_server.optimize.recipe import parse_recipe

SOURCE = {"num_labels": 5, "hidden_size": 384, "num_layers": 2, "num_heads": 6,
          "intermediate_size": 1536}
STUDENT = {"layers": 1, "hiddenSize": 192, "intermediateSize": 768, "heads": 3}
BASE = {"framework": "transformers", "task": "text-classification"}


def _sentences(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    import modelfactory

    return modelfactory.graded_sentiment_sentences(n, seed=seed, length=48)


def _source(steps: int, lr: float, layers: int = 2) -> tuple[Path, dict[str, Any]]:
    import modelfactory
    from transformers import AutoTokenizer

    root = Path(tempfile.gettempdir()) / (f"pipeline-exploration-source-{steps}-{lr}"
                                          + (f"-{layers}l" if layers != 2 else ""))
    if not (root / "accuracy.json").exists():
        started = time.time()
        model = modelfactory.make_text_classifier(root, save=False,
                                                  **{**SOURCE, "num_layers": layers})
        tokenizer = AutoTokenizer.from_pretrained(root)
        accuracy = modelfactory.train_text_classifier(model, tokenizer, steps=steps, lr=lr,
                                                      sentences=_sentences,
                                                      warmup_cosine=layers > 2)
        model.save_pretrained(root, safe_serialization=True)
        (root / "accuracy.json").write_text(json.dumps(
            {"accuracy": accuracy, "seconds": round(time.time() - started, 1)}))
    return root, json.loads((root / "accuracy.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-steps", type=int, default=150)
    parser.add_argument("--source-lr", type=float, default=5e-4)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", default="distill,distill-cos")
    parser.add_argument("--distill-lr", type=float, default=1e-3)
    parser.add_argument("--recover-lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=None,
                        help="default: the recipe's (prune-recover 2, distill 1)")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (batch order)")
    parser.add_argument("--source-layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, info = _source(args.source_steps, args.source_lr, args.source_layers)
    print(json.dumps({"sourceSteps": args.source_steps, "sourceLr": args.source_lr, **info}))
    teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
    encoder = train.text_encoder(AutoTokenizer.from_pretrained(path), 64)
    training, held = train.split(train.Examples(_sentences(args.samples, seed=7)[0]), 0.2, 0)
    reference = train.logits(teacher, encoder, held)
    top2 = reference.softmax(-1).topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) >= NEAR_TIE
    print(json.dumps({"nearTieShare": round(float(1 - clear.float().mean()), 4)}))

    def quiet(*_a: Any, **_k: Any) -> None:
        return None

    deadline = train.Deadline(None)
    temperature = {} if args.temperature is None else {"temperature": args.temperature}
    for variant in args.variants.split(","):
        started = time.time()
        extra: dict[str, Any] = {}
        if variant == "prune":
            recipe = parse_recipe(json.dumps({**BASE, "recipe": "prune-recover", "amount": 0.5,
                                              "steps": args.steps, "learningRate": args.recover_lr,
                                              **temperature, "seed": args.seed}))
            stats, _ = train.activation_stats(teacher, encoder, training, recipe, quiet, deadline)
            assert stats is not None
            norms = {name: s.norms() for name, s in stats.items()}
            ranked, _, _ = train.prune(teacher, 0.5, norms)
            extra = {"rankedOnly": [round(x, 4) for x in train.fidelity(ranked, reference,
                                                                         encoder, held)]}
            student, _, _ = train.prune(teacher, 0.5, norms, stats)
            before = train.fidelity(student, reference, encoder, held)
            extra.update(train.recover(student, teacher, encoder, training, recipe, quiet,
                                       deadline))
        else:
            student_spec = {**STUDENT, "layers": max(1, args.source_layers // 2)}
            recipe = parse_recipe(json.dumps({**BASE, "recipe": "distill", "student": student_spec,
                                              "steps": args.steps, "learningRate": args.distill_lr,
                                              **temperature, "seed": args.seed}))
            norms = (train.activation_norms(teacher, encoder, training, recipe, quiet, deadline)
                     if "act" in variant else None)
            student, extra, align = train.build_student(teacher, recipe.student, norms)  # type: ignore[arg-type]
            before = train.fidelity(student, reference, encoder, held)
            train.match_teacher(student, teacher, encoder, training, recipe, quiet, deadline,
                                fine_tune="-cos" in variant,
                                align=align if variant.endswith("-hidden") else None)
        after = train.fidelity(student, reference, encoder, held)
        agree = train.logits(student, encoder, held).argmax(-1) == reference.argmax(-1)
        print(json.dumps({"variant": variant, "steps": args.steps,
                          "temperature": recipe.temperature, "seed": args.seed,
                          "agreementOffNearTies": round(float(agree[clear].float().mean()), 4),
                          "agreementKlBefore": [round(x, 4) for x in before],
                          "agreementKlAfter": [round(x, 4) for x in after],
                          "seconds": round(time.time() - started, 1), "details": extra}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
