"""TensorFlow backend: SavedModel (serving_default signature), Keras `.keras`, TFLite.

Formats, detected in the model directory in this order:
- `model.tflite` (or one `*.tflite`): run on the TFLite interpreter (e.g. the output of
  `model-server optimize` with quantization);
- `saved_model.pb`: a SavedModel; its `serving_default` signature gives the input and
  output names, datatypes and shapes;
- one `*.keras` file: a Keras 3 model, loaded with `safe_mode=True` (no lambda
  deserialisation) unless `trust_remote_code` is enabled; inputs/outputs named after the
  model's input tensors and output layers.

Optimizations: dynamic-int8 is TFLite dynamic-range quantization (int8 weights, int8
kernels where TFLite has them, float activations) and float16 stores weights in float16;
both convert the (possibly pruned) model with the TFLite converter and serve it on the
TFLite interpreter that ships with tensorflow (ai-edge-litert is used when tensorflow
lacks it). bfloat16 is refused. Unstructured pruning zeroes the smallest kernel weights;
structured pruning removes Conv2D output channels of chain-shaped `.keras` models
(model_server.optimize.prune.prune_keras_conv_channels) and is refused for SavedModels.

Load speed: TensorFlow reads a SavedModel's variables and a `.keras` file's weights into
memory through its own checkpoint readers (no memory-mapped load); a TFLite model is read
into one buffer by the interpreter.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_server.backends._common import (
    OIP_TO_NUMPY,
    LoadedSignature,
    invalid,
    oip_datatype,
)
from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.errors import ModelLoadError
from msv_contract import capabilities as caps


def detect_format(model_dir: Path) -> tuple[str, Path]:
    """("tflite" | "savedmodel" | "keras", path) for `model_dir`; ModelLoadError otherwise."""
    if model_dir.is_file():
        if model_dir.suffix == ".keras":
            return "keras", model_dir
        if model_dir.suffix == ".tflite":
            return "tflite", model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    tflite = sorted(model_dir.glob("*.tflite"))
    if len(tflite) == 1:
        return "tflite", tflite[0]
    if (model_dir / "model.tflite").is_file():
        return "tflite", model_dir / "model.tflite"
    if (model_dir / "saved_model.pb").is_file():
        return "savedmodel", model_dir
    keras_files = sorted(model_dir.glob("*.keras"))
    if len(keras_files) == 1:
        return "keras", keras_files[0]
    raise ModelLoadError(
        f"{model_dir} holds no TensorFlow model: expected saved_model.pb (SavedModel), "
        "one *.keras file or one *.tflite file"
    )


def _spec_from_tf(name: str, spec: Any) -> TensorSpec:
    import tensorflow as tf

    dtype = "BYTES" if spec.dtype == tf.string else oip_datatype(spec.dtype.as_numpy_dtype)
    shape = tuple(-1 if d is None else int(d) for d in spec.shape)
    return TensorSpec(name, dtype, shape)


class TensorFlowBackend(LoadedSignature, Backend):
    """A SavedModel, Keras model or TFLite flatbuffer."""

    framework = "tensorflow"

    def __init__(self) -> None:
        self.format = ""
        self.device = "/CPU:0"
        self.options = LoadOptions()
        self._call: Any = None
        self._keras: Any = None
        self._loaded: Any = None
        self._interpreter: Any = None
        self._runner: Any = None
        self._tflite_bytes: bytes | None = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._output_keys: list[str] = []
        self._info: BackendInfo | None = None
        self._lock = threading.Lock()
        self._channels_removed: int | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        from model_server.optimize.device import select_tf_device

        fmt, path = detect_format(Path(model_dir))
        if options.quantization not in caps.FRAMEWORKS[self.framework].quantizations:
            raise ModelLoadError(
                f"quantization {options.quantization!r} is not available for TensorFlow; "
                "use dynamic-int8 or float16 (TFLite)"
            )
        if options.pruning_method == "structured" and fmt != "keras":
            raise ModelLoadError(
                "structured pruning is not available for TensorFlow SavedModels (the layers "
                "cannot be rebuilt); use a .keras model, unstructured pruning, or the "
                "transformers backend"
            )
        if options.pruning_method not in ("none", "unstructured", "structured"):
            raise ModelLoadError(f"unknown pruning method {options.pruning_method!r}")
        if fmt == "tflite" and (options.quantization != "none" or options.pruning_method != "none"):
            raise ModelLoadError("a .tflite model is already converted: serve it without options")
        self.device = select_tf_device(options.device)
        self.options = options
        self.format = fmt
        import tensorflow as tf

        with tf.device(self.device):
            if fmt == "tflite":
                try:
                    content = path.read_bytes()
                except OSError as exc:
                    raise ModelLoadError(f"cannot read {path}: {exc}") from exc
                self._use_tflite(content)
                params, size = self._tflite_params(), len(content)
            else:
                variables = self._load_tf(fmt, path, options)
                params = sum(int(np.prod(v.shape)) for v in variables)
                size = sum(int(np.prod(v.shape)) * _itemsize(v) for v in variables)
                sparsity = self._prune(variables, options)
                if options.quantization != "none":
                    from model_server.optimize.quantize import tflite_convert

                    if self._keras is not None:
                        content = tflite_convert(
                            quantization=options.quantization, keras_model=self._keras
                        )
                    else:
                        content = tflite_convert(
                            quantization=options.quantization,
                            concrete_function=self._call,
                            trackable=self._loaded,
                        )
                    self._use_tflite(content)
                    size = len(content)
        if fmt == "tflite":
            sparsity = 0.0
        self._info = BackendInfo(
            framework=self.framework,
            device="cuda" if "GPU" in self.device and self._runner is None else "cpu",
            quantization=options.quantization,
            pruning_method=options.pruning_method,
            sparsity=round(sparsity, 6),
            parameters=params,
            size_bytes=size,
            extra={"format": fmt, "runtime": "tflite" if self._runner is not None else "tf"},
        )
        if self._channels_removed is not None:
            self._info.extra["conv_channels_removed"] = self._channels_removed

    def _load_tf(self, fmt: str, path: Path, options: LoadOptions) -> list[Any]:
        import tensorflow as tf

        if fmt == "keras":
            import keras

            try:
                model = keras.models.load_model(
                    str(path), compile=False, safe_mode=not options.trust_remote_code
                )
            except Exception as exc:
                raise ModelLoadError(f"cannot load Keras model {path.name}: {exc}") from exc
            if options.pruning_method == "structured":
                from model_server.optimize.prune import prune_keras_conv_channels

                model, self._channels_removed = prune_keras_conv_channels(
                    model, options.pruning_amount
                )
            self._keras = model
            names = [str(t.name) for t in model.inputs]
            self._inputs = [
                _spec_from_tf(n, tf.TensorSpec(t.shape, t.dtype))
                for n, t in zip(names, model.inputs, strict=True)
            ]
            out_names = list(getattr(model, "output_names", None) or [])
            if len(out_names) != len(model.outputs):
                out_names = [f"output_{i}" for i in range(len(model.outputs))]
            self._outputs = [
                _spec_from_tf(n, tf.TensorSpec(t.shape, t.dtype))
                for n, t in zip(out_names, model.outputs, strict=True)
            ]
            self._output_keys = out_names

            @tf.function(reduce_retracing=True)
            def call(*args: Any) -> Any:
                result = model(list(args) if len(args) > 1 else args[0], training=False)
                return result if isinstance(result, (list, tuple)) else [result]

            self._call = call
            return list(model.weights)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelLoadError(f"cannot load SavedModel {path}: {exc}") from exc
        signatures = getattr(loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ModelLoadError(
                f"SavedModel {path} has no serving_default signature "
                f"(has: {', '.join(signatures) or 'none'})"
            )
        fn = signatures["serving_default"]
        _, kwargs = fn.structured_input_signature
        self._inputs = [_spec_from_tf(name, spec) for name, spec in sorted(kwargs.items())]
        outputs = fn.structured_outputs
        self._output_keys = sorted(outputs)
        self._outputs = [_spec_from_tf(name, outputs[name]) for name in self._output_keys]
        self._loaded = loaded
        self._call = fn
        return list(getattr(loaded, "variables", []) or fn.variables)

    def _prune(self, variables: list[Any], options: LoadOptions) -> float:
        from model_server.optimize.prune import prune_tf_variables, tf_sparsity

        if options.pruning_method == "unstructured":
            prune_tf_variables(variables, options.pruning_amount)
        return tf_sparsity(variables)

    def _use_tflite(self, content: bytes) -> None:
        from model_server.optimize.quantize import tflite_interpreter

        try:
            interpreter = tflite_interpreter(content)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load the TFLite model: {exc}") from exc
        sigs = interpreter.get_signature_list()
        if not sigs:
            raise ModelLoadError("the TFLite model has no signature (convert with one)")
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        runner = interpreter.get_signature_runner(key)
        self._interpreter = interpreter
        self._runner = runner
        self._tflite_bytes = content
        in_details = runner.get_input_details()
        out_details = runner.get_output_details()
        if not self._inputs:  # a .tflite file: the flatbuffer is the only signature
            self._inputs = [_spec_from_details(n, d) for n, d in sorted(in_details.items())]
            self._output_keys = sorted(out_details)
            self._outputs = [_spec_from_details(n, out_details[n]) for n in self._output_keys]
        else:  # converted from a Keras model: TFLite names outputs output_0, output_1, …
            self._tflite_out = sorted(out_details)
            self._tflite_in = sorted(in_details)

    def _tflite_params(self) -> int:
        """Elements of the constant tensors: those no op produces and no input feeds."""
        interp = self._interpreter
        try:
            produced = {i for op in interp._get_ops_details() for i in op["outputs"]}
        except Exception:  # private API missing: report 0 rather than a wrong number
            return 0
        produced |= {d["index"] for d in interp.get_input_details()}
        total = 0
        for detail in interp.get_tensor_details():
            is_weight = np.dtype(detail["dtype"]).kind == "f" or detail["dtype"] == np.int8
            if detail["index"] not in produced and len(detail["shape"]) >= 1 and is_weight:
                total += int(np.prod(detail["shape"]))
        return total

    # -- inference ---------------------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._call is None and self._runner is None:
            raise ModelLoadError("model not loaded")
        arrays: list[np.ndarray] = []
        for spec in self._inputs:  # validated by the server (model_server.validation)
            arr = inputs[spec.name]
            arrays.append(np.asarray(arr, dtype=object) if spec.datatype == "BYTES" else arr)
        if self._runner is not None:
            return self._predict_tflite(arrays)
        return self._predict_tf(arrays)

    def _predict_tf(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        with tf.device(self.device):
            try:
                if self._keras is not None:
                    result = self._call(*[tf.convert_to_tensor(a) for a in arrays])
                    values = [r.numpy() for r in result]
                else:
                    kwargs = {
                        s.name: tf.convert_to_tensor(a)
                        for s, a in zip(self._inputs, arrays, strict=True)
                    }
                    out = self._call(**kwargs)
                    values = [out[k].numpy() for k in self._output_keys]
            except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
                raise invalid(f"the model rejected the input: {_short(exc)}") from exc
        return self._pack(values)

    def _predict_tflite(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        names = getattr(self, "_tflite_in", None) or [s.name for s in self._inputs]
        if len(names) != len(arrays):
            raise ModelLoadError("TFLite signature does not match the model inputs")
        # Keras inputs keep their order; TFLite names them after the Keras input names
        feed = dict(zip(names, arrays, strict=True))
        with self._lock:  # the interpreter is not thread-safe
            try:
                out = self._runner(**feed)
            except (ValueError, RuntimeError) as exc:
                raise invalid(f"the model rejected the input: {_short(exc)}") from exc
        keys = getattr(self, "_tflite_out", None) or self._output_keys
        return self._pack([np.asarray(out[k]) for k in keys])

    def _pack(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = {}
        for spec, value in zip(self._outputs, values, strict=True):
            if spec.datatype == "BYTES":
                result[spec.name] = np.asarray(value, dtype=object)
            else:
                result[spec.name] = np.asarray(value).astype(
                    OIP_TO_NUMPY[spec.datatype], copy=False
                )
        return result

    # -- export (offline optimize) -----------------------------------------------------------

    def export(self, out_dir: Path) -> list[str]:
        """Write the optimized model: `model.tflite` when quantized, else SavedModel/.keras."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self._tflite_bytes is not None:
            (out_dir / "model.tflite").write_bytes(self._tflite_bytes)
            return ["TFLite flatbuffer: serve it with MODEL_SERVER_FRAMEWORK=tensorflow"]
        if self._keras is not None:
            self._keras.save(str(out_dir / "model.keras"))
            return []
        import tensorflow as tf

        tf.saved_model.save(self._loaded, str(out_dir), signatures={"serving_default": self._call})
        return []


def _spec_from_details(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    shape_sig = detail.get("shape_signature")
    shape = shape_sig if shape_sig is not None and len(shape_sig) else detail["shape"]
    return TensorSpec(name, oip_datatype(detail["dtype"]), tuple(int(d) for d in shape))


def _itemsize(var: Any) -> int:
    dtype = getattr(var.dtype, "as_numpy_dtype", var.dtype)
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return 4


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
