"""transformers backend: each task loads its tiny artifact and answers with the announced
tensors; bad input is InvalidInput (400), a bad model directory is ModelLoadError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions, ModelLoadError
from model_server.codec import InferRequest
from model_server.errors import InvalidInput
from model_server.validation import Signature

from .conftest import has_cuda

pytestmark = pytest.mark.torch


def _texts(*items: str) -> np.ndarray:
    return np.array([t.encode() for t in items], dtype=object)


def test_text_classification_outputs(text_classifier_dir: Path) -> None:
    backend = create_backend("transformers")
    backend.load(text_classifier_dir, LoadOptions(task="text-classification"))
    assert [s.name for s in backend.inputs()] == ["text"]
    assert {s.name: s.datatype for s in backend.outputs()} == {
        "label": "BYTES",
        "score": "FP32",
        "logits": "FP32",
    }
    out = backend.predict({"text": _texts("the movie was good", "awful food", "ok")})
    assert out["logits"].shape == (3, 2) and out["logits"].dtype == np.float32
    assert out["score"].shape == (3,) and out["score"].dtype == np.float32
    assert set(out["label"].tolist()) <= {b"NEGATIVE", b"POSITIVE"}
    # score is the softmax probability of the reported label
    probs = np.exp(out["logits"]) / np.exp(out["logits"]).sum(-1, keepdims=True)
    np.testing.assert_allclose(out["score"], probs.max(-1), rtol=1e-5)
    info = backend.info()
    assert info.framework == "transformers" and info.device == "cpu"
    assert info.parameters > 10_000 and info.size_bytes == info.parameters * 4


def test_task_is_inferred_from_config(text_classifier_dir: Path) -> None:
    backend = create_backend("transformers")
    backend.load(text_classifier_dir, LoadOptions())
    assert backend.info().extra["task"] == "text-classification"


def test_text_generation_predict_and_stream(text_generator_dir: Path) -> None:
    backend = create_backend("transformers")
    backend.load(text_generator_dir, LoadOptions(task="text-generation"))
    assert backend.supports_generate()
    out = backend.predict({"text": _texts("hello world", "the")})
    assert out["text_output"].shape == (2,) and out["text_output"].dtype == object
    pieces = list(backend.generate("hello", {"max_new_tokens": 32}))
    assert len(pieces) >= 2 and all(isinstance(p, str) for p in pieces)
    # greedy decoding both ways: the stream adds up to the non-streamed continuation
    whole = backend.predict({"text": _texts("hello")})["text_output"][0].decode()
    assert "".join(pieces).strip() == whole.strip()
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        list(backend.generate("hello", {"max_new_tokens": 0}))


def test_image_classification_bytes_and_pixels(image_classifier_dir: Path, factory) -> None:
    backend = create_backend("transformers")
    backend.load(image_classifier_dir, LoadOptions(task="image-classification"))
    assert [(s.name, s.datatype) for s in backend.inputs()] == [("image", "BYTES")]
    images = np.array([factory.make_png(), factory.make_png(48, 24, seed=1)], dtype=object)
    out = backend.predict({"image": images})
    assert out["logits"].shape == (2, 3) and out["label"].shape == (2,)
    pixels = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    assert backend.predict({"pixel_values": pixels})["logits"].shape == (2, 3)
    raw = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert backend.predict({"pixel_values": raw})["logits"].shape == (2, 3)
    with pytest.raises(InvalidInput, match="not a decodable"):
        backend.predict({"image": np.array([b"not an image"], dtype=object)})


def test_bad_inputs_are_invalid_input(text_classifier_dir: Path) -> None:
    backend = create_backend("transformers")
    backend.load(text_classifier_dir, LoadOptions(task="text-classification"))
    with pytest.raises(InvalidInput, match="missing input 'text'"):
        backend.predict({})
    signature = Signature(backend.inputs(), backend.outputs())  # the server's check
    with pytest.raises(InvalidInput, match="unknown input"):
        signature.validate(InferRequest({"text": _texts("a"), "extra": _texts("b")}))
    with pytest.raises(InvalidInput, match="must be a string"):
        backend.predict({"text": np.array([1, 2])})
    with pytest.raises(InvalidInput, match="UTF-8"):
        backend.predict({"text": np.array([b"\xff\xfe"], dtype=object)})


def test_missing_and_corrupt_models(tmp_path: Path, text_classifier_dir: Path) -> None:
    backend = create_backend("transformers")
    with pytest.raises(ModelLoadError, match="does not exist"):
        backend.load(tmp_path / "nope", LoadOptions(task="text-classification"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        backend.load(empty, LoadOptions(task="text-classification"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(text_classifier_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="cannot load"):
        create_backend("transformers").load(corrupt, LoadOptions(task="text-classification"))
    with pytest.raises(ModelLoadError, match="task 'summarization'"):
        create_backend("transformers").load(text_classifier_dir, LoadOptions(task="summarization"))


def test_remote_code_is_refused_unless_enabled(tmp_path: Path, text_classifier_dir: Path) -> None:
    remote = tmp_path / "remote"
    shutil.copytree(text_classifier_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    config["model_type"] = "evil-remote"
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelLoadError, match="custom code"):
        create_backend("transformers").load(remote, LoadOptions(task="text-classification"))


def test_unknown_framework_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="unknown framework 'onnx'"):
        create_backend("onnx")


def test_cuda_requested_without_a_device_is_a_load_error(text_classifier_dir: Path) -> None:
    if has_cuda():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        create_backend("transformers").load(
            text_classifier_dir, LoadOptions(task="text-classification", device="cuda")
        )


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["float16", "bfloat16"])
def test_half_precision_on_cuda(text_classifier_dir: Path, quantization: str) -> None:
    if not has_cuda():
        pytest.skip("needs a CUDA device")
    backend = create_backend("transformers")
    backend.load(
        text_classifier_dir,
        LoadOptions(task="text-classification", device="cuda", quantization=quantization),
    )
    assert backend.info().device == "cuda"
    assert backend.predict({"text": _texts("good")})["logits"].dtype == np.float32
