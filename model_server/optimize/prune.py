"""Pruning: unstructured magnitude pruning (sparsity only) and structured FFN pruning (smaller).

Unstructured pruning zeroes the smallest-magnitude weights of every prunable layer with
`torch.nn.utils.prune.l1_unstructured` and makes it permanent (`prune.remove`). Dense
kernels do not skip zeros, so the model is exactly as large and as fast as before: it is
reported as sparsity, never as a speedup.

Structured pruning physically removes a fraction of the feed-forward (FFN) intermediate
neurons of every transformer block: the up-projection loses output rows, the
down-projection the matching input columns. Neurons are ranked per layer by the product
of the L2 norms of their incoming and outgoing weights (data-free: what load-time pruning
does), or, given activation norms measured on data (`ffn_activation_norms`), by the L2 norm
of the neuron's activation over the data's tokens times that of its outgoing weights (the
neuron's actual contribution to the block's output; the optimization pipeline's
prune-recover uses this). Given the activations' statistics instead
(`ffn_activation_stats`: per block, the second moments of the intermediate neurons over the
data's tokens), the down-projection of each block is then refitted by least squares on the
kept neurons, so that they reproduce over that data what the whole block produced (the
dropped neurons' share moves into the kept ones' weights and the bias; a data-aware
reconstruction in the spirit of layer-wise post-training pruning). Every block keeps the same width
(rounded to a multiple of 8), and the config's intermediate size is updated, so the
pruned model saves and reloads with `save_pretrained` / `from_pretrained`.
Supported layouts: BERT/RoBERTa-style (`intermediate.dense` + `output.dense`),
ViT/CLIP-style (`mlp.fc1` + `mlp.fc2`), DistilBERT (`ffn.lin1` + `ffn.lin2`),
GPT-2 (`mlp.c_fc` + `mlp.c_proj`, Conv1D),
Llama/Mistral-style (`mlp.gate_proj` + `up_proj` + `down_proj`).

TensorFlow models get the unstructured variant on their kernels (`prune_tf_variables`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from model_server.errors import ModelLoadError
from model_server.optimize.stats import prunable_torch_modules


def check_amount(amount: float) -> None:
    """Pruning amount must be a fraction in (0, 1)."""
    if not 0.0 < amount < 1.0:
        raise ModelLoadError(f"pruning amount must be in (0, 1), not {amount}")


def prune_unstructured(model: Any, amount: float) -> Any:
    """Zero the `amount` smallest-|w| weights of each prunable layer, permanently."""
    from torch.nn.utils import prune

    check_amount(amount)
    modules = prunable_torch_modules(model)
    if not modules:
        raise ModelLoadError("unstructured pruning found no Linear/Conv layers to prune")
    for _, module in modules:
        prune.l1_unstructured(module, name="weight", amount=amount)
        prune.remove(module, "weight")
    return model


def prune_script_module_unstructured(module: Any, amount: float) -> Any:
    """Unstructured magnitude pruning of a TorchScript module: zero weights in place.

    Scripted modules cannot take pruning hooks, so every floating parameter of rank >= 2
    (the weight matrices and conv kernels) is thresholded at its own `amount` quantile.
    """
    import torch

    check_amount(amount)
    touched = 0
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() >= 2 and param.dtype.is_floating_point:
                _zero_smallest(param, amount)
                touched += 1
    if not touched:
        raise ModelLoadError("unstructured pruning found no weight matrices in the module")
    return module


def _zero_smallest(param: Any, amount: float) -> None:
    import torch

    k = round(amount * param.numel())
    if k == 0:
        return
    flat = param.detach().abs().flatten().float()
    idx = torch.topk(flat, k, largest=False).indices
    mask = torch.ones_like(flat)
    mask[idx] = 0
    param.mul_(mask.view_as(param).to(param.dtype))


def _keep_count(width: int, amount: float) -> int:
    keep = width * (1.0 - amount)
    if width >= 64:
        keep = math.ceil(keep / 8) * 8
    return max(1, min(width, round(keep)))


def _linear_rows(linear: Any, keep: Any) -> Any:
    """nn.Linear keeping output features `keep`."""
    import torch
    from torch import nn

    new = nn.Linear(linear.in_features, len(keep), bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[keep])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[keep])
    return new


def _linear_cols(linear: Any, keep: Any) -> Any:
    """nn.Linear keeping input features `keep`."""
    import torch
    from torch import nn

    new = nn.Linear(len(keep), linear.out_features, bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, keep])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _conv1d_cols(conv: Any, keep: Any) -> Any:
    """GPT-2 Conv1D (weight [in, out]) keeping output features `keep`."""
    import torch
    from transformers.pytorch_utils import Conv1D

    new = Conv1D(len(keep), conv.weight.shape[0]).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, keep])
        new.bias.copy_(conv.bias[keep])
    return new


def _conv1d_rows(conv: Any, keep: Any) -> Any:
    """GPT-2 Conv1D keeping input features `keep`."""
    import torch
    from transformers.pytorch_utils import Conv1D

    new = Conv1D(conv.weight.shape[1], len(keep)).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
        new.bias.copy_(conv.bias)
    return new


def top_sorted(score: Any, keep: int) -> Any:
    """The indices of the `keep` highest scores, in ascending order."""
    import torch

    return torch.sort(torch.topk(score, keep).indices).values


class _Ffn(NamedTuple):
    """An FFN block's up- and down-projection, each named by its owner module and attribute
    (so pruning can replace it). kind: "linear" (both Linear), "conv1d" (GPT-2's Conv1D) or
    "gated" (Llama-style: a Linear ``gate_proj`` beside ``up_proj``, same owner)."""

    kind: str
    up_owner: Any
    up_name: str
    down_owner: Any
    down_name: str

    @property
    def up(self) -> Any:
        return getattr(self.up_owner, self.up_name)

    @property
    def down(self) -> Any:
        """The down-projection: its input is the activated intermediate neurons."""
        return getattr(self.down_owner, self.down_name)


def _ffn(module: Any) -> _Ffn | None:
    """The up- and down-projection of `module` when it is an FFN block of a known layout,
    else None."""
    import torch

    linear = torch.nn.Linear
    inter: Any = getattr(module, "intermediate", None)
    out: Any = getattr(module, "output", None)
    ffn: Any = getattr(module, "ffn", None)
    mlp: Any = getattr(module, "mlp", None)
    if (
        isinstance(getattr(inter, "dense", None), linear)
        and isinstance(getattr(out, "dense", None), linear)
        and out.dense.in_features == inter.dense.out_features
    ):
        return _Ffn("linear", inter, "dense", out, "dense")
    if isinstance(getattr(ffn, "lin1", None), linear):
        return _Ffn("linear", ffn, "lin1", ffn, "lin2")
    if isinstance(getattr(mlp, "fc1", None), linear) and isinstance(
        getattr(mlp, "fc2", None), linear
    ):
        return _Ffn("linear", mlp, "fc1", mlp, "fc2")
    if mlp is not None and hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):
        return _Ffn("conv1d", mlp, "c_fc", mlp, "c_proj")
    if mlp is not None and all(
        isinstance(getattr(mlp, n, None), linear) for n in ("gate_proj", "up_proj", "down_proj")
    ):
        return _Ffn("gated", mlp, "up_proj", mlp, "down_proj")
    return None


def _over_ffn_inputs(model: Any, inputs: Iterable[dict[str, Any]],
                     take: Callable[[str, Any], None]) -> None:
    """Run `model` over `inputs` (model keyword arguments, e.g. tokenizer output) and hand
    each FFN block's intermediate activations (the down-projection's input, as rows of
    [tokens, width], positions an ``attention_mask`` marks as padding left out) to
    ``take(block name, rows)``."""
    import torch

    mask: list[Any] = [None]
    hooks = []
    seen: list[bool] = [False]

    def hook_for(name: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            m = mask[0]
            rows = x.reshape(-1, x.shape[-1])
            if m is not None and tuple(m.shape) == tuple(x.shape[:2]):
                rows = rows[m.reshape(-1).bool()]
            seen[0] = True
            take(name, rows)

        return hook

    for name, module in model.named_modules():
        found = _ffn(module)
        if found is not None:
            hooks.append(found.down.register_forward_pre_hook(hook_for(name)))
    if not hooks:
        raise ModelLoadError(
            "structured pruning supports transformer FFN blocks (BERT/RoBERTa, ViT, DistilBERT, "
            "GPT-2, Llama-style); this model has none")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in inputs:
                mask[0] = batch.get("attention_mask")
                model(**batch)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    if not seen[0]:
        raise ModelLoadError("no data reached the FFN blocks: activation statistics need inputs")


def ffn_activation_norms(model: Any, inputs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per FFN block (keyed by its module name): the L2 norm of each intermediate neuron's
    activation over every token of `inputs` (model keyword arguments, e.g. tokenizer
    output; positions an ``attention_mask`` marks as padding are left out)."""
    sums: dict[str, Any] = {}

    def take(name: str, rows: Any) -> None:
        sq = rows.pow(2).sum(0)
        sums[name] = sq if name not in sums else sums[name] + sq

    _over_ffn_inputs(model, inputs, take)
    return {name: total.sqrt() for name, total in sums.items()}


