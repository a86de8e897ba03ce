"""Quantization and reduced precision: torch dynamic int8, half precision, TFLite dynamic range.

- `quantize_int8(model, device)`: what `dynamic-int8` means on each device, applied where
  the model was loaded (the CPU): the caller moves the result to the device afterwards, so a
  GPU never holds the float32 model. For the CPU, `quantize_dynamic_int8`: torch
  `quantize_dynamic` on every nn.Linear (weights int8, activations quantized per batch at run
  time; the fbgemm / onednn / qnnpack kernels are CPU only). For CUDA,
  `quantize_weight_only_int8`: torchao's int8 weight-only quantization of every nn.Linear
  (int8 weights with per-channel scales, dequantized in the matmul), which runs on any device
  and moves with the module; it is the same function on CPU, so CPU tests cover it.
- `to_half`: casts a torch module to float16 or bfloat16. On CPU both run (bfloat16 is
  fast on AVX512-BF16/AMX machines, float16 mostly saves memory); on CUDA both are native.
- `tflite_convert`: TensorFlow dynamic-range (int8 weights) or float16 quantization through
  the TFLite converter; the result runs on the TFLite interpreter shipped with tensorflow
  (`tf.lite.Interpreter`), falling back to `ai_edge_litert` when tensorflow lacks it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

from model_server.errors import ModelLoadError


def int8_method(device: str) -> str:
    """How `dynamic-int8` runs on a torch device: "dynamic" (CPU) or "weight-only" (CUDA)."""
    return "dynamic" if device == "cpu" else "weight-only"


def quantize_int8(model: Any, device: str) -> Any:
    """`model` quantized to int8 for `device`, where it is now (the CPU it was loaded on);
    returns the module to move to `device` and serve."""
    if int8_method(device) == "dynamic":
        return quantize_dynamic_int8(model)
    return quantize_weight_only_int8(model)


def quantize_weight_only_int8(model: Any) -> Any:
    """Replace every nn.Linear weight by torchao's int8 weight-only tensor, in place."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            f"dynamic-int8 on a GPU needs torchao (pip install torchao): {exc}"
        ) from exc
    _conv1d_to_linear(model)
    quantize_(model, Int8WeightOnlyConfig())
    return model


def quantize_dynamic_int8(model: Any) -> Any:
    """Return `model` with its nn.Linear layers replaced by dynamic-int8 ones (CPU)."""
    import torch

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "onednn", "qnnpack"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    else:
        raise ModelLoadError(f"no int8 quantized engine in this torch build ({engines})")
    _conv1d_to_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        )


def _conv1d_to_linear(model: Any) -> None:
    """Swap GPT-2-style Conv1D layers (weight [in, out]) for equivalent nn.Linear ones.

    quantize_dynamic only knows nn.Linear; without this GPT-2's blocks would stay fp32.
    """
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out).to(child.weight.device, child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def torch_dtype(quantization: str) -> Any:
    """torch dtype for float16 / bfloat16 (None for other settings)."""
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(quantization)


def to_half(model: Any, quantization: str) -> Any:
    """Cast `model` to float16 or bfloat16 in place and return it."""
    dtype = torch_dtype(quantization)
    if dtype is None:
        raise ModelLoadError(f"{quantization!r} is not a half-precision setting")
    return model.to(dtype)


def tflite_available() -> str | None:
    """Name of the importable TFLite interpreter module, or None."""
    try:
        import tensorflow as tf

        if hasattr(tf, "lite") and hasattr(tf.lite, "Interpreter"):
            return "tensorflow.lite"
    except ImportError:
        pass
    try:
        import ai_edge_litert.interpreter  # noqa: F401

        return "ai_edge_litert"
    except ImportError:
        return None


def tflite_interpreter(model_content: bytes) -> Any:
    """A TFLite interpreter over a flatbuffer, from tensorflow or ai_edge_litert."""
    which = tflite_available()
    if which == "tensorflow.lite":
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=model_content)
    elif which == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=model_content)
    else:
        raise ModelLoadError(
            "no TFLite interpreter: tensorflow lacks tf.lite and ai-edge-litert is not installed"
        )
    interpreter.allocate_tensors()
    return interpreter


def tflite_convert(
    *,
    quantization: str,
    saved_model_dir: Path | None = None,
    keras_model: Any = None,
    concrete_function: Any = None,
    trackable: Any = None,
) -> bytes:
    """Convert a SavedModel dir, Keras model or concrete function to a quantized TFLite model.

    A concrete function (with the loaded object as `trackable`) converts the in-memory
    weights, so a model pruned after loading is converted pruned.

    "dynamic-int8" is TFLite dynamic-range quantization (int8 weights, float activations,
    int8 kernels where TFLite has them); "float16" stores weights in float16.
    """
    import tensorflow as tf

    if quantization not in ("dynamic-int8", "float16"):
        raise ModelLoadError(
            f"TensorFlow models support quantization dynamic-int8 or float16, not {quantization!r}"
        )
    try:
        if concrete_function is not None:
            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [concrete_function], trackable
            )
        elif saved_model_dir is not None:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
        elif keras_model is not None:
            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        else:
            raise ModelLoadError("tflite_convert needs a SavedModel directory or a Keras model")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        # Keras prints "Saved artifact at ..." while exporting for the converter: keep
        # stdout clean (the server logs structured lines there)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return bytes(converter.convert())
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"TFLite conversion ({quantization}) failed: {exc}") from exc
