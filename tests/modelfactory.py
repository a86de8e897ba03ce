"""Builds tiny, real model artifacts on disk for tests and benchmarks; no hub, no network.

Each `make_*` function writes a directory that the matching backend loads exactly like a
user's model: transformers models via `save_pretrained` (safetensors) with a tokenizer or
image processor built locally, TorchScript via `torch.jit.save` (+ optional signature
sidecar), Keras via `model.export` (SavedModel) or `model.save` (`.keras`). Frameworks are
imported inside the functions, so importing this module costs nothing.

The models are random-initialised unless a function says otherwise; keep them tiny so a
test loads and runs one in well under a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# A small English-ish vocabulary: enough for WordPiece to tokenize test sentences.
_WORDS = (  # noqa: SIM905 - a readable word list
    "the a an is was be to of and in on for with this that it not no yes good bad great "
    "terrible awful love hate movie film book food service day night happy sad fine ok "
    "very really quite so but or i you we they he she my your our their hello world test "
    "model server serve predict input output token text image cat dog one two three four "
    "five six seven eight nine ten"
).split()
_BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


def _bert_vocab() -> list[str]:
    vocab = list(_BERT_SPECIAL) + _CHARS + ["##" + c for c in _CHARS] + _WORDS
    seen: dict[str, None] = {}
    for tok in vocab:
        seen.setdefault(tok, None)
    return list(seen)


def _directory(path: str | Path) -> Path:
    """`path`, created with its parents if need be."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_signature(path: Path, inputs: Mapping[str, int], outputs: Mapping[str, int]) -> None:
    """A TorchScript `signature.json` sidecar: FP32 tensors of shape [-1, width], by name."""
    sig = {
        kind: [
            {"name": name, "datatype": "FP32", "shape": [-1, width]}
            for name, width in specs.items()
        ]
        for kind, specs in (("inputs", inputs), ("outputs", outputs))
    }
    (path / "signature.json").write_text(json.dumps(sig, indent=2))


def _label_maps(labels: list[str]) -> dict[str, Any]:
    """The `id2label` / `label2id` config entries of a classifier with `labels`."""
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def model_dir(path: str | Path, files: Mapping[str, bytes] | None) -> Path:
    """`path` as a (broken) model directory holding `files`; None: no directory at all."""
    path = Path(path)
    if files is not None:
        path.mkdir(parents=True)
        for name, content in files.items():
            (path / name).write_bytes(content)
    return path


def make_bert_tokenizer(path: str | Path) -> Any:
    """Write a WordPiece (BERT) tokenizer with a small local vocabulary into `path`."""
    from transformers import BertTokenizer

    path = _directory(path)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(_bert_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=128)
    tok.save_pretrained(path)
    return tok


