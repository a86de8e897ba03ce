"""Safetensors files shaped like real models, without their weights.

A header names every tensor with its dtype, shape and byte offsets; the GPU-fit estimate
reads only that. ``truncated_file`` writes the 8-byte length, the header and a few bytes of
data: a 26 GB model in a few kilobytes, for tests of the estimate, of the header reader and
of placement. The shapes are those of public checkpoints (Llama 2 7B/13B/70B as Meta and
Hugging Face publish them, OpenLLaMA 3B), laid out as transformers' ``LlamaForCausalLM``
saves them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

BITS = {"F32": 32, "F16": 16, "BF16": 16, "I8": 8, "U8": 8, "I64": 64}


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context: int
    tied: bool = False

    def config(self) -> dict[str, Any]:
        """Its config.json."""
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": self.hidden, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.intermediate, "vocab_size": self.vocab,
                "max_position_embeddings": self.context, "tie_word_embeddings": self.tied,
                "torch_dtype": "float16"}

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor of the checkpoint."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}"
            out += [(f"{p}.self_attn.q_proj.weight", (h, h)),
                    (f"{p}.self_attn.k_proj.weight", (kv, h)),
                    (f"{p}.self_attn.v_proj.weight", (kv, h)),
                    (f"{p}.self_attn.o_proj.weight", (h, h)),
                    (f"{p}.mlp.gate_proj.weight", (self.intermediate, h)),
                    (f"{p}.mlp.up_proj.weight", (self.intermediate, h)),
                    (f"{p}.mlp.down_proj.weight", (h, self.intermediate)),
                    (f"{p}.input_layernorm.weight", (h,)),
                    (f"{p}.post_attention_layernorm.weight", (h,))]
        out.append(("model.norm.weight", (h,)))
        if not self.tied:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    @property
    def parameters(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())


LLAMA_2_7B = LlamaShape(4096, 32, 32, 32, 11008, 32000, 4096)
LLAMA_2_13B = LlamaShape(5120, 40, 40, 40, 13824, 32000, 4096)
LLAMA_2_70B = LlamaShape(8192, 80, 64, 8, 28672, 32000, 4096)
OPEN_LLAMA_3B = LlamaShape(3200, 26, 32, 32, 8640, 32000, 2048)


def header(tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "F16",
           metadata: dict[str, str] | None = None) -> bytes:
    """The header JSON of ``tensors`` stored contiguously at ``dtype``."""
    doc: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = math.prod(shape) * BITS[dtype] // 8
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return json.dumps(doc, separators=(",", ":")).encode()


def with_length(raw_header: bytes) -> bytes:
    """The file's first bytes: the header's length (u64, little-endian) and the header."""
    return len(raw_header).to_bytes(8, "little") + raw_header


def truncated_file(tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "F16",
                   data: bytes = b"\0" * 64) -> bytes:
    """A safetensors file cut after its header and ``data``."""
    return with_length(header(tensors, dtype)) + data
