"""`model-server optimize build`: the optimization pipeline's Job (msv_contract.pipeline).

    model-server optimize build --source /model --data /data --recipe-json '{...}' \
        --source-sha256 HEX --data-sha256 HEX --publish s3://bucket/builds/ --work /work

Steps: check the recipe (model_server.optimize.recipe) and compute the artifact key; if the
key's MANIFEST already exists in the store, reuse it and do nothing else; load the source
model and the data, split off the held-out examples, run the recipe
(model_server.optimize.train; a TensorFlow model's static-int8:
model_server.optimize.tflite_int8), evaluate the source and the result on the held-out split
through the server's own backend (so the result is known to load as it will be served; text
and images go through the tokenizer or image processor the backend uses; their latencies are
timed interleaved, so a shared CPU slows both alike), write report.json, publish
(model_server.optimize.publish) and put the result (pipeline.RESULT_KEYS + summary) in the
termination message. Progress lines go to stdout throughout.

Exit codes: 0 done (or reused), 2 the build cannot be done as asked (bad recipe, data,
source, student, or the budget ran out), 1 anything unexpected; on failure the termination
message is one line with the cause.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from model_server.optimize.recipe import BuildError, Recipe, parse_recipe
from msv_contract import pipeline

log = logging.getLogger("model_server.optimize.build")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
LATENCY_REPEATS = 5
EVAL_BATCH = 32


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `build` to the `optimize` command's sub-commands."""
    p = subparsers.add_parser(
        "build",
        help="run an optimization recipe (static-int8, prune-recover, distill) on data, "
             "evaluate it and publish the artifact (the optimization Job)",
        description="Build an optimized variant from a source model and data, evaluate it on "
                    "held-out data and publish it content-addressed (docs/optimization.md).",
    )
    p.add_argument("--source", required=True, type=Path, help="the source model directory")
    p.add_argument("--data", required=True, type=Path,
                   help="a data file (text lines or label<TAB>text lines; for images a tar "
                        "archive of PNG/JPEG files, label/name.png when labelled), or a "
                        "directory holding one (or, for images, the image tree)")
    p.add_argument("--recipe-json", required=True, help="the recipe (JSON object)")
    p.add_argument("--source-sha256", required=True, help="the source artifact's sha256")
    p.add_argument("--data-sha256", required=True, help="the data's sha256")
    p.add_argument("--publish", required=True,
                   help="output prefix: s3://bucket/prefix/ or file:///dir; the artifact goes "
                        "to <prefix>/<key>/")
    p.add_argument("--work", required=True, type=Path, help="a scratch directory")
    p.add_argument("--latency-repeats", type=int, default=LATENCY_REPEATS,
                   help="timed runs per model and batch size in the evaluation")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the build; writes the termination message either way."""
    from model_server.cli import write_termination_message
    from model_server.settings import termination_log_path

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        outcome = build(
            source=args.source, data=args.data, recipe_json=args.recipe_json,
            source_sha256=args.source_sha256, data_sha256=args.data_sha256,
            publish_uri=args.publish, work=args.work, latency_repeats=args.latency_repeats,
        )
    except BuildError as exc:
        return _failed(f"optimize build failed: {exc}", EXIT_BAD_INPUT)
    except Exception as exc:  # the cause must reach the operator, whatever it is
        log.exception("optimize build failed")
        return _failed(f"optimize build failed: {type(exc).__name__}: {exc}", EXIT_FAILED)
    message = json.dumps(outcome, separators=(",", ":"))
    print(message, flush=True)
    write_termination_message(termination_log_path(), message)
    return EXIT_OK


def _failed(message: str, code: int) -> int:
    from model_server.cli import write_termination_message
    from model_server.settings import termination_log_path

    line = " ".join(message.split())
    print(line, file=sys.stderr, flush=True)
    write_termination_message(termination_log_path(), line)
    return code


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def build(*, source: Path, data: Path, recipe_json: str, source_sha256: str, data_sha256: str,
          publish_uri: str, work: Path, latency_repeats: int = LATENCY_REPEATS,
          out: TextIO | None = None) -> dict[str, Any]:
    """Build, evaluate and publish; returns the termination message (RESULT_KEYS + summary).

    BuildError carries the one-line cause of a build that cannot be done.
    """
    from model_server.optimize import publish, train

    started, cpu_started = time.monotonic(), _cpu_seconds()
    recipe = parse_recipe(recipe_json)
    for name, digest in (("--source-sha256", source_sha256), ("--data-sha256", data_sha256)):
        if not digest or not all(c in "0123456789abcdef" for c in digest.lower()):
            raise BuildError(f"{name} must be a hex digest, not {digest!r}")
    key = pipeline.artifact_key(source_sha256, recipe.raw, data_sha256)
    store = publish.Store(publish_uri, key)
    existing = publish.manifest(store)
    progress = train.Progress(out)
    if existing is not None:
        previous = _existing_summary(store)
        progress("done", 1, 1, force=True)
        return publish.result(store, existing, {**previous, "reused": True})
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = train.Deadline(recipe.max_seconds, started)

    progress("loading", 0, 1, force=True)
    model_dir = work / "model"
    if recipe.framework == "tensorflow":
        dataset, training, held, details, served = _tensorflow(
            recipe, Path(source), Path(data), model_dir, work, progress, deadline)
    else:
        dataset, training, held, details, served = _transformers(
            recipe, Path(source), Path(data), model_dir, progress, deadline)
    deadline.check(recipe.name)

    progress("evaluating", 0, 3, force=True)
    source_backend = _serve(Path(source), served)
    try:
        result_backend = _serve(model_dir, served)
        try:
            source_eval = evaluate(source_backend, Path(source), held, reference=None,
                                   served=served)
            progress("evaluating", 1, 3)
            result_eval = evaluate(result_backend, model_dir, held,
                                   reference=source_eval.pop("_logits"), served=served)
            result_eval.pop("_logits")
            progress("evaluating", 2, 3)
            latency = interleaved_latency([source_backend, result_backend], served.request,
                                          len(held), latency_repeats)
            source_eval["latencyMsP50"], result_eval["latencyMsP50"] = latency
            progress("evaluating", 3, 3)
        finally:
            result_backend.close()
    finally:
        source_backend.close()
    deadline.check("evaluating")

    report: dict[str, Any] = {
        "key": key,
        "codeVersion": pipeline.CODE_VERSION,
        "recipe": recipe.raw,
        "sourceSha256": source_sha256,
        "dataSha256": data_sha256,
        "data": {"kind": recipe.data_kind, "examples": len(dataset), "train": len(training),
                 "heldOut": len(held), "labels": dataset.labels is not None},
        "source": source_eval,
        "result": result_eval,
        "details": details,
    }
    report["job"] = {"wallSeconds": round(time.monotonic() - started, 3),
                     "cpuSeconds": round(_cpu_seconds() - cpu_started, 3)}
    report["summary"] = summary(report)
    body = json.dumps(report, indent=2, sort_keys=True).encode()

    progress("publishing", 0, 1, force=True)
    entry = publish.publish(store, key, model_dir, body, work)
    progress("publishing", 1, 1)
    progress("done", 1, 1, force=True)
    return publish.result(store, entry, report["summary"])


def _existing_summary(store: Any) -> dict[str, Any]:
    data = store.read(pipeline.REPORT_FILE)
    try:
        report = json.loads(data) if data else {}
    except ValueError:
        report = {}
    value = report.get("summary") if isinstance(report, dict) else None
    return dict(value) if isinstance(value, dict) else {}


@dataclass
class Served:
    """How the evaluation talks to the server's backend: its framework and task, and the
    request (input name -> array) for some held-out examples."""

    framework: str
    task: str
    request: Callable[[list[int]], dict[str, np.ndarray]]


def _transformers(recipe: Recipe, source: Path, data: Path, model_dir: Path, progress: Any,
                  deadline: Any) -> tuple[Any, Any, Any, dict[str, Any], Served]:
    from model_server.optimize import images, train

    teacher, preprocessor = _load_source(source, recipe.task)
    config = teacher.config
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if recipe.data_kind == "images":
        dataset = images.read_image_data(data, label2id, int(config.num_labels))
        encoder = train.image_encoder(preprocessor)
        name = "image"
    else:
        dataset = train.read_text_data(data, label2id, int(config.num_labels))
        encoder = train.text_encoder(preprocessor, recipe.max_length)
        name = "text"
    training, held = train.split(dataset, recipe.held_out, recipe.seed)
    teacher_held = train.logits(teacher, encoder, held)
    progress("loading", 1, 1)
    deadline.check("loading")
    details = _run_recipe(recipe, teacher, preprocessor, encoder, training, held, teacher_held,
                          model_dir, progress, deadline)

    def request(idx: list[int]) -> dict[str, np.ndarray]:
        return {name: _blobs([held.items[i] for i in idx])}

    return dataset, training, held, details, Served("transformers", recipe.task, request)


def _tensorflow(recipe: Recipe, source: Path, data: Path, model_dir: Path, work: Path,
                progress: Any, deadline: Any) -> tuple[Any, Any, Any, dict[str, Any], Served]:
    from model_server.backends.tensorflow_backend import detect_format
    from model_server.errors import ModelLoadError
    from model_server.optimize import images, tflite_int8, train

    try:
        loaded = tflite_int8.load_source(*detect_format(source))
    except ModelLoadError as exc:
        raise BuildError(f"source: {exc}") from exc
    # a tensor model has no label names: labels are class indices
    dataset = images.read_image_data(data, {}, _tf_classes(source))
    training, held = train.split(dataset, recipe.held_out, recipe.seed)
    size = (loaded.height, loaded.width)
    held_pixels = images.tensor_inputs(held.items, *size, recipe.input_range)
    progress("loading", 1, 1)
    deadline.check("loading")
    sample = training.take(range(min(len(training), recipe.calibration_samples)))
    pixels = images.tensor_inputs(sample.items, *size, recipe.input_range)
    progress("calibrating", 0, len(pixels), force=True)

    def on_sample(step: int, total: int) -> None:
        progress("calibrating", step, total)
        deadline.check("calibrating")

    content, details = tflite_int8.convert(loaded, pixels, work, on_sample)
    tflite_int8.save(content, model_dir)
    details.update(inputRange=list(recipe.input_range), sourceFormat=loaded.format,
                   note="full-integer TFLite: int8 weights and activations calibrated on the "
                        "data, float32 input and output")

    def request(idx: list[int]) -> dict[str, np.ndarray]:
        return {loaded.input_name: held_pixels[idx]}

    return dataset, training, held, details, Served("tensorflow", recipe.task, request)


def _tf_classes(source: Path) -> int:
    """The source's number of classes (its output's last dimension), for index labels."""
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions
    from model_server.errors import ModelLoadError

    backend = create_backend("tensorflow")
    try:
        backend.load(source, LoadOptions(device="cpu"))
    except ModelLoadError as exc:
        raise BuildError(f"the server cannot load the source: {exc}") from exc
    try:
        outputs = backend.outputs()
    finally:
        backend.close()
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] < 2:
        raise BuildError("static-int8 for TensorFlow image-classification needs one output "
                         f"[batch, classes], not {[list(o.shape) for o in outputs]}")
    return int(outputs[0].shape[-1])


def _load_source(source: Path, task: str) -> tuple[Any, Any]:
    """(the transformers classifier, its tokenizer or image processor)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not (source / "config.json").is_file():
        raise BuildError(f"source {source} is not a transformers model directory "
                         "(no config.json)")
    auto: Any
    pre: Any
    if task == "image-classification":
        auto, pre = transformers.AutoModelForImageClassification, transformers.AutoImageProcessor
    else:
        auto, pre = transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer
    try:
        model = auto.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        preprocessor = pre.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        raise BuildError(f"cannot load the source {task} model: {exc}") from exc
    return model.eval(), preprocessor


