"""Static int8: Linear layers quantized with activation ranges calibrated on data (CPU).

"Static" here means per-Linear static quantization with torch.ao eager mode: every nn.Linear
of the model (the classification head excluded) is wrapped in a QuantWrapper, so its input is
quantized to uint8 with a scale fixed by calibration (not measured per batch, as dynamic-int8
does), the matmul runs on int8 weights (per-channel scales) and its output is produced in int8
with a calibrated scale, then dequantized. Everything between the Linear layers (LayerNorm,
GELU, softmax, residuals) stays float32: this is not a whole-graph int8 model.

A quantized module cannot be saved as safetensors, so the artifact is the float model plus
`CALIBRATION_FILE` (JSON: the observed min/max of every wrapped Linear's input and output).
`calibrate` measures it; `apply_calibration` rebuilds the same quantized model at load from
the float weights and those ranges (min/max observers make the scales a function of the
stored ranges alone). The transformers backend applies it whenever the file is present.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from model_server.errors import ModelLoadError

CALIBRATION_FILE = "static-int8.json"
FORMAT = 1
_HEADS = ("classifier", "lm_head", "score", "qa_outputs")
_ENGINES = ("x86", "fbgemm")


def _engine() -> str:
    import torch

    engines = torch.backends.quantized.supported_engines
    for engine in _ENGINES:
        if engine in engines:
            torch.backends.quantized.engine = engine
            return engine
    raise ModelLoadError(f"static-int8 needs the x86 or fbgemm int8 engine, not {engines}")


def _qconfig() -> Any:
    import torch
    from torch.ao import quantization as tq

    return tq.QConfig(
        activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
        weight=tq.default_per_channel_weight_observer,
    )


def linear_names(model: Any) -> list[str]:
    """Names of the nn.Linear layers static int8 quantizes (heads stay float)."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and not name.split(".")[-1].startswith(_HEADS)
    ]


def _set_module(root: Any, name: str, module: Any) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _prepare(model: Any, names: Iterable[str]) -> None:
    from torch.ao import quantization as tq

    qconfig = _qconfig()
    for name in names:
        wrapper = tq.QuantWrapper(model.get_submodule(name))
        wrapper.qconfig = qconfig
        _set_module(model, name, wrapper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare(model, inplace=True)


def _convert(model: Any) -> Any:
    from torch.ao import quantization as tq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.convert(model, inplace=True)


def calibrate(model: Any, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Run `model` (float, modified in place: observers then int8) on `batches` of keyword
    inputs and return the calibration (what `CALIBRATION_FILE` holds)."""
    import torch

    engine = _engine()
    names = linear_names(model)
    if not names:
        raise ModelLoadError("static-int8 found no Linear layers to quantize")
    model.eval()
    _prepare(model, names)
    seen = 0
    with torch.inference_mode():
        for batch in batches:
            model(**batch)
            seen += 1
    if not seen:
        raise ModelLoadError("static-int8 calibration got no data")
    layers: dict[str, Any] = {}
    for name in names:
        wrapper = model.get_submodule(name)
        inp = wrapper.quant.activation_post_process
        out = wrapper.module.activation_post_process
        layers[name] = {
            "input": [float(inp.min_val), float(inp.max_val)],
            "output": [float(out.min_val), float(out.max_val)],
        }
    _convert(model)
    return {"format": FORMAT, "engine": engine, "observer": "minmax", "layers": layers}


def apply_calibration(model: Any, calibration: Mapping[str, Any]) -> Any:
    """`model` (float) with the calibrated Linear layers replaced by static int8 ones."""
    import torch

    if calibration.get("format") != FORMAT:
        raise ModelLoadError(
            f"{CALIBRATION_FILE}: format {calibration.get('format')!r} is not {FORMAT}"
        )
    _engine()
    layers = calibration.get("layers") or {}
    names = linear_names(model)
    missing = sorted(set(layers) - set(names))
    if missing or not layers:
        raise ModelLoadError(
            f"{CALIBRATION_FILE} does not match the model: no Linear layer {missing[:3]}"
            if missing else f"{CALIBRATION_FILE} lists no layers"
        )
    _prepare(model, layers)
    for name, ranges in layers.items():
        wrapper = model.get_submodule(name)
        for observer, (lo, hi) in (
            (wrapper.quant.activation_post_process, ranges["input"]),
            (wrapper.module.activation_post_process, ranges["output"]),
        ):
            observer.min_val = torch.tensor(float(lo))
            observer.max_val = torch.tensor(float(hi))
    return _convert(model)


def read_calibration(model_dir: Path) -> dict[str, Any] | None:
    """The calibration stored with a model, or None when it has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data
