"""`model-server optimize`: write an optimized model artifact and a report.

    model-server optimize --framework transformers --task text-classification \
        --in ./bert --out ./bert-int8 --quantization dynamic-int8

Loads the model twice (as is, and with the requested optimization, through the same
backends the server uses), runs both on the same generated sample inputs, measures
latency, size and parameters, compares outputs, writes the optimized artifact with the
backend's `export()` and the report (`optimization-report.json` / `.txt`) into --out.
The CLI (model_server.cli) calls `register(subparsers)` and dispatches to `run(args)`.

`model-server optimize build ...` is the optimization pipeline's Job (recipes trained on
data, evaluated and published): model_server.optimize.build.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_server.backends import FRAMEWORKS, create_backend
from model_server.backends.base import Backend, LoadOptions, TensorSpec
from model_server.errors import ModelLoadError
from model_server.optimize.report import Measure, OptimizationReport, compare_outputs, write_report
from msv_contract import capabilities as caps

log = logging.getLogger("model_server.optimize")

SAMPLE_TEXTS = [
    "the movie was great and i love it",
    "terrible service, i hate this place",
    "this book is fine but not very good",
    "what a happy day for the model server",
    "the food was awful and the night was bad",
    "one two three four five six seven eight",
    "hello world, this is a test",
    "they really love the film",
]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `optimize` sub-command to the CLI's subparsers."""
    p = subparsers.add_parser(
        "optimize",
        help="write an optimized (quantized/pruned) model and a size/latency/agreement report",
        description="Optimize a model offline and report size, latency and output agreement "
        "with the original on sample inputs (--framework, --in and --out are required); "
        "`optimize build` runs a recipe on data instead.",
    )
    p.add_argument("--framework", choices=FRAMEWORKS)
    p.add_argument("--task", help="transformers task (default: from config.architectures)")
    p.add_argument("--in", dest="in_dir", type=Path, help="source model dir")
    p.add_argument("--out", dest="out_dir", type=Path, help="output dir")
    p.add_argument(
        "--quantization",
        default="none",
        choices=caps.QUANTIZATION_NAMES,
    )
    p.add_argument(
        "--pruning-method", default="none", choices=(caps.NONE, *caps.PRUNING_METHODS)
    )
    p.add_argument("--pruning-amount", type=float, default=0.0, help="fraction in (0, 1)")
    p.add_argument("--device", default="cpu", choices=("auto", *caps.DEVICES))
    p.add_argument("--samples", type=int, default=8, help="sample inputs (batch size)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(optimize_parser=p)
    from model_server.optimize import build

    modes = p.add_subparsers(dest="optimize_mode", metavar="{build}")
    build.register(modes)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 on success, 2 with a one-line reason on bad input or a bad model."""
    if getattr(args, "optimize_mode", None) == "build":
        from model_server.optimize import build

        return build.run(args)
    missing = [flag for flag, value in (("--framework", args.framework), ("--in", args.in_dir),
                                        ("--out", args.out_dir)) if value is None]
    if missing:
        args.optimize_parser.error("the following arguments are required: " + ", ".join(missing))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = optimize(
            framework=args.framework,
            in_dir=args.in_dir,
            out_dir=args.out_dir,
            options=LoadOptions(
                task=args.task,
                device=args.device,
                quantization=args.quantization,
                pruning_method=args.pruning_method,
                pruning_amount=args.pruning_amount,
                trust_remote_code=args.trust_remote_code,
            ),
            samples=args.samples,
            repeats=args.repeats,
            seed=args.seed,
            force=args.force,
        )
    except (ModelLoadError, ValueError) as exc:
        log.error("Optimization failed: %s", exc)
        return 2
    from model_server.optimize.report import render_text

    print(render_text(report), end="")
    return 0


def optimize(
    *,
    framework: str,
    in_dir: Path,
    out_dir: Path,
    options: LoadOptions,
    samples: int = 8,
    repeats: int = 10,
    seed: int = 0,
    force: bool = False,
) -> OptimizationReport:
    """Optimize `in_dir` into `out_dir` and return the report (also written there)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if options.quantization == "none" and options.pruning_method == "none":
        raise ValueError("nothing to do: pass --quantization and/or --pruning-method")
    if options.pruning_method != "none" and not 0 < options.pruning_amount < 1:
        raise ValueError("--pruning-amount must be in (0, 1) with a pruning method")
    if samples < 1 or repeats < 1:
        raise ValueError("--samples and --repeats must be >= 1")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError("--out must differ from --in")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"{out_dir} is not empty (pass --force to write into it)")

    baseline = create_backend(framework)
    baseline.load(
        in_dir,
        LoadOptions(
            task=options.task,
            device=options.device,
            trust_remote_code=options.trust_remote_code,
        ),
    )
    optimized = create_backend(framework)
    optimized.load(in_dir, options)
    batch = sample_inputs(baseline.inputs(), samples, seed)
    base_out, opt_out, base_measure, opt_measure = _measure_pair(
        baseline, optimized, batch, repeats
    )
    try:
        notes = list(optimized.export(out_dir))
    except NotImplementedError as exc:
        raise ModelLoadError(str(exc)) from exc
    report = OptimizationReport(
        framework=framework,
        task=getattr(optimized, "task", None) or options.task,
        source=str(in_dir),
        output=str(out_dir),
        quantization=options.quantization,
        pruning_method=options.pruning_method,
        pruning_amount=options.pruning_amount,
        samples=samples,
        baseline=base_measure,
        optimized=opt_measure,
        agreement=compare_outputs(base_out, opt_out),
        notes=notes,
    )
    json_path, _ = write_report(report, out_dir)
    log.info("Wrote optimized model and report to %s", json_path.parent)
    return report


def _measure_pair(
    baseline: Backend, optimized: Backend, batch: dict[str, np.ndarray], repeats: int
) -> tuple[Any, Any, Measure, Measure]:
    """Run both models on `batch`, timing them in alternation so load on a shared machine
    hits both alike; the first (warm-up) outputs are the ones compared."""
    outs = [baseline.predict(batch), optimized.predict(batch)]
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, backend in enumerate((baseline, optimized)):
            start = time.perf_counter()
            backend.predict(batch)
            times[i].append((time.perf_counter() - start) * 1000)
    measures = []
    for backend, series in zip((baseline, optimized), times, strict=True):
        info = backend.info()
        measures.append(
            Measure(
                parameters=info.parameters,
                size_bytes=info.size_bytes,
                sparsity=info.sparsity,
                latency_ms_p50=round(statistics.median(series), 4),
                latency_ms_mean=round(statistics.fmean(series), 4),
            )
        )
    return outs[0], outs[1], measures[0], measures[1]


def sample_inputs(specs: list[TensorSpec], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic sample inputs of batch `n` for `specs`.

    BYTES `image` inputs get random PNGs, other BYTES inputs English sentences, numeric
    inputs standard-normal (floats) or small integers; -1 dimensions after the batch
    become 8 unless the spec fixes them.
    """
    rng = np.random.default_rng(seed)
    batch: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.datatype == "BYTES":
            arr = np.empty(n, dtype=object)
            for i in range(n):
                if "image" in spec.name:
                    arr[i] = _png(rng)
                else:
                    arr[i] = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)].encode()
            batch[spec.name] = arr
            continue
        from model_server.backends._common import OIP_TO_NUMPY

        shape = (n, *[8 if d == -1 else d for d in spec.shape[1:]])
        dtype = OIP_TO_NUMPY[spec.datatype]
        if np.issubdtype(dtype, np.floating):
            batch[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            batch[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            batch[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return batch


def _png(rng: np.random.Generator, size: int = 64) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
