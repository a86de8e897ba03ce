"""Load-time optimizations on torch models: int8 and half precision agree with fp32 on a
trained classifier; structured pruning makes the model smaller and it still answers;
unstructured pruning reports its sparsity and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions
from model_server.errors import ModelLoadError

pytestmark = pytest.mark.torch

# Thresholds: argmax agreement with fp32 on 128 held-out sentences of the trained task.
INT8_AGREEMENT = 0.98
HALF_AGREEMENT = 0.98


def _held_out(factory, n: int = 128) -> np.ndarray:
    texts, _ = factory.sentiment_sentences(n, seed=4242)
    return np.array([t.encode() for t in texts], dtype=object)


def _load(path: Path, **options) -> object:
    backend = create_backend("transformers")
    backend.load(path, LoadOptions(task="text-classification", **options))
    return backend


def _agreement(a: dict, b: dict) -> float:
    return float(np.mean(a["logits"].argmax(-1) == b["logits"].argmax(-1)))


def test_dynamic_int8_agrees_with_fp32_and_is_smaller(trained_classifier_dir: Path, factory):
    texts = _held_out(factory)
    fp32 = _load(trained_classifier_dir)
    int8 = _load(trained_classifier_dir, quantization="dynamic-int8")
    ref, got = fp32.predict({"text": texts}), int8.predict({"text": texts})
    assert _agreement(ref, got) >= INT8_AGREEMENT
    info = int8.info()
    assert info.quantization == "dynamic-int8"
    # Linear weights are int8 now: well under the fp32 bytes, same parameter count (+scales)
    assert info.size_bytes < 0.75 * fp32.info().size_bytes
    assert abs(info.parameters - fp32.info().parameters) < 0.01 * fp32.info().parameters


def test_int8_weight_only_the_gpu_path_agrees_with_fp32_on_cpu(
    trained_classifier_dir: Path, factory, monkeypatch: pytest.MonkeyPatch
):
    """dynamic-int8 on CUDA is torchao int8 weight-only; the same code runs on CPU here."""
    from model_server.optimize import quantize

    texts = _held_out(factory)
    fp32 = _load(trained_classifier_dir)
    monkeypatch.setattr(quantize, "int8_method", lambda device: "weight-only")
    int8 = _load(trained_classifier_dir, quantization="dynamic-int8")
    linear = int8.model.bert.encoder.layer[0].intermediate.dense
    assert type(linear.weight).__name__ == "Int8Tensor"  # torchao's int8 weight storage
    ref, got = fp32.predict({"text": texts}), int8.predict({"text": texts})
    assert _agreement(ref, got) >= INT8_AGREEMENT
    info = int8.info()
    assert info.extra["int8"] == "weight-only"
    assert info.size_bytes < 0.75 * fp32.info().size_bytes
    # same weights plus one scale per output row (a few % on this 32-wide model)
    assert fp32.info().parameters < info.parameters < 1.05 * fp32.info().parameters


def test_int8_weight_only_quantizes_gpt2_conv1d(text_generator_dir: Path, monkeypatch):
    from model_server.optimize import quantize

    monkeypatch.setattr(quantize, "int8_method", lambda device: "weight-only")
    int8 = create_backend("transformers")
    int8.load(text_generator_dir, LoadOptions(task="text-generation", quantization="dynamic-int8"))
    weights = [type(m.weight).__name__ for m in int8.model.transformer.h[0].modules()
               if isinstance(m, __import__("torch").nn.Linear)]
    assert weights and set(weights) == {"Int8Tensor"}
    assert int8.predict({"text": np.array([b"hello"], dtype=object)})["text_output"].shape == (1,)


def test_int8_for_a_gpu_is_quantized_on_the_cpu_then_moved(
    trained_classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The GPU never holds the float32 model: with the device selected as CUDA, the one move
    to it happens when every Linear weight is already int8 (a stub move: no GPU here)."""
    import torch

    from model_server.optimize import device

    moves: list[set[str]] = []
    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):  # type: ignore[no-untyped-def]
        target = args[0] if args else kwargs.get("device")
        if str(target) == "cuda":
            moves.append({type(m.weight).__name__ for m in module.modules()
                          if isinstance(m, torch.nn.Linear)})
            return module
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(device, "select_torch_device", lambda requested: "cuda")
    monkeypatch.setattr(torch.nn.Module, "to", to)
    int8 = _load(trained_classifier_dir, quantization="dynamic-int8", device="cuda")
    assert moves == [{"Int8Tensor"}]
    assert (int8.info().device, int8.info().extra["int8"]) == ("cuda", "weight-only")
    # float16 for a GPU: cast on the CPU, then one move, too
    moves.clear()
    _load(trained_classifier_dir, quantization="float16", device="cuda")
    assert moves == [{"Parameter"}]