class FfnStats(NamedTuple):
    """One FFN block's intermediate activations over some data, in float64: ``gram`` the sum
    of h·hᵀ over the tokens [width, width], ``total`` the sum of h [width], ``tokens`` how
    many. What the ranking (``norms``) and the reconstruction of the down-projection need."""

    gram: Any
    total: Any
    tokens: int

    def norms(self) -> Any:
        """Each neuron's activation L2 norm over the tokens (as ffn_activation_norms)."""
        return self.gram.diagonal().clamp(min=0).sqrt().float()


STATS_MAX_BYTES = 2 << 30
"""Bound on the float64 activation statistics of all FFN blocks together (width² · 8 bytes
each: a BERT-base's 12 blocks of 3,072 take 0.9 GB); beyond it the pruning is not
reconstructed (``stats_bytes``)."""


def stats_bytes(model: Any) -> int:
    """Memory ``ffn_activation_stats`` takes for `model`."""
    total = 0
    for module in model.modules():
        found = _ffn(module)
        if found is not None:
            width = _width(found)
            total += 8 * width * (width + 1)
    return total


def ffn_activation_stats(model: Any, inputs: Iterable[dict[str, Any]]) -> dict[str, FfnStats]:
    """Per FFN block (keyed by its module name): its FfnStats over every token of `inputs`
    (as ffn_activation_norms). Takes ``stats_bytes(model)`` of memory."""
    found: dict[str, list[Any]] = {}

    def take(name: str, rows: Any) -> None:
        x = rows.double()
        acc = found.setdefault(name, [0, 0, 0])
        acc[0] = acc[0] + x.T @ x
        acc[1] = acc[1] + x.sum(0)
        acc[2] += int(x.shape[0])

    _over_ffn_inputs(model, inputs, take)
    return {name: FfnStats(g, t, n) for name, (g, t, n) in found.items()}


