"""PURE: how much GPU memory one variant needs, known before any pod starts.

Read from the artifact without loading it: a safetensors header (the JSON after the file's
8-byte little-endian length: tensor name -> ``dtype``, ``shape``, ``data_offsets``;
``__metadata__`` is ignored) gives every tensor's size, and the model's ``config.json`` (when
there is one) its shape: layers, attention and key/value heads, head size, hidden and
feed-forward widths, context length. Artifacts without a header (TorchScript archives,
TensorFlow SavedModels, pickled ``*.bin`` weights, archives) are estimated from their size.

The estimate follows what the model server does when it loads a variant on a GPU
(``model_server.backends``, ``model_server.optimize``), part by part (``MemoryEstimate``):

* **weights** as the server holds them. The transformers backend loads every floating-point
  tensor at float32 whatever the artifact's dtype (quantization ``none`` is the capability
  table's 4 bytes per parameter), TorchScript and TensorFlow keep the artifact's dtypes.
  ``float16``/``bfloat16`` cast every floating-point tensor (2 bytes); ``dynamic-int8``
  touches the weights of linear layers only (``nn.Linear``, and GPT-2's ``Conv1D``, which the
  server swaps for ``nn.Linear``): 1 byte per weight plus a scale and a zero point per output
  row (8 bytes), while biases, embeddings, norms and convolutions stay at float32; a tied
  output projection (``lm_head`` sharing the input embedding) gets an int8 copy of its own.
  Integer tensors are held as saved. Structured pruning narrows the feed-forward layers the
  server prunes (``model_server.optimize.prune``: BERT/ViT ``intermediate``/``output.dense``,
  ``mlp.fc1``/``fc2``, GPT-2 ``mlp.c_fc``/``c_proj``, Llama ``gate``/``up``/``down_proj``,
  DistilBERT ``ffn.lin1``/``lin2``) to the width it keeps; unstructured pruning zeroes
  weights in place and saves nothing.
* **load peak**: what sits on the device while loading. The transformers backend optimizes
  the model on the CPU it loaded it on (``dynamic-int8`` included) and moves the result, so its
  peak is the weights it serves with; TorchScript is loaded onto the device at its saved
  dtypes before any cast.
* **activations** for one batch through one layer at a time: rows x tokens x (4 x hidden +
  2 x feed-forward width) at the compute dtype (queries, keys, values and the attention
  output; the gate and up projections of a gated MLP), plus, for generation, the last
  position's logits (rows x vocabulary x 4 bytes, twice: logits and processed scores). The
  attention scores (tokens squared) are not counted: the server runs PyTorch's scaled dot
  product attention, whose GPU kernels do not materialize them. Without a config, a fixed
  fraction of the weights (``ACTIVATION_FRACTION``).
* **KV cache** for generation: 2 x layers x key/value heads x head size x tokens x rows x
  compute-dtype bytes.
* **runtime overhead**: ``RUNTIME_OVERHEAD_BYTES``, a documented constant.

Rows: ``spec.server.batching.maxBatchSize`` for inference; generation batches concurrent
streams up to ``GENERATION_ROWS`` whatever maxBatchSize says. Tokens: the model's context
(``max_position_embeddings`` and its aliases; image patches + 1 for vision transformers)
unless the caller gives a sequence length. Total = max(weights + activations + KV cache,
load peak) + overhead, per device: the server places the whole model on one device, so
``gpu.count`` > 1 adds devices, not memory for the model.

One place for the bytes of each safetensors dtype (``DTYPE_BITS``); the bytes per parameter
of each optimization are the capability table's (``msv_contract.capabilities``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from msv_contract import capabilities as caps
from msv_operator import spec as spec_

DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
"""Bits per element of each safetensors dtype (the format's own names)."""
FLOAT_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                          "F16", "BF16", "F32", "F64"})
"""The dtypes a precision change (float16, bfloat16, the float32 load) applies to."""

LENGTH_BYTES = 8
"""The header length prefix: an unsigned 64-bit little-endian integer."""
MAX_HEADER_BYTES = 100_000_000
"""The largest header read: 100 MB, the limit of the safetensors library itself."""