def _run_recipe(recipe: Recipe, teacher: Any, preprocessor: Any, encoder: Any, training: Any,
                held: Any, teacher_held: Any, model_dir: Path, progress: Any, deadline: Any
                ) -> dict[str, Any]:
    from model_server.optimize import static_int8, train

    if recipe.name == "static-int8":
        calibration, details = train.static_int8(teacher, encoder, training, recipe,
                                                 progress, deadline)
        train.save(teacher, preprocessor, model_dir)
        (model_dir / static_int8.CALIBRATION_FILE).write_text(
            json.dumps(calibration, indent=1, sort_keys=True))
        details["note"] = ("int8 Linear layers with calibrated input/output scales; the float "
                           "weights and the calibration are stored, int8 is rebuilt at load")
        return details
    if recipe.name == "prune-recover":
        # the same pruning at load time (weights only), for the report's comparison
        load_time, removed, _ = train.prune(teacher, recipe.amount)
        prune_only, prune_only_kl = train.fidelity(load_time, teacher_held, encoder, held)
        del load_time
        # the activations' statistics: the ranking (their norms) and the refit of each
        # down-projection on the kept neurons (unless too large: then norms alone)
        stats, no_refit = train.activation_stats(teacher, encoder, training, recipe,
                                                 progress, deadline)
        norms = None
        if recipe.ranking == "activation":
            norms = ({name: s.norms() for name, s in stats.items()} if stats is not None
                     else train.activation_norms(teacher, encoder, training, recipe,
                                                 progress, deadline))
        progress("pruning", 0, 1, force=True)
        reconstruction: dict[str, Any] = {"skipped": no_refit} if no_refit else {}
        if stats is not None:
            ranked, _, _ = train.prune(teacher, recipe.amount, norms)
            agree, kl = train.fidelity(ranked, teacher_held, encoder, held)
            del ranked
            reconstruction = {"beforeAgreement": round(agree, 6),
                              "beforeKlToSource": round(kl, 8)}
        student, removed, refit = train.prune(teacher, recipe.amount, norms, stats)
        reconstruction.update(refit or {})
        before, before_kl = train.fidelity(student, teacher_held, encoder, held)
        progress("pruning", 1, 1)
        deadline.check("pruning")
        training_details = train.recover(student, teacher, encoder, training, recipe,
                                         progress, deadline)
        train.save(student, preprocessor, model_dir)
        return {"ffnNeuronsRemoved": removed,
                "intermediateSize": int(student.config.intermediate_size),
                "ranking": recipe.ranking,
                "pruneOnlyAgreement": round(prune_only, 6),
                "pruneOnlyKlToSource": round(prune_only_kl, 8),
                "reconstruction": reconstruction,
                "beforeRecoveryAgreement": round(before, 6),
                "beforeRecoveryKlToSource": round(before_kl, 8),
                "training": training_details}
    student, details, align = train.build_student(teacher, recipe.student)  # type: ignore[arg-type]
    details["training"] = train.match_teacher(student, teacher, encoder, training, recipe,
                                              progress, deadline, fine_tune=True, align=align)
    train.save(student, preprocessor, model_dir)
    return details


