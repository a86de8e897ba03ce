"""TensorFlow backend: SavedModel and Keras load and predict with their declared tensors;
TFLite dynamic-range int8 and float16 agree with the float model on a trained CNN;
unstructured pruning reports sparsity; bad models and inputs get clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions, TensorSpec
from model_server.codec import InferRequest
from model_server.errors import InvalidInput, ModelLoadError
from model_server.validation import Signature

pytestmark = pytest.mark.tensorflow

# argmax agreement with the float model on 128 held-out images of the trained task
TFLITE_AGREEMENT = 0.98


def _load(path: Path, **options) -> object:
    backend = create_backend("tensorflow")
    backend.load(path, LoadOptions(**options))
    return backend


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory, factory) -> Path:
    path = tmp_path_factory.mktemp("trained-cnn") / "model"
    _, accuracy = factory.make_trained_keras_cnn(path, "savedmodel")
    assert accuracy >= 0.9, f"the synthetic task did not train (accuracy {accuracy})"
    return path


def test_savedmodel_signature_and_predict(savedmodel_dir: Path) -> None:
    backend = _load(savedmodel_dir)
    assert backend.inputs() == [TensorSpec("image", "FP32", (-1, 32, 32, 3))]
    assert backend.outputs() == [TensorSpec("output_0", "FP32", (-1, 10))]
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    out = backend.predict({"image": x})
    assert out["output_0"].shape == (3, 10) and out["output_0"].dtype == np.float32
    np.testing.assert_allclose(out["output_0"].sum(-1), 1.0, rtol=1e-5)  # softmax
    info = backend.info()
    assert info.framework == "tensorflow" and info.parameters > 1000
    assert info.size_bytes == info.parameters * 4


def test_keras_file_predict(keras_dir: Path) -> None:
    backend = _load(keras_dir)
    assert backend.inputs() == [TensorSpec("image", "FP32", (-1, 32, 32, 3))]
    assert [s.name for s in backend.outputs()] == ["probabilities"]
    out = backend.predict({"image": np.zeros((2, 32, 32, 3), np.float32)})
    assert out["probabilities"].shape == (2, 10)
    # the server checks requests against the backend's signature before predict
    signature = Signature(backend.inputs(), backend.outputs())
    with pytest.raises(InvalidInput, match="must have shape"):
        signature.validate(InferRequest({"image": np.zeros((1, 16, 32, 3), np.float32)}))
    with pytest.raises(InvalidInput, match="must be FP32"):
        signature.validate(InferRequest({"image": np.zeros((1, 32, 32, 3), np.int32)}))


@pytest.mark.parametrize("quantization", ["dynamic-int8", "float16"])
def test_tflite_quantization_agrees(trained_cnn: Path, factory, quantization: str) -> None:
    x, _ = factory.colour_images(128, seed=77)
    ref = _load(trained_cnn)
    quant = _load(trained_cnn, quantization=quantization)
    assert quant.info().extra["runtime"] == "tflite"
    assert quant.outputs() == ref.outputs()
    a, b = ref.predict({"image": x})["output_0"], quant.predict({"image": x})["output_0"]
    assert b.shape == (128, 3)
    assert float(np.mean(a.argmax(-1) == b.argmax(-1))) >= TFLITE_AGREEMENT


def test_tflite_export_is_served(tmp_path: Path, trained_cnn: Path) -> None:
    quant = _load(trained_cnn, quantization="dynamic-int8")
    quant.export(tmp_path / "out")
    assert (tmp_path / "out" / "model.tflite").is_file()
    served = _load(tmp_path / "out")
    assert served.info().extra["format"] == "tflite"
    x = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(
        served.predict({"image": x})["output_0"], quant.predict({"image": x})["output_0"]
    )


def test_unstructured_pruning_sparsity(keras_dir: Path) -> None:
    pruned = _load(keras_dir, pruning_method="unstructured", pruning_amount=0.5)
    assert pruned.info().sparsity == pytest.approx(0.5, abs=0.02)
    assert pruned.info().size_bytes == _load(keras_dir).info().size_bytes
    out = pruned.predict({"image": np.ones((1, 32, 32, 3), np.float32)})
    assert out["probabilities"].shape == (1, 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantization": "bfloat16"}, "not available for TensorFlow"),
        ({"pruning_method": "structured", "pruning_amount": 0.5}, "not available for TensorFlow"),
        ({"pruning_method": "pruney", "pruning_amount": 0.5}, "unknown pruning method"),
    ],
)
def test_refused_optimizations(savedmodel_dir: Path, options, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _load(savedmodel_dir, **options)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "does not exist"),
        ({}, "no TensorFlow model"),
        ({"saved_model.pb": b"garbage"}, "cannot load SavedModel"),
        ({"model.keras": b"not a zip"}, "cannot load Keras model"),
    ],
    ids=["missing", "empty", "corrupt-savedmodel", "corrupt-keras"],
)
def test_missing_and_corrupt_models(tmp_path: Path, factory, files, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _load(factory.model_dir(tmp_path / "model", files))


def test_structured_channel_pruning_of_a_keras_cnn(tmp_path: Path, factory) -> None:
    path = tmp_path / "trained-keras"
    _, accuracy = factory.make_trained_keras_cnn(path, "keras")
    assert accuracy >= 0.9
    base = _load(path)
    pruned = _load(path, pruning_method="structured", pruning_amount=0.5)
    # conv1 8 -> 4 and conv2 16 -> 8 output channels
    assert pruned.info().extra["conv_channels_removed"] == 12
    assert pruned.info().parameters < base.info().parameters
    assert pruned.info().size_bytes < base.info().size_bytes
    x, _ = factory.colour_images(64, seed=9)
    a = base.predict({"image": x})["probabilities"]
    b = pruned.predict({"image": x})["probabilities"]
    assert b.shape == a.shape
    assert float(np.mean(a.argmax(-1) == b.argmax(-1))) >= 0.9
    # pruned and then int8: converted from the pruned model
    both = _load(path, pruning_method="structured", pruning_amount=0.5, quantization="dynamic-int8")
    assert both.predict({"image": x})["probabilities"].shape == (64, 3)
    pruned.export(tmp_path / "out")
    assert _load(tmp_path / "out").info().parameters == pruned.info().parameters