RUNTIME_OVERHEAD_BYTES = 2**30
"""Per device, whatever the model: the CUDA context and its kernels (about 0.3-0.5 GiB with
lazy module loading on current drivers), cuBLAS workspaces and the caching allocator's
fragmentation. A rule of thumb, not a measurement; the server's measured memory replaces the
whole estimate once a pod has loaded."""
ACTIVATION_FRACTION = 0.2
"""Activation headroom as a share of the weights when no config says the model's shape."""
INT8_ROW_BYTES = 8
"""dynamic-int8: a float32 scale and a zero point per output row of a quantized weight."""
GENERATION_ROWS = 16
"""Concurrent generation streams the server batches into one ``generate`` call (the model
server's ``GENERATION_MAX_BATCH``; tests hold the two equal)."""
UNKNOWN_CONTEXT_TOKENS = 512
"""Tokens per row when neither the caller nor the config says (noted in the estimate)."""

FULL_BYTES = caps.QUANTIZATIONS[caps.NONE].bytes_per_parameter
"""Quantization ``none``: float32."""
PIPELINE_FRAMEWORKS = frozenset(f.name for f in caps.FRAMEWORKS.values() if f.tasks)
"""Frameworks served through a pipeline (transformers): their backend loads every
floating-point tensor at ``FULL_BYTES`` whatever the artifact holds, on the CPU, and moves
the model to the GPU after its optimization (quantization included); the others load the
artifact's dtypes straight onto the device and cast it there."""
CASTS = frozenset(q.name for q in caps.QUANTIZATIONS.values()
                  if q.name != caps.NONE and q.bytes_per_parameter >= 2)
"""Quantizations that cast every floating-point tensor (``float16``, ``bfloat16``)."""
WEIGHT_ONLY = frozenset(q.name for q in caps.QUANTIZATIONS.values()
                        if q.bytes_per_parameter < 2)
"""Quantizations that store linear layers' weights in fewer bytes and leave every other
tensor (``dynamic-int8``)."""


class HeaderError(ValueError):
    """A safetensors header that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.numel * DTYPE_BITS[self.dtype] / 8)


@dataclass(frozen=True)
class Header:
    """The tensors one safetensors file holds."""

    tensors: tuple[Tensor, ...]

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def header_length(prefix: bytes, limit: int = MAX_HEADER_BYTES) -> int:
    """The header's length from a file's first 8 bytes; HeaderError when it cannot be one."""
    if len(prefix) < LENGTH_BYTES:
        raise HeaderError(f"the file is {len(prefix)} bytes long, shorter than the "
                          f"{LENGTH_BYTES}-byte header length")
    n = int.from_bytes(prefix[:LENGTH_BYTES], "little")
    if n < 2:
        raise HeaderError(f"the header length is {n} bytes; a header is a JSON object")
    if n > limit:
        raise HeaderError(f"the header length is {n} bytes, above the {limit}-byte limit "
                          "(not a safetensors file, or a damaged one)")
    return n


def parse_header(raw: bytes) -> Header:
    """The tensors of a header (the JSON after the length), checked as the format says: a
    JSON object of tensor name -> {dtype, shape, data_offsets}, each tensor's offsets spanning
    exactly its dtype and shape; ``__metadata__`` (a string map) is ignored."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HeaderError(f"the header is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise HeaderError(f"the header is not JSON: {exc.msg} at byte {exc.pos}") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"the header is a JSON {type(doc).__name__}, not an object")
    tensors = []
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        tensors.append(_tensor(name, entry))
    if not tensors:
        raise HeaderError("the header lists no tensor")
    return Header(tuple(tensors))


