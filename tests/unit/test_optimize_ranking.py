"""Activation-aware FFN pruning (the prune-recover recipe's ranking), the recovery's
learning-rate schedule, and the distilled student's start and hidden-state alignment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_server.errors import ModelLoadError
from model_server.optimize.prune import ffn_activation_norms, prune_structured_ffn
from model_server.optimize.train import WARMUP_FRACTION, lr_factor
from tests import modelfactory

pytest.importorskip("transformers")


def _classifier(tmp_path: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    model = modelfactory.make_text_classifier(tmp_path / "m", save=False, intermediate_size=64)
    return model.eval(), AutoTokenizer.from_pretrained(tmp_path / "m")


def test_activation_ranking_drops_a_heavy_neuron_that_never_fires(tmp_path: Path) -> None:
    import torch

    model, tokenizer = _classifier(tmp_path)
    layer = model.bert.encoder.layer[0]
    with torch.no_grad():
        # neuron 5: the largest weights of the block, but a bias that keeps GELU at zero
        layer.intermediate.dense.weight[5].fill_(0.01)
        layer.intermediate.dense.bias[5] = -1e4
        layer.output.dense.weight[:, 5].fill_(10.0)
    inputs = [tokenizer(["good film", "the bad night was long"], padding=True,
                        return_tensors="pt")]
    norms = ffn_activation_norms(model, inputs)
    assert set(norms) == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert norms["bert.encoder.layer.0"].shape == (64,)
    assert float(norms["bert.encoder.layer.0"][5]) == 0.0
    assert not any(h for h in layer.output.dense._forward_pre_hooks.values())  # hooks removed

    by_weight = modelfactory.make_text_classifier(tmp_path / "w", save=False,
                                                  intermediate_size=64)
    by_weight.load_state_dict(model.state_dict())
    prune_structured_ffn(by_weight, 0.5)
    prune_structured_ffn(model, 0.5, norms)
    column = layer.output.dense.weight.new_full((32,), 10.0)

    def keeps_neuron_5(m: Any) -> bool:
        down = m.bert.encoder.layer[0].output.dense.weight
        return any(torch.equal(down[:, j], column) for j in range(down.shape[1]))

    assert keeps_neuron_5(by_weight)  # weights alone rank it first
    assert not keeps_neuron_5(model)  # it contributes nothing on the data


def test_activation_norms_leave_padding_out(tmp_path: Path) -> None:
    import torch

    model, tokenizer = _classifier(tmp_path)
    alone = ffn_activation_norms(model, [tokenizer(["good film"], return_tensors="pt")])
    padded = ffn_activation_norms(model, [tokenizer(["good film"], padding="max_length",
                                                    max_length=24, return_tensors="pt")])
    for name, value in alone.items():
        torch.testing.assert_close(padded[name], value, rtol=1e-4, atol=1e-5)


def test_activation_norms_need_a_known_ffn_layout_and_data(tmp_path: Path) -> None:
    import torch

    with pytest.raises(ModelLoadError, match="this model has none"):
        ffn_activation_norms(torch.nn.Sequential(torch.nn.Linear(2, 2)), [])
    model, _ = _classifier(tmp_path)
    with pytest.raises(ModelLoadError, match="no data reached the FFN blocks"):
        ffn_activation_norms(model, [])
    with pytest.raises(ModelLoadError, match="no activation norms for the FFN block"):
        prune_structured_ffn(model, 0.5, {})


def test_recovery_learning_rate_warms_up_then_decays_to_zero() -> None:
    steps = 100
    warmup = round(steps * WARMUP_FRACTION)
    factors = [lr_factor(i, steps) for i in range(steps)]
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:], strict=False))
    assert factors[-1] < 0.01
    assert lr_factor(0, 1) == pytest.approx(1.0)  # a single step is never a zero step


def test_activation_norms_cover_a_vit_image_classifier(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    from model_server.optimize.images import processor_inputs

    model = modelfactory.make_image_classifier(tmp_path / "vit").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "vit")
    inputs = processor_inputs(processor, [modelfactory.make_png(seed=i) for i in range(3)])
    norms = ffn_activation_norms(model, [inputs])  # pixel inputs: no padding mask
    width = model.config.intermediate_size
    # one entry per transformer block, named as the model names it (transformers versions
    # differ: vit.encoder.layer.N with intermediate/output, or vit.layers.N with mlp)
    blocks = [name for name, module in model.named_modules()
              if name.rsplit(".", 1)[-1].isdigit()
              and (hasattr(module, "intermediate") or hasattr(module, "mlp"))]
    assert len(blocks) == model.config.num_hidden_layers
    assert set(norms) == set(blocks)
    assert all(value.shape == (width,) and float(value.sum()) > 0 for value in norms.values())
    prune_structured_ffn(model, 0.5, norms)
    import torch

    for name in blocks:  # the FFN's up-projection is half as wide, none keeps the full width
        outs = [m.out_features for m in model.get_submodule(name).modules()
                if isinstance(m, torch.nn.Linear)]
        assert width // 2 in outs and width not in outs, (name, outs)


def test_narrow_student_keeps_the_teachers_ranked_heads_neurons_and_dimensions(
    tmp_path: Path,
) -> None:
    import torch

    from model_server.optimize.train import build_student
    from msv_contract.pipeline import Student

    model, _ = _classifier(tmp_path)  # 2 layers, hidden 32, 2 heads of 16, FFN 64
    last = model.bert.encoder.layer[1]  # a one-layer student starts from the last layer
    with torch.no_grad():
        last.attention.self.value.weight[:16].zero_()  # head 0 contributes nothing
        last.output.dense.weight[:, 7].zero_()  # FFN neuron 7 neither
        for module in model.modules():  # residual dimensions 16.. are the weak half
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:16], module.weight[16:], module.bias[:] = 1.0, 0.1, 0.0
    student, details, align = build_student(model, Student(layers=1, hidden_size=16,
                                                           intermediate_size=32, heads=1))
    assert (details["tensorsFresh"], details["initialisedFrom"]) == (0, [1])
    # its hidden states are matched against the last layer's, on the dimensions it kept
    assert align.layers == [1] and sorted(align.residual.tolist()) == list(range(16))
    assert details["tensorsNarrowed"] > 0
    layer = student.bert.encoder.layer[0]
    # head 1 kept whole, over residual dimensions 0..15
    assert torch.equal(layer.attention.self.query.weight,
                       last.attention.self.query.weight[16:, :16])
    assert torch.equal(layer.attention.output.dense.weight,
                       last.attention.output.dense.weight[:16, 16:])
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       model.bert.embeddings.word_embeddings.weight[:, :16])
    assert torch.equal(student.classifier.weight, model.classifier.weight[:, :16])
    # 32 of 64 FFN neurons, never the dead one
    down = layer.output.dense.weight
    dead = last.output.dense.weight[:16, 7]
    assert down.shape == (16, 32)
    assert not any(torch.equal(down[:, j], dead) for j in range(32))


def test_recovery_that_ends_farther_from_the_source_keeps_the_pruned_weights(
    tmp_path: Path,
) -> None:
    import json

    import torch

    from model_server.optimize import train
    from model_server.optimize.recipe import parse_recipe

    model, tokenizer = _classifier(tmp_path)
    texts, _ = modelfactory.sentiment_sentences(40, seed=3)
    data = train.Examples(texts)
    encoder = train.text_encoder(tokenizer, 32)
    pruned, _, _ = train.prune(model, 0.5)
    start = {k: v.clone() for k, v in pruned.state_dict().items()}
    # a learning rate of 1 throws the pruned model far from the source
    recipe = parse_recipe(json.dumps({"recipe": "prune-recover", "framework": "transformers",
                                      "task": "text-classification", "amount": 0.5,
                                      "steps": 3, "learningRate": 1}))
    details = train.recover(pruned, model, encoder, data, recipe, lambda *a, **k: None,
                            train.Deadline(None))
    assert details["kept"] == "pruned"
    assert details["checkKlAfter"] > details["checkKlBefore"]
    assert all(torch.equal(v, start[k]) for k, v in pruned.state_dict().items())


def _recipe(name: str, **extra: Any) -> Any:
    import json

    from model_server.optimize.recipe import parse_recipe

    base = {"recipe": name, "framework": "transformers", "task": "text-classification"}
    if name == "prune-recover":
        base["amount"] = 0.5
    if name == "distill":
        base["student"] = {"layers": 1, "hiddenSize": 16, "intermediateSize": 32, "heads": 1}
    return parse_recipe(json.dumps({**base, **extra}))


def test_training_defaults_are_per_recipe() -> None:
    recover = _recipe("prune-recover")
    assert (recover.learning_rate, recover.temperature) == (1e-4, 2.0)  # next to the source
    distill = _recipe("distill")
    assert (distill.learning_rate, distill.hidden_weight, distill.temperature) == (1e-3, 1.0, 1.0)
    assert _recipe("distill", temperature=3).temperature == 3
    assert _recipe("distill", hiddenWeight=0).hidden_weight == 0
    assert _recipe("prune-recover").hidden_weight == 0  # recovery matches logits only


def test_hidden_distance_compares_kept_dimensions_at_real_tokens_only() -> None:
    from types import SimpleNamespace

    import torch

    from model_server.optimize.train import Alignment, hidden_distance

    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(3)]  # embeddings, layer 0, layer 1
    keep = torch.tensor([6, 1, 3, 0])
    student = [t[..., keep].clone() for t in (teacher[0], teacher[2])]  # 1 layer <- layer 1
    align = Alignment(layers=[1], residual=keep)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False  # the second input's last two tokens are padding

    def distance() -> float:
        return float(hidden_distance(SimpleNamespace(hidden_states=student),
                                     SimpleNamespace(hidden_states=teacher), align, mask))

    assert distance() == pytest.approx(0.0, abs=1e-6)
    student[1][1, 3:] = torch.randn(2, 4)  # padding differs: not counted
    assert distance() == pytest.approx(0.0, abs=1e-6)
    student[1][0, 0] = -student[1][0, 0]  # one real token points the other way: distance 2
    assert distance() == pytest.approx(2.0 / 8, abs=1e-5)


def test_hidden_state_term_brings_the_students_layers_to_the_teachers(tmp_path: Path) -> None:
    import torch

    from model_server.optimize import train
    from msv_contract.pipeline import Student

    model, tokenizer = _classifier(tmp_path)
    texts, _ = modelfactory.sentiment_sentences(96, seed=5)
    training, held = train.Examples(texts[:64]), train.Examples(texts[64:])
    encoder = train.text_encoder(tokenizer, 32)

    def trained(hidden_weight: float) -> float:
        student, _, align = train.build_student(model, Student(layers=1, hidden_size=16,
                                                               intermediate_size=32, heads=1))
        recipe = _recipe("distill", steps=24, hiddenWeight=hidden_weight)
        details = train.match_teacher(student, model, encoder, training, recipe,
                                      lambda *a, **k: None, train.Deadline(None),
                                      fine_tune=True, align=align)
        assert details["hiddenWeight"] == hidden_weight
        enc = encoder(held.items)
        with torch.inference_mode():
            return float(train.hidden_distance(
                student(**enc, output_hidden_states=True),
                model(**enc, output_hidden_states=True), align,
                enc["attention_mask"].bool()))

    without, with_term = trained(0.0), trained(1.0)
    assert with_term < 0.8 * without, (with_term, without)
