"""Static int8 for TensorFlow: a full-integer TFLite model calibrated on image data.

The recipe ``static-int8`` with framework ``tensorflow`` (task ``image-classification``: a
model whose one input is an image batch, float32 NHWC with 3 channels) converts the source (a
``.keras`` model or a SavedModel) with the TFLite converter: int8 weights (per-channel) and
int8 activations whose ranges come from a representative data set (the training split's
images, model_server.optimize.images.tensor_inputs), and only int8 kernels allowed
(``TFLITE_BUILTINS_INT8``: a model with an op TFLite cannot run in int8 is refused, naming
the converter's cause). The model's input and output stay float32 (a quantize op at the
input, a dequantize op at the output), so the variant takes and returns exactly what the
source does, under the same names: clients cannot tell the variants apart by their
signature. Compare dynamic-range TFLite (the ``dynamic-int8`` load-time setting): int8
weights, activations quantized per inference where a kernel allows, else float.

The artifact is a model directory holding ``model.tflite``, which the server's TensorFlow
backend serves as is (model_server.backends.tensorflow_backend).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_server.optimize.recipe import BuildError

MODEL_FILE = "model.tflite"


@dataclass
class Source:
    """A loaded TensorFlow source: the converter to start from and its image input."""

    converter: Callable[[Path], Any]
    """A TFLite converter of the source (given a scratch directory)."""
    input_name: str
    height: int
    width: int
    format: str


def load_source(fmt: str, path: Path) -> Source:
    """The source model (`fmt` and `path` as the TensorFlow backend detects them); BuildError
    when it is not a one-image-input Keras model or SavedModel."""
    import tensorflow as tf

    if fmt == "tflite":
        raise BuildError("source is already a TFLite model; static-int8 needs the .keras "
                         "model or SavedModel it was converted from")
    if fmt == "keras":
        import keras

        try:
            model = keras.models.load_model(str(path), compile=False, safe_mode=True)
        except Exception as exc:
            raise BuildError(f"cannot load the Keras source {path.name}: {exc}") from exc
        if len(model.inputs) != 1:
            raise BuildError(f"static-int8 for TensorFlow needs a model with one image input, "
                             f"not {len(model.inputs)} inputs")
        shape = tuple(model.inputs[0].shape)
        name = str(model.inputs[0].name)
        outputs = list(getattr(model, "output_names", None) or [])
        if len(outputs) != len(model.outputs):
            outputs = [f"output_{i}" for i in range(len(model.outputs))]
        _check_image_shape(shape)

        def keras_converter(work: Path) -> Any:
            # exported with a signature keyed like the served Keras model (its input and
            # output names), so the artifact answers under the same names as its source
            from keras.export import ExportArchive

            def serve(x: Any) -> dict[str, Any]:
                result = model(x, training=False)
                values = result if isinstance(result, (list, tuple)) else [result]
                return dict(zip(outputs, values, strict=True))

            archive = ExportArchive()
            archive.track(model)
            archive.add_endpoint("serving_default", serve,
                                 input_signature=[tf.TensorSpec(shape, tf.float32, name=name)])
            exported = Path(work) / "keras-export"
            with contextlib.redirect_stdout(io.StringIO()):
                archive.write_out(str(exported), verbose=False)
            return tf.lite.TFLiteConverter.from_saved_model(
                str(exported), signature_keys=["serving_default"])

        return Source(keras_converter, name, int(shape[1]), int(shape[2]), fmt)
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as exc:
        raise BuildError(f"cannot load the SavedModel source's serving_default signature: "
                         f"{exc}") from exc
    _, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise BuildError(f"static-int8 for TensorFlow needs a model with one image input, "
                         f"not {len(kwargs)} inputs")
    (name, spec), = kwargs.items()
    shape = tuple(spec.shape)
    _check_image_shape(shape)
    return Source(lambda _work: tf.lite.TFLiteConverter.from_saved_model(
        str(path), signature_keys=["serving_default"]), name, int(shape[1]), int(shape[2]), fmt)


def _check_image_shape(shape: tuple[Any, ...]) -> None:
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise BuildError(f"static-int8 for TensorFlow needs an image input [batch, height, "
                         f"width, 3] of fixed height and width, not {list(shape)}")


def convert(source: Source, samples: np.ndarray, work: Path,
            on_sample: Callable[[int, int], None] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(the full-integer flatbuffer, details): calibrated on `samples` (float32 NHWC), one
    image per step; BuildError with the converter's cause when a layer has no int8 kernel."""
    import tensorflow as tf

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i:i + 1]]
            if on_sample is not None:
                on_sample(i + 1, len(samples))

    converter = source.converter(work)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            content = bytes(converter.convert())
    except Exception as exc:
        cause = " ".join(str(exc).split())[:400]
        raise BuildError(f"the TFLite converter cannot make a full-integer model of the "
                         f"source: {cause}") from exc
    return content, {"calibrationSamples": len(samples), **op_types(content),
                     "inputOutput": "float32 (quantized and dequantized inside the model)"}


def op_types(content: bytes) -> dict[str, Any]:
    """The TFLite ops of a flatbuffer and how many of their tensors are float32 beyond the
    model's quantize/dequantize edges (0 for a full-integer model)."""
    import tensorflow as tf

    try:  # without the default (XNNPACK) delegate, which would replace ops by DELEGATE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(
                model_content=content, experimental_op_resolver_type=(
                    tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        interpreter.allocate_tensors()
        ops = interpreter._get_ops_details()
    except Exception:  # private API missing: say nothing rather than something wrong
        return {}
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    float_ops = sorted({
        op["op_name"] for op in ops
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
        and any(dtypes.get(i) == np.float32 for i in [*op["inputs"], *op["outputs"]] if i >= 0)
    })
    return {"ops": sorted({op["op_name"] for op in ops}), "floatOps": float_ops}


def save(content: bytes, out_dir: Path) -> Path:
    """The artifact's model directory: ``model.tflite``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(content)
    return out_dir