@pytest.mark.gpu
def test_dynamic_int8_on_cuda_is_weight_only(trained_classifier_dir: Path, factory):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    texts = _held_out(factory)
    ref = _load(trained_classifier_dir).predict({"text": texts})
    int8 = _load(trained_classifier_dir, quantization="dynamic-int8", device="cuda")
    assert (int8.info().device, int8.info().extra["int8"]) == ("cuda", "weight-only")
    assert _agreement(ref, int8.predict({"text": texts})) >= INT8_AGREEMENT


@pytest.mark.parametrize("quantization", ["float16", "bfloat16"])
def test_half_precision_on_cpu(trained_classifier_dir: Path, factory, quantization: str):
    texts = _held_out(factory)
    ref = _load(trained_classifier_dir).predict({"text": texts})
    try:
        half = _load(trained_classifier_dir, quantization=quantization)
        got = half.predict({"text": texts})
    except RuntimeError as exc:  # a CPU without the kernels
        pytest.skip(f"{quantization} is not supported on this CPU: {exc}")
    assert got["logits"].dtype == np.float32  # cast back for the protocol
    assert _agreement(ref, got) >= HALF_AGREEMENT
    assert half.info().size_bytes == _load(trained_classifier_dir).info().size_bytes // 2


def test_structured_pruning_makes_the_model_smaller(trained_classifier_dir: Path, factory):
    texts = _held_out(factory, 16)
    base = _load(trained_classifier_dir)
    pruned = _load(trained_classifier_dir, pruning_method="structured", pruning_amount=0.5)
    b, p = base.info(), pruned.info()
    assert p.parameters < b.parameters and p.size_bytes < b.size_bytes
    # both FFN matrices of each of the 2 blocks lose 64 of 128 neurons (hidden 64)
    assert b.parameters - p.parameters == 2 * (64 * 64 * 2 + 64)
    assert p.extra["ffn_neurons_removed"] == 2 * 64
    out = pruned.predict({"text": texts})
    assert out["logits"].shape == (16, 2) and np.isfinite(out["logits"]).all()


def test_structured_pruned_model_exports_and_reloads(tmp_path: Path, trained_classifier_dir: Path):
    pruned = _load(trained_classifier_dir, pruning_method="structured", pruning_amount=0.25)
    pruned.export(tmp_path / "pruned")
    reloaded = _load(tmp_path / "pruned")
    assert reloaded.info().parameters == pruned.info().parameters
    texts = np.array([b"great film", b"awful night"], dtype=object)
    np.testing.assert_allclose(
        reloaded.predict({"text": texts})["logits"],
        pruned.predict({"text": texts})["logits"],
        atol=1e-5,
    )


def test_structured_pruning_of_gpt2_and_vit(text_generator_dir: Path, image_classifier_dir: Path):
    gen = create_backend("transformers")
    gen.load(
        text_generator_dir,
        LoadOptions(task="text-generation", pruning_method="structured", pruning_amount=0.5),
    )
    assert gen.info().extra["ffn_neurons_removed"] > 0
    assert gen.predict({"text": np.array([b"hello"], dtype=object)})["text_output"].shape == (1,)
    img = create_backend("transformers")
    img.load(
        image_classifier_dir,
        LoadOptions(task="image-classification", pruning_method="structured", pruning_amount=0.5),
    )
    assert img.info().extra["ffn_neurons_removed"] > 0


def test_unstructured_pruning_reports_sparsity_only(trained_classifier_dir: Path, factory):
    base = _load(trained_classifier_dir)
    pruned = _load(trained_classifier_dir, pruning_method="unstructured", pruning_amount=0.4)
    info = pruned.info()
    assert info.sparsity == pytest.approx(0.4, abs=0.01)
    assert base.info().sparsity == 0.0
    # zeros are stored densely: nothing gets smaller
    assert (info.parameters, info.size_bytes) == (base.info().parameters, base.info().size_bytes)
    out = pruned.predict({"text": _held_out(factory, 8)})
    assert out["logits"].shape == (8, 2)


def test_int8_on_gpt2_quantizes_its_conv1d_blocks(text_generator_dir: Path):
    base = create_backend("transformers")
    base.load(text_generator_dir, LoadOptions(task="text-generation"))
    int8 = create_backend("transformers")
    int8.load(text_generator_dir, LoadOptions(task="text-generation", quantization="dynamic-int8"))
    import torch.ao.nn.quantized.dynamic as qd

    quantized = [m for m in int8.model.modules() if isinstance(m, qd.Linear)]
    # 4 projections per block x 2 blocks + the LM head
    assert len(quantized) == 9
    assert int8.predict({"text": np.array([b"hello"], dtype=object)})["text_output"].shape == (1,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pruning_method": "structured", "pruning_amount": 1.5}, "pruning amount"),
        ({"pruning_method": "unstructured", "pruning_amount": 0.0}, "pruning amount"),
        ({"pruning_method": "magic", "pruning_amount": 0.5}, "unknown pruning method"),
        ({"quantization": "int4"}, "unknown quantization"),
    ],
)
def test_bad_optimization_options_are_load_errors(text_classifier_dir: Path, options, message):
    with pytest.raises(ModelLoadError, match=message):
        _load(text_classifier_dir, **options)
