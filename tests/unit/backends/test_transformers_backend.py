"""transformers backend: each task loads its tiny artifact and answers with the announced
tensors; bad input is InvalidInput (400), a bad model directory is ModelLoadError."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions
from model_server.codec import InferRequest
from model_server.errors import InvalidInput, ModelLoadError
from model_server.generation import GenerationRequest, SamplingParams, sampling
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
    pieces = list(backend.generate("hello", SamplingParams(max_new_tokens=32)))
    assert len(pieces) >= 2 and all(isinstance(p, str) for p in pieces)
    # greedy decoding both ways: the stream adds up to the non-streamed continuation
    whole = backend.predict({"text": _texts("hello")})["text_output"][0].decode()
    assert "".join(pieces).strip() == whole.strip()


PROMPTS = ["hello", "the movie was", "once upon a time there", "a", "good food and",
           "we went to the", "it is", "why"]


def _p(max_tokens: int, **params: Any) -> SamplingParams:
    """Settings as the dataplane hands them over: checked by the server's rules."""
    return sampling(GenerationRequest(max_tokens=max_tokens, **params))


async def _collect(backend: Any, prompt: str, params: SamplingParams) -> list[str]:
    stream = backend.stream_generation(prompt, params)
    return [piece async for piece in stream]


def test_concurrent_streams_share_batches_and_match_one_by_one(text_generator_dir: Path) -> None:
    """Eight concurrent greedy streams run as batched `generate` calls (left padding, rows
    fed apart) and each row's text is what the same prompt gives alone."""
    backend = create_backend("transformers")
    backend.load(text_generator_dir, LoadOptions(task="text-generation"))
    alone = ["".join(backend.generate(p, _p(12))) for p in PROMPTS]

    async def together() -> list[list[str]]:
        return list(await asyncio.gather(
            *(_collect(backend, p, _p(12)) for p in PROMPTS)))

    pieces = asyncio.run(together())
    batcher = backend._generation
    assert batcher is not None and batcher.largest_batch > 1, "no two streams were batched"
    assert batcher.batches < len(PROMPTS)
    assert ["".join(p) for p in pieces] == alone
    assert any(len(p) > 1 for p in pieces), "pieces are streamed, not sent whole"
    backend.close()


def test_batched_rows_keep_their_own_limits_and_settings(text_generator_dir: Path) -> None:
    backend = create_backend("transformers")
    backend.load(text_generator_dir, LoadOptions(task="text-generation"))
    short = backend.count_tokens("".join(backend.generate("hello", _p(3))))

    async def run() -> tuple[list[str], list[str], list[str], list[str]]:
        return await asyncio.gather(  # type: ignore[return-value]
            _collect(backend, "hello", _p(3)),
            _collect(backend, "hello", _p(20)),
            _collect(backend, "hello", _p(20, temperature=1.0, seed=7)),
            _collect(backend, "hello", _p(20, temperature=1.0, seed=7)),
        )

    three, twenty, sampled_a, sampled_b = asyncio.run(run())
    assert backend.count_tokens("".join(three)) == short
    assert backend.count_tokens("".join(twenty)) > short
    # seeded sampling is never batched with others, so a seed reproduces its text
    assert "".join(sampled_a) == "".join(sampled_b)
    backend.close()


def test_a_stream_closed_early_stops_its_row(text_generator_dir: Path) -> None:
    """A client gone before its batch starts costs nothing; one gone mid-batch is fed no
    more tokens and counts as done, so `generate` can stop when every row is done."""
    import torch

    from model_server.backends.generation_batch import Stream
    from model_server.backends.transformers_backend import _RowStreamer

    backend = create_backend("transformers")
    backend.load(text_generator_dir, LoadOptions(task="text-generation"))
    alone = "".join(backend.generate("the movie was", _p(20)))

    async def run() -> tuple[Any, str]:
        left = backend.stream_generation("hello", _p(20))
        await left.aclose()  # before the collector's window closed
        return left, "".join(await _collect(backend, "the movie was", _p(20)))

    left, other = asyncio.run(run())
    assert left.tokens == 0 and other == alone

    loop = asyncio.new_event_loop()
    try:
        streams = [Stream(loop, p, {}, "k", max_new_tokens=5) for p in ("a", "b")]
        rows = _RowStreamer(backend.tokenizer, streams, eos={0})
        rows.put(torch.tensor([[5, 6], [7, 8]]))  # the prompt
        rows.put(torch.tensor([9, 9]))
        loop.run_until_complete(streams[0].aclose())
        rows.put(torch.tensor([10, 0]))  # row 0 was abandoned, row 1 hit EOS
        assert rows.done == [True, True]
        assert [s.tokens for s in streams] == [1, 1]
    finally:
        loop.close()
    backend.close()


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


def test_safetensors_load_memory_mapped(text_classifier_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils as mu

    opened: list[dict[str, Any]] = []
    real = mu.safe_open

    def spy(*args: Any, **kwargs: Any) -> Any:
        opened.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "safe_open", spy)
    assert any(text_classifier_dir.glob("*.safetensors"))
    backend = create_backend("transformers")
    backend.load(text_classifier_dir, LoadOptions(task="text-classification"))
    assert opened, "the weights were not opened with safe_open"
    # mapped on the CPU: no read of the whole file into bytes first
    assert all(k.get("backend", "mmap") == "mmap" and k.get("device", "cpu") == "cpu"
               for k in opened), opened


def test_mmap_kwargs_only_where_transformers_has_the_option() -> None:
    from model_server.backends.transformers_backend import mmap_kwargs

    def new(path: str, *, disable_mmap: bool | None = None, **kw: Any) -> None: ...
    def old(path: str, **kw: Any) -> None: ...

    assert mmap_kwargs(new) == {"disable_mmap": False}
    assert mmap_kwargs(old) == {}