RIDGE = 1e-3
"""Ridge of the reconstruction's least squares, relative to the kept neurons' mean
activation variance: keeps the solve stable where kept neurons are collinear."""


class Reconstruction(NamedTuple):
    """What reconstructing one block's down-projection did: the share of the block's output
    variance (over the data) that pruning alone leaves unexplained, and after the refit."""

    unexplained_before: float
    unexplained_after: float


def _refit(weight: Any, bias: Any, stats: FfnStats, keep: Any) -> tuple[Any, Any, Reconstruction]:
    """The down-projection (`weight` [out, width], `bias` [out] or None) refitted on the
    kept neurons `keep` by least squares over `stats`: (new weight [out, kept], new bias or
    None, what it did). With a bias the fit is affine (the dropped neurons' mean output
    moves into the bias), without it linear."""
    import torch

    w = weight.detach().double()
    n = max(1, stats.tokens)
    second = stats.gram / n
    mean = stats.total / n
    k = keep
    # with a bias, the covariance (the bias absorbs the means); without, the second moment
    moment = second - torch.outer(mean, mean) if bias is not None else second
    m_kk = moment[k][:, k]
    ridge = RIDGE * float(m_kk.diagonal().mean().clamp(min=1e-12))
    rhs = moment[k] @ w.T  # [kept, out]
    eye = torch.eye(len(k), dtype=torch.float64)
    try:
        a = torch.linalg.solve(m_kk + ridge * eye, rhs)
    except RuntimeError:  # singular even with the ridge: the least-norm solution
        a = torch.linalg.lstsq(m_kk + ridge * eye, rhs).solution
    new_w = a.T  # [out, kept]
    new_b = None
    if bias is not None:
        new_b = bias.detach().double() + w @ mean - new_w @ mean[k]

    def unexplained(ws: Any, bs: Any) -> float:
        # E||y - ŷ||² / E||y - E y||² with y = W h + b, ŷ = ws h_keep + bs
        full = torch.zeros_like(w)
        full[:, k] = ws
        d = w - full
        err = float((d @ second @ d.T).trace())
        if bias is not None:
            shift = bias.detach().double() - bs
            err += float(2 * (d @ mean) @ shift + (shift * shift).sum())
        total = float((w @ (second - torch.outer(mean, mean)) @ w.T).trace())
        return err / total if total > 0 else 0.0

    before = unexplained(w[:, k], bias.detach().double() if bias is not None else None)
    after = unexplained(new_w, new_b)
    if after > before:  # cannot happen in exact arithmetic; the ridge or rounding did it
        return weight[:, k].detach().clone(), None if bias is None else bias.detach().clone(), \
            Reconstruction(before, before)
    return (new_w.to(weight.dtype), None if new_b is None else new_b.to(weight.dtype),
            Reconstruction(before, after))


