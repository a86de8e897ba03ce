"""The refit of the down-projections after structured FFN pruning (prune-recover's first
step of recovery): exact where the dropped neurons are copies of kept ones, for each FFN
layout pruning knows (BERT-style Linear pairs, GPT-2's Conv1D, Llama-style gated)."""

from __future__ import annotations

from typing import Any

import pytest

from model_server.errors import ModelLoadError
from model_server.optimize import prune

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HIDDEN, WIDTH = 12, 16


class _Bert(torch.nn.Module):
    """An FFN block laid out as BERT's: ``intermediate.dense`` then ``output.dense``."""

    def __init__(self) -> None:
        super().__init__()
        self.intermediate = torch.nn.Module()
        self.intermediate.dense = torch.nn.Linear(HIDDEN, WIDTH)
        self.output = torch.nn.Module()
        self.output.dense = torch.nn.Linear(WIDTH, HIDDEN)

    def forward(self, x: Any, attention_mask: Any = None) -> Any:
        h = torch.nn.functional.gelu(self.intermediate.dense(x))
        return self.output.dense(h)


class _Gpt2(torch.nn.Module):
    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = Conv1D(WIDTH, HIDDEN)  # weight [in, out]
        self.mlp.c_proj = Conv1D(HIDDEN, WIDTH)

    def forward(self, x: Any, attention_mask: Any = None) -> Any:
        return self.mlp.c_proj(torch.nn.functional.gelu(self.mlp.c_fc(x)))


class _Llama(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = torch.nn.Linear(HIDDEN, WIDTH, bias=False)
        self.mlp.up_proj = torch.nn.Linear(HIDDEN, WIDTH, bias=False)
        self.mlp.down_proj = torch.nn.Linear(WIDTH, HIDDEN, bias=False)

    def forward(self, x: Any, attention_mask: Any = None) -> Any:
        m = self.mlp
        return m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))


HALF = WIDTH // 2
FIRST_HALF = {"": torch.cat([torch.ones(HALF), torch.zeros(WIDTH - HALF)])}
"""A ranking that keeps neurons 0..7."""


def _twins(model: Any) -> Any:
    """`model` (weights ~ N(0, 0.5)) with neurons 8..15 copies of 0..7 in what feeds them,
    so that their activations are equal, and outgoing weights of their own: half the block
    is redundant, and what it adds is not."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5)
            if name == "mlp.c_fc.weight":  # Conv1D: [in, out]
                p[:, HALF:] = p[:, :HALF]
            elif name.startswith(("intermediate", "mlp.gate_proj", "mlp.up_proj", "mlp.c_fc")):
                p[HALF:] = p[:HALF]
    return model.eval()


def _inputs(seed: int, batches: int = 4) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(3, 10, HIDDEN, generator=g),
             "attention_mask": torch.ones(3, 10, dtype=torch.long)} for _ in range(batches)]


@pytest.mark.parametrize("layout", [_Bert, _Gpt2, _Llama], ids=["bert", "gpt2", "llama"])
def test_refit_reproduces_a_block_whose_dropped_neurons_are_copies(layout: Any) -> None:
    import copy

    torch.manual_seed(0)
    model = _twins(layout())
    calibration, held = _inputs(1), _inputs(2)[0]
    stats = prune.ffn_activation_stats(model, calibration)
    (only,) = stats.values()
    assert only.tokens == 4 * 3 * 10 and tuple(only.gram.shape) == (WIDTH, WIDTH)
    assert torch.allclose(only.norms(), prune.ffn_activation_norms(model, calibration)[""],
                          rtol=1e-5)

    with torch.no_grad():
        want = model(**held)
    plain = copy.deepcopy(model)
    prune.prune_structured_ffn(plain, 0.5, FIRST_HALF)
    refits: dict[str, prune.Reconstruction] = {}
    prune.prune_structured_ffn(model, 0.5, FIRST_HALF, stats=stats, refits=refits)
    with torch.no_grad():
        alone, refitted = plain(**held), model(**held)
    # on inputs the statistics never saw: pruning alone loses half the block's output, the
    # refit folds each copy's outgoing weights into its twin and loses nothing
    assert float((alone - want).abs().max()) > 0.1 * float(want.abs().max())
    # (to the ridge's shrinkage, prune.RIDGE)
    assert torch.allclose(refitted, want, atol=1e-2 * float(want.abs().max()))
    assert refits[""].unexplained_before > 0.1
    assert refits[""].unexplained_after < 1e-2 * refits[""].unexplained_before


def test_the_refit_leaves_padding_out_and_needs_a_blocks_statistics() -> None:
    model = _Bert().eval()
    batch = _inputs(3, batches=1)[0]
    batch["attention_mask"][:, 6:] = 0  # 4 padded positions per row
    (only,) = prune.ffn_activation_stats(model, [batch]).values()
    assert only.tokens == 3 * 6
    with pytest.raises(ModelLoadError, match="no activation statistics for the FFN block"):
        prune.prune_structured_ffn(model, 0.5, stats={"elsewhere": only})


def test_statistics_memory_is_width_squared_per_block_and_bounded() -> None:
    # BERT-base: 12 blocks of 3,072 neurons, float64 second moments
    blocks = torch.nn.ModuleList([_Bert() for _ in range(3)])
    assert prune.stats_bytes(blocks) == 3 * 8 * WIDTH * (WIDTH + 1)
    assert 12 * 8 * 3072 * 3073 < prune.STATS_MAX_BYTES < 32 * 8 * 11008 * 11009