def make_text_classifier(
    path: str | Path,
    num_labels: int = 2,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
    labels: list[str] | None = None,
    seed: int = 0,
    save: bool = True,
    vocab_size: int | None = None,
) -> Any:
    """A random-init BERT sequence classifier + local WordPiece tokenizer; returns the model.

    Labels default to NEGATIVE/POSITIVE for two classes, LABEL_i otherwise. With the
    default sizes the model has ~40k parameters. `save=False` only builds it (benchmarks
    train it first and save afterwards). `vocab_size` (at least the tokenizer's) sizes the
    embeddings like a real vocabulary's (`BERT_BASE`: BERT-base's 30,522).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    path = Path(path)
    tok = make_bert_tokenizer(path)
    if labels is None:
        if num_labels == 2:
            labels = ["NEGATIVE", "POSITIVE"]
        else:
            labels = [f"LABEL_{i}" for i in range(num_labels)]
    config = BertConfig(
        vocab_size=max(len(tok), vocab_size or 0),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        **_label_maps(labels),
        pad_token_id=tok.pad_token_id,
    )
    model = BertForSequenceClassification(config).eval()
    if save:
        model.save_pretrained(path, safe_serialization=True)
    return model


BERT_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512, "vocab_size": 30522}
"""``make_text_classifier(path, **BERT_BASE)``: BERT-base's shape (110M parameters, ~440 MB of
float32 safetensors), randomly initialised: a model of realistic size for start-up figures."""


def make_text_generator(
    path: str | Path,
    *,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
) -> Any:
    """A random-init GPT-2 LM + a byte-level BPE tokenizer built locally; returns the model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    torch.manual_seed(seed)
    path = _directory(path)
    # Byte-level BPE: the 256 byte symbols cover any input; a few merges make real tokens.
    byte_symbols = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for sym in byte_symbols:
        vocab.setdefault(sym, len(vocab))
    merges: list[str] = []
    space = byte_symbols[ord(" ")]
    for word in _WORDS[:40]:
        cur = word[0]
        for ch in word[1:]:
            merges.append(f"{cur} {ch}")
            cur = cur + ch
            vocab.setdefault(cur, len(vocab))
        merges.append(f"{space} {word}")
        vocab.setdefault(space + word, len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    # dedupe merges while keeping order
    merges = list(dict.fromkeys(merges))
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = GPT2Tokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tok.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    return model


def add_eos_tokens(path: str | Path, token_ids: list[int]) -> list[int]:
    """Make the saved generator at `path` also end generation at `token_ids` (its
    `generation_config.json`); returns every EOS id. A random model seldom emits its own EOS:
    a test that needs a generation ending before its token limit picks a token the model
    emits greedily (see `greedy_tokens`)."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(path)
    eos = config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    ids += [int(t) for t in token_ids if int(t) not in ids]
    config.eos_token_id = ids
    config.save_pretrained(path)
    return ids


def greedy_tokens(path: str | Path, prompt: str, max_new_tokens: int) -> list[int]:
    """The token ids the saved generator at `path` continues `prompt` with, greedily, up to
    `max_new_tokens` or before the first of its EOS ids (which is not part of the text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    stop = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    enc = tok([prompt], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    new: list[int] = []
    for t in out[0, enc["input_ids"].shape[1]:].tolist():
        if t in stop:
            break
        new.append(int(t))
    return new


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable unicode mapping, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    mapping = dict(zip(bs, cs, strict=True))
    return [chr(mapping[b]) for b in range(256)]


def make_image_classifier(
    path: str | Path,
    num_labels: int = 3,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    seed: int = 0,
) -> Any:
    """A random-init ViT image classifier + image processor config (32x32 RGB input)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    path = _directory(path)
    labels = ["cat", "dog", "bird"][:num_labels] + [f"LABEL_{i}" for i in range(3, num_labels)]
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        num_labels=num_labels,
        **_label_maps(labels),
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return model


def make_png(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    """Encoded PNG bytes of a random RGB image (input for image-classification tests)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_torchscript(
    path: str | Path,
    *,
    in_features: int = 8,
    hidden: int = 16,
    out_features: int = 4,
    signature: bool = True,
    seed: int = 0,
) -> Any:
    """A scripted MLP (FP32 [-1, in] -> FP32 [-1, out]) saved as `model.pt`.

    With `signature=True` a `signature.json` sidecar names the tensors `input`/`logits`;
    without it the backend's default names INPUT__0 / OUTPUT__0 apply.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    path = _directory(path)
    module = nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
    ).eval()
    scripted = torch.jit.script(module)
    torch.jit.save(scripted, str(path / "model.pt"))
    if signature:
        _write_signature(path, {"input": in_features}, {"logits": out_features})
    return scripted


def make_identity_torchscript(path: str | Path, *, width: int = 16) -> Any:
    """A scripted identity module (FP32 [-1, width] in == out): for overhead benchmarks."""
    import torch
    from torch import nn

    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = _directory(path)
    scripted = torch.jit.script(Identity().eval())
    torch.jit.save(scripted, str(path / "model.pt"))
    _write_signature(path, {"INPUT__0": width}, {"OUTPUT__0": width})
    return scripted


def build_keras_cnn(num_classes: int = 10, *, filters: int = 8, seed: int = 0) -> Any:
    """A small CIFAR-10-shaped CNN (32x32x3 -> `num_classes` softmax), not saved."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(32, 32, 3), name="image")
    x = keras.layers.Conv2D(filters, 3, activation="relu", padding="same", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(filters * 2, 3, activation="relu", padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense1")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cifar_cnn")


def make_keras_cnn(
    path: str | Path, format: str = "savedmodel", *, num_classes: int = 10, seed: int = 0
) -> Any:
    """Save a small CIFAR-10-shaped CNN; returns the Keras model.

    format="savedmodel": `path` becomes a SavedModel directory (serving_default signature).
    format="keras": `path` is a directory holding `model.keras`.
    """
    model = build_keras_cnn(num_classes, seed=seed)
    path = Path(path)
    if format == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif format == "keras":
        path.mkdir(parents=True, exist_ok=True)
        model.save(str(path / "model.keras"))
    else:
        raise ValueError(f"format must be 'savedmodel' or 'keras', not {format!r}")
    return model


_POSITIVE = ["good", "great", "love", "happy", "fine", "yes"]
_NEGATIVE = ["bad", "terrible", "awful", "hate", "sad", "no"]
_NEUTRAL = [w for w in _WORDS if w not in _POSITIVE and w not in _NEGATIVE and w not in ("not",)]


def sentiment_sentences(n: int, seed: int = 0, length: int = 8) -> tuple[list[str], list[int]]:
    """Synthetic, separable sentiment data: neutral words plus one or two polar words.

    Label 1 when the polar words are positive, 0 when negative. A tiny model learns it in
    a few dozen steps, so its outputs mean something (used to measure agreement).
    """
    import random

    rnd = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    for _ in range(n):
        label = rnd.randint(0, 1)
        polar = _POSITIVE if label else _NEGATIVE
        words = [rnd.choice(_NEUTRAL) for _ in range(length)]
        for _ in range(rnd.randint(1, 2)):
            words.insert(rnd.randrange(len(words) + 1), rnd.choice(polar))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


_MODIFIERS = {"not": -1, "very": 2, "really": 2}
_GRADED_NEUTRAL = [w for w in _NEUTRAL if w not in _MODIFIERS]


def graded_sentiment_sentences(
    n: int, seed: int = 0, length: int = 40, noise: float = 0.0
) -> tuple[list[str], list[int]]:
    """Synthetic five-class graded sentiment that needs word order and counting.

    `length` neutral words carry one to four polar phrases: a polar word counts +1
    (positive) or -1 (negative), times 2 right after "very"/"really" and times -1 right
    after "not". The label buckets the sum: <= -2, -1, 0, 1, >= 2 give 0..4. With `noise`,
    that fraction of the labels is replaced by a random class. Unlike `sentiment_sentences`
    a small model does not saturate on it: many examples sit near a class boundary, so
    changes to the model (pruning) show in its predictions.
    """
    import random

    rnd = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    for _ in range(n):
        units = [[rnd.choice(_GRADED_NEUTRAL)] for _ in range(length)]
        score = 0
        for _ in range(rnd.randint(1, 4)):
            sign = rnd.choice((1, -1))
            phrase = [rnd.choice(_POSITIVE if sign > 0 else _NEGATIVE)]
            modifier = rnd.choice((None, None, "not", "very", "really"))
            if modifier is not None:
                phrase.insert(0, modifier)
                sign *= _MODIFIERS[modifier]
            score += sign
            units.insert(rnd.randrange(len(units) + 1), phrase)  # phrases stay whole
        label = min(4, max(0, score + 2))
        if rnd.random() < noise:
            label = rnd.randrange(5)
        texts.append(" ".join(word for unit in units for word in unit))
        labels.append(label)
    return texts, labels


def train_text_classifier(
    model: Any,
    tokenizer: Any,
    *,
    steps: int = 60,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    sentences: Callable[..., tuple[list[str], list[int]]] | None = None,
    warmup_cosine: bool = False,
) -> float:
    """Train `model` in place on `sentences(n, seed=...)` (default `sentiment_sentences`);
    returns held-out accuracy. `warmup_cosine`: the optimize build's learning-rate schedule
    (train.lr_factor) and gradients clipped to norm 1, which deeper models (4 layers) need
    to learn at all; else a constant rate."""
    import torch

    from model_server.optimize.train import lr_factor

    sentences = sentences or sentiment_sentences
    torch.manual_seed(seed)
    texts, labels = sentences(steps * batch_size, seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: lr_factor(i, steps) if warmup_cosine else 1.0)
    for step in range(steps):
        chunk = slice(step * batch_size, (step + 1) * batch_size)
        enc = tokenizer(texts[chunk], padding=True, truncation=True, return_tensors="pt")
        out = model(**enc, labels=torch.tensor(labels[chunk]))
        out.loss.backward()
        if warmup_cosine:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
    model.eval()
    test_texts, test_labels = sentences(256, seed=seed + 1000)
    with torch.inference_mode():
        enc = tokenizer(test_texts, padding=True, truncation=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
    return float((pred == torch.tensor(test_labels)).float().mean())


def make_trained_text_classifier(path: str | Path, *, steps: int = 60, **sizes: Any) -> float:
    """A small BERT classifier trained on synthetic sentiment data, saved; returns accuracy."""
    from transformers import AutoTokenizer

    model = make_text_classifier(path, save=False, **sizes)
    tokenizer = AutoTokenizer.from_pretrained(path)
    accuracy = train_text_classifier(model, tokenizer, steps=steps)
    model.save_pretrained(Path(path), safe_serialization=True)
    return accuracy


def colour_images(n: int, seed: int = 0) -> tuple[Any, Any]:
    """Synthetic, separable 32x32x3 images in 3 classes: class k has colour channel k raised.

    Position-free on purpose: the CNN ends in global average pooling.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.random((n, 32, 32, 3), dtype=np.float32) * 0.6
    images[np.arange(n), :, :, labels] += 0.4
    return images, labels


def colour_image_archive(images: Any, labels: Any) -> bytes:
    """A labelled image data set of the optimization pipeline: a tar.gz of PNGs
    ``<label>/<index>.png``, ``images`` (float [N, H, W, 3] in [0, 1], as `colour_images`
    makes them) as 8-bit RGB."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            png = io.BytesIO()
            Image.fromarray(np.round(np.asarray(pixels) * 255).astype(np.uint8)).save(
                png, format="PNG")
            info = tarfile.TarInfo(f"{int(label)}/{i:03d}.png")
            info.size = png.tell()
            tar.addfile(info, io.BytesIO(png.getvalue()))
    return buf.getvalue()


def torch_before_tensorflow() -> None:
    """Import torch._dynamo, when torch is installed, before anything imports TensorFlow: both
    register LLVM command-line options and whichever comes second aborts the process unless
    torch's comes first (docs/optimization.md). A test session may run both."""
    import contextlib

    with contextlib.suppress(ImportError):
        import torch._dynamo  # noqa: F401


def make_trained_keras_cnn(
    path: str | Path, format: str = "savedmodel", *, epochs: int = 3, seed: int = 0
) -> tuple[Any, float]:
    """The small CNN trained on `colour_images` (3 classes), saved; returns (model, accuracy)."""
    model = build_keras_cnn(3, seed=seed)
    x, y = colour_images(768, seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    xt, yt = colour_images(128, seed=seed + 1000)
    accuracy = float((model.predict(xt, verbose=0).argmax(-1) == yt).mean())
    path = Path(path)
    if format == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    else:
        path.mkdir(parents=True, exist_ok=True)
        model.save(str(path / "model.keras"))
    return model, accuracy