def _width(found: _Ffn) -> int:
    """The block's intermediate width."""
    if found.kind == "conv1d":  # Conv1D: weight [in, out]
        return int(found.up.weight.shape[1])
    return int(found.up.out_features)


def _prune_ffn_block(found: _Ffn, amount: float, activation: Any = None,
                     stats: FfnStats | None = None) -> tuple[int, int, Reconstruction | None]:
    """Prune the FFN block `found` in place, ranking neurons by `activation` (their
    activation norms) or, without it, by their incoming weights; both times the norms of
    their outgoing weights. With `stats` the down-projection is refitted on the kept
    neurons (``_refit``). Returns (neurons removed, width kept, the refit or None)."""
    width = _width(found)
    if found.kind == "conv1d":  # Conv1D: weight [in, out]
        mlp, up, down = found.up_owner, found.up, found.down
        incoming = up.weight.norm(dim=0) if activation is None else activation
        keep = top_sorted(incoming * down.weight.norm(dim=1), _keep_count(width, amount))
        mlp.c_fc, mlp.c_proj = _conv1d_cols(up, keep), _conv1d_rows(down, keep)
    elif found.kind == "gated":
        mlp, up, down = found.up_owner, found.up, found.down
        gate = mlp.gate_proj
        incoming = (gate.weight.norm(dim=1) + up.weight.norm(dim=1)
                    if activation is None else activation)
        keep = top_sorted(incoming * down.weight.norm(dim=0), _keep_count(width, amount))
        mlp.gate_proj, mlp.up_proj = _linear_rows(gate, keep), _linear_rows(up, keep)
        mlp.down_proj = _linear_cols(down, keep)
    else:
        up, down = found.up, found.down
        incoming = up.weight.norm(dim=1) if activation is None else activation
        keep = top_sorted(incoming * down.weight.norm(dim=0), _keep_count(width, amount))
        setattr(found.up_owner, found.up_name, _linear_rows(up, keep))
        setattr(found.down_owner, found.down_name, _linear_cols(down, keep))
    refit = None
    if stats is not None and stats.tokens:
        import torch

        new_down = found.down
        conv = found.kind == "conv1d"
        # the original down-projection as [out, width]
        weight = down.weight.T if conv else down.weight
        w, b, refit = _refit(weight, down.bias, stats, keep)
        with torch.no_grad():
            new_down.weight.copy_(w.T if conv else w)
            if b is not None:
                new_down.bias.copy_(b)
    return width - len(keep), len(keep), refit


