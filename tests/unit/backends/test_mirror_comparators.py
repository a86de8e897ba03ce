"""The mirror's comparators on the answers of real tiny models (model_server.mirror).

Each comparator must say 1.0 for the same model, stay close to 1.0 for an optimized variant
of it, and drop for a differently-initialised model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_server.backends import create_backend
from model_server.backends.base import LoadOptions
from model_server.generation import SamplingParams
from model_server.mirror.classification import classification_agreement
from model_server.mirror.generation import token_agreement
from model_server.mirror.tensors import tensor_agreement

pytestmark = pytest.mark.torch


def _load(framework: str, path: Path, **options: object) -> object:
    backend = create_backend(framework)
    backend.load(path, LoadOptions(**options))  # type: ignore[arg-type]
    return backend


def test_classification_on_a_trained_classifier_its_int8_variant_and_a_random_one(
    trained_classifier_dir: Path, text_classifier_dir: Path, factory: object
) -> None:
    texts, _ = factory.sentiment_sentences(64, seed=77)  # type: ignore[attr-defined]
    batch = {"text": np.array([t.encode() for t in texts], dtype=object)}
    fp32 = _load("transformers", trained_classifier_dir, task="text-classification")
    mine = fp32.predict(batch)  # type: ignore[attr-defined]
    assert classification_agreement(mine, fp32.predict(batch)) == [1.0] * 64  # type: ignore[attr-defined]
    int8 = _load("transformers", trained_classifier_dir, task="text-classification",
                 quantization="dynamic-int8")  # fmt: skip
    assert np.mean(classification_agreement(mine, int8.predict(batch))) >= 0.95  # type: ignore[attr-defined]
    random = _load("transformers", text_classifier_dir, task="text-classification")
    theirs = random.predict(batch)  # type: ignore[attr-defined]
    scores = classification_agreement(mine, theirs)
    assert scores == [float(a == b) for a, b in zip(mine["label"], theirs["label"], strict=True)]
    assert np.mean(scores) < 0.9  # the random model does not know the task
    # without the label output, the argmax of the logits decides the same way
    logits = classification_agreement({"logits": mine["logits"]}, {"logits": theirs["logits"]})
    assert logits == scores


def test_generation_on_greedy_tokens_of_real_generators(tmp_path: Path, factory: object) -> None:
    factory.make_text_generator(tmp_path / "a", seed=0)  # type: ignore[attr-defined]
    factory.make_text_generator(tmp_path / "b", seed=1)  # type: ignore[attr-defined]
    a = _load("transformers", tmp_path / "a", task="text-generation")
    again = _load("transformers", tmp_path / "a", task="text-generation")
    b = _load("transformers", tmp_path / "b", task="text-generation")
    params = SamplingParams(max_new_tokens=12)

    def tokens(backend: object, prompt: str) -> list[int]:
        text = "".join(backend.generate(prompt, params))  # type: ignore[attr-defined]
        ids = a.token_ids(text)  # type: ignore[attr-defined]
        assert ids is not None
        return ids  # type: ignore[no-any-return]

    for prompt in ("hello world", "the movie was"):
        mine = tokens(a, prompt)
        assert len(mine) >= 6
        assert token_agreement(mine, tokens(again, prompt)) == 1.0
        assert token_agreement(mine, tokens(b, prompt)) < 1.0


def test_tensors_on_a_torchscript_model_its_fp16_variant_and_another_seed(
    torchscript_dir: Path, tmp_path: Path, factory: object
) -> None:
    x = {"input": np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)}
    fp32 = _load("torchscript", torchscript_dir)
    mine = fp32.predict(x)  # type: ignore[attr-defined]
    assert tensor_agreement(mine, fp32.predict(x)) == 1.0  # type: ignore[attr-defined]
    half = _load("torchscript", torchscript_dir, quantization="float16")
    assert tensor_agreement(mine, half.predict(x)) >= 0.9  # type: ignore[attr-defined]
    factory.make_torchscript(tmp_path / "other", seed=1)  # type: ignore[attr-defined]
    other = _load("torchscript", tmp_path / "other")
    assert tensor_agreement(mine, other.predict(x)) < 0.1  # type: ignore[attr-defined]
