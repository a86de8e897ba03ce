"""The contract every framework backend fulfils; the dataplane knows backends only through it.

A backend owns one loaded model. It knows nothing of HTTP, batching or metrics: the
dataplane hands it numpy arrays that are already validated and batched along axis 0 and
gets numpy arrays back; a text generator gets a prompt and checked `SamplingParams`
(model_server.generation) and yields text. Load failures raise
model_server.errors.ModelLoadError. Heavy frameworks (torch, transformers, tensorflow) are
imported inside the concrete backend modules, never here, so the server starts without the
ones a model does not use.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_server.generation import SamplingParams
from msv_contract import capabilities as caps

# The value sets come from the capability table (msv_contract.capabilities); as Literals,
# pydantic refuses anything else with the list of what is allowed.
Quantization = Literal[caps.QUANTIZATION_NAMES]  # type: ignore[valid-type]
PruningMethod = Literal[(caps.NONE, *caps.PRUNING_METHODS)]  # type: ignore[valid-type]
Device = Literal[("auto", *caps.DEVICES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output as announced in OIP v2 model metadata."""

    name: str
    datatype: str
    """OIP v2 datatype: BOOL, UINT8, INT32, INT64, FP16, FP32, FP64, BYTES, …"""
    shape: tuple[int, ...]
    """-1 marks a variable dimension; the first one is the batch dimension."""


@dataclass(frozen=True)
class LoadOptions:
    """How to load and optimize the model; filled from the server settings."""

    task: str | None = None
    """transformers pipeline task (text-classification, text-generation, …); None elsewhere."""
    device: Device = "auto"
    """auto picks CUDA when torch/tensorflow sees a device, else CPU."""
    quantization: Quantization = "none"
    pruning_method: PruningMethod = "none"
    pruning_amount: float = 0.0
    """Fraction in [0, 1): of weights (unstructured) or FFN neurons / conv channels (structured)."""
    torch_threads: int | None = None
    trust_remote_code: bool = False
    """Never enabled implicitly: a model directory must not run code unless the user says so."""


@dataclass
class BackendInfo:
    """What the model is, after optimization: exported in metadata and metrics."""

    framework: str
    device: str
    quantization: str = "none"
    pruning_method: str = "none"
    sparsity: float = 0.0
    parameters: int = 0
    size_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A loaded model of one framework. Instances are created unloaded, then `load()`ed once."""

    framework: str = ""
    max_batch_size_hint: int | None = None
    """An upper bound the backend imposes on batches (None: the server setting decides)."""

    @abc.abstractmethod
    def load(self, model_dir: Path, options: LoadOptions) -> None:
        """Load (and optimize) the model from `model_dir`; raise model_server.errors.ModelLoadError
        on failure."""

    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The inputs `predict` accepts."""

    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """The outputs `predict` returns."""

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Every array's first axis is the batch; outputs keep that order.

        BYTES inputs arrive as numpy object arrays of `bytes`. Raise InvalidInput (from
        model_server.errors) for input the model cannot take; anything else is a server fault.
        """

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Framework, device, applied optimization, parameters, size in bytes."""

    def supports_generate(self) -> bool:
        """True for text-generation models that implement `generate`."""
        return False

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Yield generated text pieces for `prompt`, one exclusive turn on the model.

        `params` were checked by the dataplane (model_server.generation.sampling): convert
        them, do not check them again.
        """
        raise NotImplementedError

    def stream_generation(self, prompt: str, params: SamplingParams) -> AsyncIterator[str] | None:
        """Batched generation, when the backend has it: an async iterator of text pieces on
        the running event loop (its `aclose` stops the row). None: the backend streams
        through `generate` alone."""
        return None

    def close(self) -> None:
        """Release background resources (e.g. a generation thread) when the server stops."""
        return None

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for a conversation of {"role", "content"} messages (the dataplane
        renders chat requests with it).

        Backends with a chat template apply it; this plain transcript is the fallback.
        """
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def count_tokens(self, text: str) -> int | None:
        """How many tokens `text` is for this model (the dataplane's usage), or None if unknown."""
        return None

    def token_ids(self, text: str) -> list[int] | None:
        """`text` as this model's token ids (mirror comparisons), or None without a tokenizer."""
        return None

    def export(self, out_dir: Path) -> list[str]:
        """Write the loaded (optimized) model into `out_dir` as an artifact this backend
        serves; returns notes for the report. Used by `model-server optimize`."""
        raise NotImplementedError(f"the {self.framework} backend cannot export a model")
