"""Honest model statistics after optimization: parameters, bytes in memory, sparsity.

Dynamic-int8 Linear layers keep their weights in packed params that `parameters()` does
not list, so counts walk the state dict (packed weights included, shared tensors once);
tensor subclasses (torchao's int8 weight-only weights) count the tensors they store.
Sparsity is the fraction of exactly-zero weights in the prunable layers (Linear, Conv1D,
Conv*d; the classifier / LM head excluded), the same set the pruning functions touch.
"""

from __future__ import annotations

import io
from typing import Any


def _iter_tensors(value: Any, stored: bool = False) -> Any:
    """(tensor, inside a subclass) pairs: a subclass's int8 data counts whatever its dtype."""
    import torch

    if isinstance(value, torch.Tensor):
        flatten = getattr(value, "__tensor_flatten__", None)
        if flatten is None:
            yield value, stored
        else:
            for name in flatten()[0]:
                yield from _iter_tensors(getattr(value, name), True)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _iter_tensors(item, stored)


def torch_param_stats(model: Any) -> tuple[int, int]:
    """(number of parameters, bytes) over the model's state dict, each storage counted once."""
    seen: set[tuple[int, int]] = set()
    count = 0
    size = 0
    for value in model.state_dict().values():
        for tensor, stored in _iter_tensors(value):
            if stored or tensor.dtype.is_floating_point or tensor.is_quantized:
                key = (_data_ptr(tensor), tensor.numel())
                if key in seen:
                    continue
                seen.add(key)
                count += tensor.numel()
                size += tensor.numel() * tensor.element_size()
    return count, size


def _data_ptr(tensor: Any) -> int:
    try:
        return int(tensor.data_ptr())
    except RuntimeError:  # some quantized tensors refuse data_ptr
        return id(tensor)


def torch_serialized_size(model: Any) -> int:
    """Bytes of `torch.save(model.state_dict())`: the on-disk size of the weights."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def prunable_torch_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of the weight layers pruning acts on; heads are left alone."""
    from torch import nn

    kinds: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds = (*kinds, Conv1D)
    except ImportError:  # plain torch models
        pass
    excluded = ("classifier", "lm_head", "score", "qa_outputs")
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kinds) and not name.split(".")[-1].startswith(excluded)
    ]


def torch_sparsity(model: Any) -> float:
    """Fraction of exactly-zero weights over the prunable layers (0.0 when there are none)."""
    import torch

    zeros = 0
    total = 0
    for _, module in prunable_torch_modules(model):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if hasattr(weight, "__tensor_flatten__"):  # torchao int8 weight-only
            weight = weight.dequantize()
        zeros += int((weight == 0).sum())
        total += weight.numel()
    # dynamic-int8 layers: count zeros of the dequantized packed weights
    try:
        from torch.ao.nn.quantized import dynamic as qd

        excluded = ("classifier", "lm_head", "score", "qa_outputs")
        for name, module in model.named_modules():
            if isinstance(module, qd.Linear) and not name.split(".")[-1].startswith(excluded):
                w = module.weight()
                zeros += int((w.dequantize() == 0).sum())
                total += w.numel()
    except ImportError:
        pass
    return zeros / total if total else 0.0