def _serve(model_dir: Path, served: Served) -> Any:
    """`model_dir` loaded through the server's backend, as a variant is served."""
    from model_server.backends import create_backend
    from model_server.backends.base import LoadOptions
    from model_server.errors import ModelLoadError

    backend = create_backend(served.framework)
    try:
        backend.load(model_dir, LoadOptions(task=served.task, device="cpu"))
    except ModelLoadError as exc:
        raise BuildError(f"the server cannot load {model_dir.name}: {exc}") from exc
    return backend


def evaluate(backend: Any, model_dir: Path, held: Any, *, reference: Any | None,
             served: Served) -> dict[str, Any]:
    """Measure the served `backend` (loaded from `model_dir`) on the held-out split:
    parameters, bytes, on-disk bytes, top-1 agreement with and KL divergence from
    `reference` (the source's logits), accuracy when labels exist."""
    chunks = []
    for start in range(0, len(held), EVAL_BATCH):
        idx = list(range(start, min(len(held), start + EVAL_BATCH)))
        chunks.append(scores(backend.predict(served.request(idx))))
    logits = np.concatenate(chunks)
    pred = logits.argmax(-1)
    info = backend.info()
    result: dict[str, Any] = {
        "parameters": info.parameters,
        "sizeBytes": info.size_bytes,
        "diskBytes": sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()),
        "agreement": 1.0 if reference is None else round(
            float((pred == reference.argmax(-1)).mean()), 6),
        "klToSource": 0.0 if reference is None else round(_kl(reference, logits), 8),
        "_logits": logits,
    }
    if info.extra.get("int8"):
        result["int8"] = info.extra["int8"]
    if held.labels is not None:
        result["accuracy"] = round(float((pred == np.asarray(held.labels)).mean()), 6)
    return result


