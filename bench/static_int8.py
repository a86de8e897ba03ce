"""Benchmark: static int8 vs dynamic int8, torch and TensorFlow side by side in one run.

    python bench/static_int8.py [--iterations 60] [--samples 256] [--threads 1]

Each static-int8 model is built by `model_server.optimize.build.build` exactly as the Job
builds it (data in, artifact published to a local file:// store, unpacked) and served through
the server's backend, next to the same source served with the load-time `dynamic-int8`
setting and as is (fp32):
- torch: a 4-layer, hidden-128 BERT-style text classifier trained here on synthetic sentiment
  lines; static-int8 = per-Linear calibrated int8 (torch.ao eager), dynamic-int8 = torch
  dynamic quantization;
- TensorFlow: the small CIFAR-shaped Keras CNN trained here on synthetic colour images
  (served from `.keras`); static-int8 = the full-integer TFLite model calibrated on a tar of
  PNGs, dynamic-int8 = TFLite dynamic range converted at load.
Latency p50 at batch 1 and 8 of `backend.predict` (the models of one framework timed
round-robin, so load from other processes hits them alike), top-1 agreement with the fp32
source and accuracy on held-out synthetic examples, artifact sizes.
Results: bench/results/static_int8.json.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _optim_common import finish, interleaved_latency, parse_args

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions
from model_server.optimize.build import build, scores

SHA = ("a" * 64, "b" * 64)


def _built(source: Path, data: Path, recipe: dict[str, Any], root: Path) -> tuple[Path, dict]:
    """The static-int8 artifact of `source`, built as the Job builds it, unpacked."""
    result = build(source=source, data=data, recipe_json=json.dumps(recipe),
                   source_sha256=SHA[0], data_sha256=SHA[1],
                   publish_uri=(root / "store").as_uri(), work=root / "work",
                   latency_repeats=3, out=io.StringIO())
    out = root / "static"
    with tarfile.open(result["artifactUri"].removeprefix("file://")) as tar:
        tar.extractall(out, filter="data")
    return out, result["summary"]


def _load(framework: str, model_dir: Path, quantization: str, task: str | None) -> Any:
    backend = create_backend(framework)
    backend.load(model_dir, LoadOptions(task=task, device="cpu", quantization=quantization))
    return backend


def _compare(backends: dict[str, Any], request: Any, n: int, labels: np.ndarray,
             iterations: int) -> dict[str, Any]:
    """Agreement with fp32 and accuracy on `n` examples, interleaved latency b1/b8."""
    preds = {name: scores(b.predict(request(list(range(n))))).argmax(-1)
             for name, b in backends.items()}
    out: dict[str, Any] = {name: {
        "agreement_with_fp32": round(float((p == preds["fp32"]).mean()), 4),
        "accuracy": round(float((p == labels).mean()), 4),
        "size_bytes": b.info().size_bytes,
    } for (name, p), b in zip(preds.items(), backends.values(), strict=True)}
    for size in (1, 8):
        batch = request(list(range(size)))
        timing = interleaved_latency(
            {name: (lambda b=b, x=batch: b.predict(x)) for name, b in backends.items()},
            iterations if size == 1 else max(4, iterations // 2), warmup=3)
        for name, t in timing.items():
            out[name][f"p50_ms_batch{size}"] = t["p50_ms"]
    for name in backends:
        if name != "fp32":
            for size in (1, 8):
                out[name][f"latency_vs_fp32_batch{size}"] = round(
                    out[name][f"p50_ms_batch{size}"] / out["fp32"][f"p50_ms_batch{size}"], 3)
    return out


def torch_side(root: Path, samples: int, iterations: int) -> dict[str, Any]:
    import modelfactory
    from transformers import AutoTokenizer

    source = root / "source"
    model = modelfactory.make_text_classifier(source, hidden_size=128, num_layers=4,
                                              num_heads=4, intermediate_size=512, save=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    modelfactory.train_text_classifier(model, tokenizer, steps=150)
    model.save_pretrained(source, safe_serialization=True)
    texts, labels = modelfactory.sentiment_sentences(samples, seed=5, length=8)
    data = root / "data.tsv"
    names = ("NEGATIVE", "POSITIVE")
    data.write_text("".join(f"{names[y]}\t{t}\n" for t, y in zip(texts, labels, strict=True)))
    static, summary = _built(source, data, {
        "recipe": "static-int8", "framework": "transformers", "task": "text-classification",
        "seed": 0, "maxLength": 64}, root)
    eval_texts, eval_labels = modelfactory.sentiment_sentences(samples, seed=99, length=8)
    task = "text-classification"
    backends = {"fp32": _load("transformers", source, "none", task),
                "dynamic-int8": _load("transformers", source, "dynamic-int8", task),
                "static-int8": _load("transformers", static, "none", task)}

    def request(idx: list[int]) -> dict[str, np.ndarray]:
        arr = np.empty(len(idx), dtype=object)
        arr[:] = [eval_texts[i].encode() for i in idx]
        return {"text": arr}

    out = _compare(backends, request, samples, np.asarray(eval_labels), iterations)
    out["build_report_summary"] = summary
    return out


def tensorflow_side(root: Path, samples: int, iterations: int) -> dict[str, Any]:
    import modelfactory
    from PIL import Image

    source = root / "cnn"
    modelfactory.make_trained_keras_cnn(source, "keras", epochs=3)
    pixels, labels = modelfactory.colour_images(samples, seed=5)
    data = root / "colours.tar.gz"
    with tarfile.open(data, "w:gz") as tar:
        for i, (x, y) in enumerate(zip(pixels, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{int(y)}/{i:04d}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    static, summary = _built(source, data, {
        "recipe": "static-int8", "framework": "tensorflow", "task": "image-classification",
        "seed": 0}, root)
    eval_x, eval_y = modelfactory.colour_images(samples, seed=99)
    eval_x = np.round(eval_x * 255) / 255  # what the served images hold (8-bit pixels)
    backends = {"fp32": _load("tensorflow", source, "none", None),
                "dynamic-int8 (TFLite dynamic range)": _load("tensorflow", source,
                                                              "dynamic-int8", None),
                "static-int8 (TFLite full integer)": _load("tensorflow", static, "none", None)}

    def request(idx: list[int]) -> dict[str, np.ndarray]:
        return {"image": eval_x[idx].astype(np.float32)}

    out = _compare(backends, request, samples, np.asarray(eval_y), iterations)
    out["build_report_summary"] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    args = parse_args(parser, iterations=60)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "torch").mkdir()
        (root / "tf").mkdir()
        doc = {
            "benchmark": "static int8 vs dynamic int8 (torch; TFLite full integer vs dynamic "
                         "range)",
            "torch": torch_side(root / "torch", args.samples, args.iterations),
            "tensorflow": tensorflow_side(root / "tf", args.samples, args.iterations),
        }
    for side in ("torch", "tensorflow"):
        print(f"{side}:")
        for name, row in doc[side].items():
            if name != "build_report_summary":
                print(f"  {name:38} agree {row['agreement_with_fp32']:.3f} "
                      f"acc {row['accuracy']:.3f} b1 {row['p50_ms_batch1']:.3f} ms "
                      f"b8 {row['p50_ms_batch8']:.3f} ms size {row['size_bytes']}")
    tf_rows = doc["tensorflow"]
    full = tf_rows["static-int8 (TFLite full integer)"]
    dyn = tf_rows["dynamic-int8 (TFLite dynamic range)"]
    verdict = {
        "tflite_full_integer_agreement_ge_0.98": full["agreement_with_fp32"] >= 0.98,
        "tflite_full_integer_not_slower_than_dynamic_b1":
            full["p50_ms_batch1"] <= dyn["p50_ms_batch1"],
    }
    finish("static_int8", doc, {"agreement": 0.98}, verdict, started)


if __name__ == "__main__":
    main()
