"""TorchScript backend: signature sidecar or the documented default, half precision,
unstructured pruning, refused optimizations and bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions, TensorSpec
from model_server.codec import InferRequest
from model_server.errors import InvalidInput, ModelLoadError
from model_server.validation import Signature

pytestmark = pytest.mark.torch


def _load(path: Path, **options) -> object:
    backend = create_backend("torchscript")
    backend.load(path, LoadOptions(**options))
    return backend


def test_signature_sidecar_names_the_tensors(torchscript_dir: Path) -> None:
    backend = _load(torchscript_dir)
    assert backend.inputs() == [TensorSpec("input", "FP32", (-1, 8))]
    assert backend.outputs() == [TensorSpec("logits", "FP32", (-1, 4))]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    out = backend.predict({"input": x})
    assert out["logits"].shape == (5, 4) and out["logits"].dtype == np.float32
    # the same module run directly gives the same numbers
    import torch

    module = torch.jit.load(str(torchscript_dir / "model.pt"))
    np.testing.assert_allclose(out["logits"], module(torch.from_numpy(x)).detach().numpy())
    assert backend.info().parameters == 8 * 16 + 16 + 16 * 4 + 4


def test_default_signature_without_sidecar(tmp_path: Path, factory) -> None:
    factory.make_torchscript(tmp_path, signature=False)
    backend = _load(tmp_path)
    assert [s.name for s in backend.inputs()] == ["INPUT__0"]
    assert [s.name for s in backend.outputs()] == ["OUTPUT__0"]
    out = backend.predict({"INPUT__0": np.ones((2, 8), np.float32)})
    assert out["OUTPUT__0"].shape == (2, 4)
    with pytest.raises(InvalidInput, match="rejected the input"):
        backend.predict({"INPUT__0": np.ones((2, 5), np.float32)})


def test_identity_module(tmp_path: Path, factory) -> None:
    factory.make_identity_torchscript(tmp_path, width=16)
    backend = _load(tmp_path)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    np.testing.assert_array_equal(backend.predict({"INPUT__0": x})["OUTPUT__0"], x)


def test_bad_inputs(torchscript_dir: Path) -> None:
    """The server checks requests against the declared signature before predict."""
    backend = _load(torchscript_dir)
    signature = Signature(backend.inputs(), backend.outputs())
    with pytest.raises(InvalidInput, match="must have shape"):
        signature.validate(InferRequest({"input": np.ones((2, 5), np.float32)}))
    with pytest.raises(InvalidInput, match="must be FP32, got INT64"):
        signature.validate(InferRequest({"input": np.ones((2, 8), np.int64)}))
    with pytest.raises(InvalidInput, match=r"missing input\(s\): input"):
        signature.validate(InferRequest({}))


@pytest.mark.parametrize("quantization", ["float16", "bfloat16"])
def test_half_precision(torchscript_dir: Path, quantization: str) -> None:
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    ref = _load(torchscript_dir).predict({"input": x})["logits"]
    half = _load(torchscript_dir, quantization=quantization)
    got = half.predict({"input": x})["logits"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=0.05)
    assert half.info().size_bytes == _load(torchscript_dir).info().size_bytes // 2


def test_unstructured_pruning_sparsity(torchscript_dir: Path) -> None:
    pruned = _load(torchscript_dir, pruning_method="unstructured", pruning_amount=0.5)
    assert pruned.info().sparsity == pytest.approx(0.5, abs=0.01)
    assert pruned.predict({"input": np.ones((1, 8), np.float32)})["logits"].shape == (1, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantization": "dynamic-int8"}, "not available for TorchScript"),
        ({"pruning_method": "structured", "pruning_amount": 0.5}, "not available for TorchScript"),
    ],
)
def test_refused_optimizations(torchscript_dir: Path, options, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _load(torchscript_dir, **options)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "does not exist"),
        ({}, "no TorchScript files"),
        ({"model.pt": b"definitely not a zip archive"}, "cannot load TorchScript archive"),
    ],
    ids=["missing", "empty", "corrupt"],
)
def test_missing_and_corrupt_models(tmp_path: Path, factory, files, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _load(factory.model_dir(tmp_path / "model", files))


def test_bad_signature_sidecar(tmp_path: Path, torchscript_dir: Path, factory) -> None:
    files = {
        "model.pt": (torchscript_dir / "model.pt").read_bytes(),
        "signature.json": b'{"inputs": [{"name": "x"}]}',
    }
    badsig = factory.model_dir(tmp_path / "badsig", files)
    with pytest.raises(ModelLoadError, match="signature"):
        _load(badsig)