def prune_structured_ffn(model: Any, amount: float,
                         activation_norms: dict[str, Any] | None = None, *,
                         stats: dict[str, FfnStats] | None = None,
                         refits: dict[str, Reconstruction] | None = None) -> int:
    """Remove `amount` of the FFN neurons of every block; returns the neurons removed.

    With `activation_norms` (`ffn_activation_norms` of this model) neurons are ranked by
    what they contribute on that data, else by their weights alone. With `stats`
    (`ffn_activation_stats` of this model) each block's down-projection is then refitted by
    least squares so that the kept neurons reproduce, over that data, the block's output
    with every neuron (what each refit did goes to `refits`, by block). Raises
    ModelLoadError when the architecture has no FFN layout this function knows, or when
    `activation_norms` or `stats` lacks a block.
    """
    import torch

    check_amount(amount)
    removed = 0
    new_width: int | None = None
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            found = _ffn(module)
            if found is None:
                continue
            activation = None
            if activation_norms is not None:
                activation = activation_norms.get(name)
                if activation is None:
                    raise ModelLoadError(f"no activation norms for the FFN block {name!r}")
            block_stats = None
            if stats is not None:
                block_stats = stats.get(name)
                if block_stats is None:
                    raise ModelLoadError(f"no activation statistics for the FFN block {name!r}")
            dropped, new_width, refit = _prune_ffn_block(found, amount, activation, block_stats)
            if refit is not None and refits is not None:
                refits[name] = refit
            removed += dropped
    if new_width is None:
        raise ModelLoadError(
            "structured pruning supports transformer FFN blocks (BERT/RoBERTa, ViT, DistilBERT, "
            "GPT-2, Llama-style); this model has none"
        )
    config = getattr(model, "config", None)
    if config is not None:
        for attr in ("intermediate_size", "hidden_dim", "n_inner"):
            if hasattr(config, attr):
                setattr(config, attr, new_width)
    return removed


def prune_tf_variables(variables: Any, amount: float) -> int:
    """Zero the smallest-|w| entries of each kernel (rank >= 2) variable; returns how many."""
    import numpy as np

    check_amount(amount)
    touched = 0
    for var in variables:
        if len(var.shape) < 2 or not _is_float(var):
            continue
        value = var.numpy()
        k = round(amount * value.size)
        if k == 0:
            continue
        threshold = np.partition(np.abs(value).ravel(), k - 1)[k - 1]
        mask = np.abs(value) > threshold
        value = np.where(mask, value, 0).astype(value.dtype)
        var.assign(value)
        touched += 1
    if not touched:
        raise ModelLoadError("unstructured pruning found no kernels in the TensorFlow model")
    return touched


def _is_float(var: Any) -> bool:
    """True for floating variables; TF variables carry a DType, Keras 3 ones a string."""
    import numpy as np

    dtype = getattr(var.dtype, "as_numpy_dtype", var.dtype)
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))
    except TypeError:
        return False