def interleaved_latency(backends: list[Any], request: Callable[[list[int]], dict[str, Any]],
                        n_held: int, repeats: int) -> list[dict[str, float]]:
    """CPU latency p50 (ms) of each backend at batch 1 and 8 on held-out examples
    (`request` of their indices, of `n_held`), keyed batch1 / batch8. The backends take turns
    within each repetition, in alternating order (after one warm-up each), so load from other
    processes during the measurement hits them alike and their ratio stays meaningful on a
    shared machine."""
    out: list[dict[str, float]] = [{} for _ in backends]
    for size in (1, 8):
        batch = request([i % n_held for i in range(size)])
        times: list[list[float]] = [[] for _ in backends]
        for backend in backends:
            backend.predict(batch)  # warm-up
        for rep in range(max(1, repeats)):
            turns = list(zip(backends, times, strict=True))
            for backend, series in turns[::-1] if rep % 2 else turns:
                t0 = time.perf_counter()
                backend.predict(batch)
                series.append((time.perf_counter() - t0) * 1000)
        for latency, series in zip(out, times, strict=True):
            latency[f"batch{size}"] = round(statistics.median(series), 4)
    return out


def scores(out: dict[str, np.ndarray]) -> np.ndarray:
    """Class scores as logits from a backend's answer: ``logits`` (transformers), else the
    one [batch, classes] output, whose probabilities (rows of non-negative numbers summing
    to 1, a softmax output) become log-probabilities."""
    if "logits" in out:
        return np.asarray(out["logits"], dtype=np.float64)
    numeric = [v for v in out.values() if v.dtype != object and v.ndim == 2]
    if len(numeric) != 1:
        raise BuildError(f"the model answers {sorted(out)}; the evaluation needs one "
                         "[batch, classes] output")
    values = numeric[0].astype(np.float64)
    if values.min() >= 0 and np.allclose(values.sum(-1), 1.0, atol=1e-2):
        return np.asarray(np.log(np.clip(values, 1e-12, None)))
    return values


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return np.asarray(x - np.log(np.exp(x).sum(-1, keepdims=True)))