def _tensor(name: str, entry: Any) -> Tensor:
    where = f"tensor {name[:200]!r}"
    if not isinstance(entry, dict):
        raise HeaderError(f"{where}: expected an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise HeaderError(f"{where}: dtype {str(dtype)[:40]!r} is not a safetensors dtype "
                          f"({', '.join(DTYPE_BITS)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise HeaderError(f"{where}: shape must be a list of non-negative integers")
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise HeaderError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    t = Tensor(name, dtype, tuple(shape))
    span = offsets[1] - offsets[0]
    if span * 8 != t.numel * DTYPE_BITS[dtype]:
        raise HeaderError(f"{where}: data_offsets span {span} bytes, but {dtype} x "
                          f"{list(t.shape)} takes {t.numel * DTYPE_BITS[dtype] / 8:g}")
    return t


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- the model's shape, from config.json ----------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What config.json says of the sizes that set activations and the KV cache."""

    hidden: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None
    """The feed-forward width (what structured pruning shrinks)."""
    vocab: int | None = None
    context: int | None = None
    """Tokens per row at most: the position embeddings, or image patches + 1."""
    tied_embeddings: bool = True
    """``tie_word_embeddings`` (transformers' default is true)."""


_KEYS = {
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "head_dim": ("head_dim",),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim"),
    "vocab": ("vocab_size",),
    "context": ("max_position_embeddings", "n_positions", "n_ctx", "seq_length",
                "max_seq_len"),
}


def shape_of(config: Mapping[str, Any] | None) -> ModelShape:
    """The shape config.json describes (its ``text_config`` for what the top level lacks);
    a value that is not a positive integer counts as absent."""
    if not isinstance(config, Mapping):
        return ModelShape()
    inner = config.get("text_config")
    scopes = [config, inner] if isinstance(inner, Mapping) else [config]

    def first(field_: str) -> int | None:
        for scope in scopes:
            for key in _KEYS[field_]:
                value = scope.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    found = {name: first(name) for name in _KEYS}
    hidden, heads = found["hidden"], found["heads"]
    if found["kv_heads"] is None:
        found["kv_heads"] = 1 if config.get("multi_query") is True else heads
    if found["head_dim"] is None and hidden and heads:
        found["head_dim"] = hidden // heads
    if found["intermediate"] is None and hidden:
        found["intermediate"] = 4 * hidden  # GPT-2 (n_inner: null) and the usual default
    image, patch = config.get("image_size"), config.get("patch_size")
    if found["context"] is None and _count(image) and _count(patch) and patch:
        found["context"] = (image // patch) ** 2 + 1
    tied = config.get("tie_word_embeddings", True)
    return ModelShape(**found, tied_embeddings=tied is not False)


# ---- what the server does with a variant -----------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """What the server will do with the weights: the variant's framework, task, optimization
    and batching (``of`` reads them from a parsed spec)."""

    framework: str
    task: str | None = None
    quantization: str = caps.NONE
    pruning_method: str = caps.NONE
    pruning_amount: float = 0.0
    max_batch_size: int = 8
    sequence_length: int | None = None
    """Tokens per row; None: the model's context (config.json)."""

    @property
    def generates(self) -> bool:
        return self.task in caps.GENERATION_TASKS

    @property
    def rows(self) -> int:
        """Rows processed at once: generation batches its streams, inference its requests."""
        return GENERATION_ROWS if self.generates else self.max_batch_size

    @classmethod
    def of(cls, spec: spec_.ModelServiceSpec, variant: spec_.Variant,
           sequence_length: int | None = None) -> Workload:
        """A variant of a parsed spec."""
        return cls(framework=spec.framework, task=spec.task, quantization=variant.quantization,
                   pruning_method=variant.pruning_method, pruning_amount=variant.pruning_amount,
                   max_batch_size=spec.max_batch_size, sequence_length=sequence_length)


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU memory one device needs for a variant, part by part (bytes)."""

    source: str
    """``safetensors-header`` or ``artifact-size``."""
    parameters: int | None
    """Elements in the artifact's tensors (None from a size)."""
    artifact_weight_bytes: int
    """The weights at the artifact's dtypes."""
    weight_bytes: int
    """The weights as the server holds them after the variant's optimization."""
    load_peak_bytes: int
    """Weights on the device while loading (before the optimization is done)."""
    activation_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    rows: int
    tokens: int | None
    """Tokens per row counted (None: no config, activations from ACTIVATION_FRACTION)."""
    notes: tuple[str, ...] = field(default=())
    """Assumptions the estimate had to make, in words."""

    @property
    def steady_bytes(self) -> int:
        """Serving: weights, activations and KV cache, plus the overhead."""
        return (self.weight_bytes + self.activation_bytes + self.kv_cache_bytes
                + self.overhead_bytes)

    @property
    def total_bytes(self) -> int:
        """What a device must hold: the larger of serving and loading, plus the overhead."""
        return max(self.steady_bytes, self.load_peak_bytes + self.overhead_bytes)

    def to_status(self) -> dict[str, Any]:
        """The ``status.variants[].gpuMemory`` object (camelCase keys)."""
        out: dict[str, Any] = {
            "source": self.source, "totalBytes": self.total_bytes,
            "weightBytes": self.weight_bytes, "artifactWeightBytes": self.artifact_weight_bytes,
            "loadPeakBytes": self.load_peak_bytes, "activationBytes": self.activation_bytes,
            "kvCacheBytes": self.kv_cache_bytes, "overheadBytes": self.overhead_bytes,
            "rows": self.rows}
        if self.parameters is not None:
            out["parameters"] = self.parameters
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def gib(n: float) -> str:
    """Bytes as ``13.4 GiB`` (the unit of the nvidia.com/gpu.memory label, MiB, scaled)."""
    return f"{n / 2**30:.1f} GiB"


def keep_width(width: int, amount: float) -> int:
    """The feed-forward width structured pruning keeps (the server's rule: the kept share,
    rounded up to a multiple of 8 from width 64 on)."""
    keep = width * (1.0 - amount)
    if width >= 64:
        keep = math.ceil(keep / 8) * 8
    return max(1, min(width, round(keep)))


_FFN = re.compile(r"(^|\.)(intermediate\.dense|layer\.\d+\.output\.dense|"
                  r"mlp\.(fc1|fc2|c_fc|c_proj|gate_proj|up_proj|down_proj)|ffn\.(lin1|lin2))"
                  r"\.(weight|bias)$")
"""The feed-forward layers structured pruning narrows (the server's layouts: BERT/ViT,
CLIP-style fc1/fc2, GPT-2, Llama/Mistral, DistilBERT)."""
_LINEAR = re.compile(r"\.weight$")
_NOT_LINEAR = re.compile(r"(embed|wte|wpe|norm|ln_|layernorm|patch|conv)", re.IGNORECASE)
_OUTPUT = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")


def is_linear_weight(t: Tensor) -> bool:
    """Whether ``dynamic-int8`` quantizes this tensor: a 2-D floating-point ``*.weight`` that
    is not an embedding, a norm, a patch projection or a convolution (an output projection
    such as ``lm_head`` or ``embed_out`` is a linear layer)."""
    return (t.dtype in FLOAT_DTYPES and len(t.shape) == 2 and bool(_LINEAR.search(t.name))
            and (bool(_OUTPUT.search(t.name)) or not _NOT_LINEAR.search(t.name)))


def _pruned(tensors: Sequence[Tensor], w: Workload, shape: ModelShape, notes: list[str]
            ) -> list[Tensor]:
    if w.pruning_method != "structured" or not w.pruning_amount:
        return list(tensors)
    width = shape.intermediate
    if width is None or width == shape.hidden:
        notes.append("structured pruning not counted: config.json gives no feed-forward width "
                     "distinct from the hidden size")
        return list(tensors)
    kept = keep_width(width, w.pruning_amount)
    return [replace(t, shape=tuple(kept if d == width else d for d in t.shape))
            if _FFN.search(t.name) else t for t in tensors]


def _held(t: Tensor, w: Workload) -> int:
    """Bytes of one tensor as the server holds it after the variant's optimization."""
    if t.dtype not in FLOAT_DTYPES:
        return t.nbytes
    if w.quantization in CASTS:
        return math.ceil(t.numel * caps.QUANTIZATIONS[w.quantization].bytes_per_parameter)
    if w.quantization in WEIGHT_ONLY and is_linear_weight(t):
        return (math.ceil(t.numel * caps.QUANTIZATIONS[w.quantization].bytes_per_parameter)
                + t.shape[0] * INT8_ROW_BYTES)
    return _loaded(t, w)


def _loaded(t: Tensor, w: Workload) -> int:
    """Bytes of one tensor as loaded, before any optimization."""
    if w.framework not in PIPELINE_FRAMEWORKS or t.dtype not in FLOAT_DTYPES:
        return t.nbytes
    return math.ceil(t.numel * FULL_BYTES)


def _compute_bytes(w: Workload, artifact_float_bytes: float) -> float:
    """Bytes of an activation element: the precision the weights compute in."""
    if w.quantization in CASTS:
        return caps.QUANTIZATIONS[w.quantization].bytes_per_parameter
    return FULL_BYTES if w.framework in PIPELINE_FRAMEWORKS else artifact_float_bytes


def _tied_output_copy(tensors: Sequence[Tensor], w: Workload, shape: ModelShape) -> int:
    """dynamic-int8 of a generator whose output projection shares the input embedding: the
    projection is an nn.Linear, quantized into a copy of its own (the embedding stays)."""
    if w.quantization not in WEIGHT_ONLY or not w.generates or not shape.tied_embeddings:
        return 0
    if any(_OUTPUT.search(t.name) for t in tensors):
        return 0  # an untied projection is in the file and counted with the linear layers
    embeddings = [t for t in tensors if len(t.shape) == 2 and t.dtype in FLOAT_DTYPES
                  and shape.vocab is not None and t.shape[0] == shape.vocab]
    if not embeddings:
        return 0
    e = embeddings[0]
    return (math.ceil(e.numel * caps.QUANTIZATIONS[w.quantization].bytes_per_parameter)
            + e.shape[0] * INT8_ROW_BYTES)


def estimate_from_headers(headers: Iterable[Header], workload: Workload,
                          config: Mapping[str, Any] | None = None) -> MemoryEstimate:
    """The estimate from the artifact's safetensors headers (one per shard) and its
    config.json (None: activations from ACTIVATION_FRACTION, no KV cache)."""
    raw = [t for h in headers for t in h.tensors]
    if not raw:
        raise HeaderError("no tensor to estimate from")
    shape = shape_of(config)
    notes: list[str] = []
    tensors = _pruned(raw, workload, shape, notes)
    weights = sum(_held(t, workload) for t in tensors) + _tied_output_copy(raw, workload, shape)
    floats = [t for t in raw if t.dtype in FLOAT_DTYPES]
    artifact_float = (sum(t.nbytes for t in floats) / max(1, sum(t.numel for t in floats))
                      if floats else 4.0)
    return _finish("safetensors-header", sum(t.numel for t in raw), sum(t.nbytes for t in raw),
                   weights, workload, shape, artifact_float, notes)


def estimate_from_size(size_bytes: int, workload: Workload,
                       config: Mapping[str, Any] | None = None) -> MemoryEstimate:
    """The estimate from the artifact's size alone (no header): the weights are taken to be
    the size at float32; an archive's compressed size understates them."""
    if size_bytes <= 0:
        raise HeaderError(f"an artifact of {size_bytes} bytes holds no weights")
    shape = shape_of(config)
    notes = ["weights from the artifact's size, taken as float32 tensors"]
    if workload.quantization == caps.NONE:
        weights = size_bytes
    else:
        q = caps.QUANTIZATIONS[workload.quantization].bytes_per_parameter
        weights = math.ceil(size_bytes * q / FULL_BYTES)
        if workload.quantization in WEIGHT_ONLY:
            notes.append(f"{workload.quantization} counted on every tensor (no header says "
                         "which are linear)")
    if workload.pruning_method == "structured" and workload.pruning_amount:
        notes.append("structured pruning not counted (no header)")
    return _finish("artifact-size", None, size_bytes, weights, workload, shape, FULL_BYTES,
                   notes)


def _finish(source: str, parameters: int | None, artifact: int, weights: int,
            w: Workload, shape: ModelShape, artifact_float: float, notes: list[str]
            ) -> MemoryEstimate:
    compute = _compute_bytes(w, artifact_float)
    rows = w.rows
    # Pipelines optimize on the CPU (int8 too), then move; the others load onto the device
    # as saved, then cast.
    peak = weights if w.framework in PIPELINE_FRAMEWORKS else max(artifact, weights)
    tokens = w.sequence_length or shape.context
    if shape.hidden is None:
        activations = math.ceil(ACTIVATION_FRACTION * weights)
        notes.append(f"activations taken as {ACTIVATION_FRACTION:.0%} of the weights: no "
                     "config.json gives the hidden size")
        tokens = w.sequence_length
    else:
        if tokens is None:
            tokens = UNKNOWN_CONTEXT_TOKENS
            notes.append(f"{tokens} tokens per row: config.json gives no context length")
        width = 4 * shape.hidden + 2 * (shape.intermediate or 4 * shape.hidden)
        activations = math.ceil(rows * tokens * width * compute)
        if w.generates and shape.vocab:
            activations += rows * shape.vocab * 4 * 2
    kv = 0
    if w.generates:
        if shape.layers and shape.kv_heads and shape.head_dim and tokens:
            kv = math.ceil(2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * rows
                           * compute)
        else:
            notes.append("KV cache not counted: config.json gives no layers, heads or head size")
    return MemoryEstimate(
        source=source, parameters=parameters, artifact_weight_bytes=artifact,
        weight_bytes=weights, load_peak_bytes=peak, activation_bytes=activations,
        kv_cache_bytes=kv, overhead_bytes=RUNTIME_OVERHEAD_BYTES, rows=rows, tokens=tokens,
        notes=tuple(notes))