def tf_sparsity(variables: Any) -> float:
    """Fraction of exactly-zero entries over kernel (rank >= 2) variables."""
    import numpy as np

    zeros = 0
    total = 0
    for var in variables:
        if len(var.shape) < 2 or not _is_float(var):
            continue
        value = var.numpy()
        zeros += int(np.count_nonzero(value == 0))
        total += value.size
    return zeros / total if total else 0.0


_KERAS_PASS_THROUGH = (
    "MaxPooling2D",
    "AveragePooling2D",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "Dropout",
    "BatchNormalization",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
)


def prune_keras_conv_channels(model: Any, amount: float) -> tuple[Any, int]:
    """Remove `amount` of the output channels of each Conv2D of a chain-shaped Keras model.

    Filters are ranked by the L1 norm of their kernels. A Conv2D is pruned when its output
    reaches exactly one Conv2D or Dense through channel-preserving layers (pooling,
    activations, dropout, batch norm, global pooling): that consumer loses the matching
    input channels and batch norm the matching statistics. Returns (new model, channels
    removed); the input model is left unchanged. Models that are not a single chain
    (branches, residuals) are refused with ModelLoadError.
    """
    import keras
    import numpy as np

    check_amount(amount)
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    for prev, layer in itertools.pairwise(layers):
        if layer.input is not prev.output:
            raise ModelLoadError(
                "structured channel pruning supports chain-shaped Keras models only "
                f"(layer {layer.name!r} does not take {prev.name!r}'s output)"
            )
    kinds = [type(layer).__name__ for layer in layers]
    plans: dict[str, Any] = {}  # conv name -> (keep indices, bn names, consumer name)
    for i, layer in enumerate(layers):
        if kinds[i] != "Conv2D":
            continue
        bns: list[str] = []
        j = i + 1
        while j < len(layers) and kinds[j] in _KERAS_PASS_THROUGH:
            if kinds[j] == "BatchNormalization":
                bns.append(layers[j].name)
            j += 1
        if j >= len(layers) or kinds[j] not in ("Conv2D", "Dense"):
            continue
        kernel = layer.get_weights()[0]
        filters = kernel.shape[-1]
        keep_n = max(1, round(filters * (1.0 - amount)))
        if keep_n >= filters:
            continue
        score = np.abs(kernel).sum(axis=(0, 1, 2))
        keep = np.sort(np.argsort(-score)[:keep_n])
        plans[layer.name] = (keep, bns, layers[j].name)
    if not plans:
        raise ModelLoadError("structured channel pruning found no prunable Conv2D layer")
    config = model.get_config()
    for entry in config["layers"]:
        # recorded input shapes are stale for the layers after a pruned conv: rebuild
        # every layer from the tensors it actually receives
        entry.pop("build_config", None)
        plan = plans.get(entry["config"].get("name", entry.get("name")))
        if plan is not None:
            entry["config"]["filters"] = len(plan[0])
    try:
        new_model = type(model).from_config(config)
    except Exception as exc:
        raise ModelLoadError(f"cannot rebuild the pruned Keras model: {exc}") from exc
    in_keep: dict[str, Any] = {}
    bn_keep: dict[str, Any] = {}
    for keep, bns, consumer in plans.values():
        in_keep[consumer] = keep
        for bn in bns:
            bn_keep[bn] = keep
    removed = 0
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        name = layer.name
        if name in bn_keep:
            weights = [w[bn_keep[name]] for w in weights]
        if name in in_keep:
            k = in_keep[name]
            weights[0] = weights[0][:, :, k, :] if weights[0].ndim == 4 else weights[0][k, :]
        if name in plans:
            k = plans[name][0]
            removed += weights[0].shape[-1] - len(k)
            weights = [weights[0][..., k], *[w[k] for w in weights[1:]]]
        new_model.get_layer(name).set_weights(weights)
    _ = keras  # imported for from_config's registry
    return new_model, removed