def _kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL divergence of `logits`' distribution from `reference`'s, per example."""
    p, q = _log_softmax(reference), _log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def _blobs(items: list[Any]) -> np.ndarray:
    """A BYTES input: texts UTF-8 encoded, encoded images as they are."""
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item.encode() if isinstance(item, str) else bytes(item)
    return arr


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline numbers (what the termination message carries)."""
    src, res = report["source"], report["result"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    out: dict[str, Any] = {
        "recipe": report["recipe"]["recipe"],
        "agreement": res["agreement"],
        "klToSource": res["klToSource"],
        "speedupBatch1": ratio(src["latencyMsP50"]["batch1"], res["latencyMsP50"]["batch1"]),
        "speedupBatch8": ratio(src["latencyMsP50"]["batch8"], res["latencyMsP50"]["batch8"]),
        "sizeRatio": ratio(res["sizeBytes"], src["sizeBytes"]),
        "parameterRatio": ratio(res["parameters"], src["parameters"]),
        "wallSeconds": report["job"]["wallSeconds"],
        "cpuSeconds": report["job"]["cpuSeconds"],
    }
    # the numbers the operator copies into status.variants[].provenance.report (by these
    # names: operator/msv_operator/optimize.py REPORT_KEYS), the baseline being the source
    out.update({
        "sizeBytes": res["sizeBytes"], "parameters": res["parameters"],
        "baselineSizeBytes": src["sizeBytes"], "baselineParameters": src["parameters"],
        "latencyMsBatch1": res["latencyMsP50"]["batch1"],
        "latencyMsBatch8": res["latencyMsP50"]["batch8"],
        "baselineLatencyMsBatch1": src["latencyMsP50"]["batch1"],
        "baselineLatencyMsBatch8": src["latencyMsP50"]["batch8"],
        "latencyRatio": ratio(res["latencyMsP50"]["batch1"], src["latencyMsP50"]["batch1"]),
        "examples": report["data"]["heldOut"],
    })
    if "accuracy" in res:
        out["accuracy"] = res["accuracy"]
        out["baselineAccuracy"] = src["accuracy"]
    if "pruneOnlyAgreement" in report["details"]:
        out["pruneOnlyAgreement"] = report["details"]["pruneOnlyAgreement"]
        out["pruneOnlyKlToSource"] = report["details"]["pruneOnlyKlToSource"]
    return out
