"""Test-double backends implementing model_server.backends.base.Backend (no framework needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.errors import InvalidInput, ModelLoadError
from model_server.generation import SamplingParams


class EchoBackend(Backend):
    """x (FP32 [-1,4]) -> y = 2x; text (BYTES [-1]) -> upper-cased text and its length."""

    framework = "test"

    def __init__(self, delay_s: float = 0.0, load_delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.load_delay_s = load_delay_s
        self.batches: list[int] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()
        self.loaded = threading.Event()
        self.release_load = threading.Event()
        self.release_load.set()

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        self.release_load.wait(10)
        time.sleep(self.load_delay_s)
        self.loaded.set()

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("text", "BYTES", (-1,))]

    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("y", "FP32", (-1, 4)),
            TensorSpec("upper", "BYTES", (-1,)),
            TensorSpec("length", "INT64", (-1,)),
        ]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            x = inputs["x"]
            text = inputs["text"].reshape(-1)
            if x.shape[0] != text.shape[0]:
                raise InvalidInput("x and text need the same batch size")
            if np.isnan(x).any():
                raise InvalidInput("x contains NaN")
            self.batches.append(int(x.shape[0]))
            if self.delay_s:
                time.sleep(self.delay_s)
            upper = np.array([t.upper() for t in text], dtype=object)
            length = np.array([len(t) for t in text], dtype=np.int64)
            return {"y": x * 2, "upper": upper, "length": length}
        finally:
            with self._lock:
                self.concurrent -= 1

    def info(self) -> BackendInfo:
        return BackendInfo(
            framework="test",
            device="cpu",
            quantization="dynamic-int8",
            pruning_method="unstructured",
            sparsity=0.5,
            parameters=1234,
            size_bytes=5678,
        )


class GenerateBackend(EchoBackend):
    """Adds the generate extension: echoes the prompt word by word, up to the token limit."""

    def supports_generate(self) -> bool:
        return True

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        for word in prompt.split()[: params.max_new_tokens]:
            yield word + " "


class BrokenBackend(EchoBackend):
    """Fails to load, like a corrupt model directory."""

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        raise ModelLoadError("weights file model.safetensors is corrupt")


class IdentityBackend(Backend):
    """x (FP32 [-1,-1]) -> x: the overhead benchmark's model."""

    framework = "test"

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        return None

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "FP32", (-1, -1))]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "FP32", (-1, -1))]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": inputs["x"]}

    def info(self) -> BackendInfo:
        return BackendInfo(framework="test", device="cpu")


class EndlessGenerateBackend(GenerateBackend):
    """Generates "tick " forever, slowly; records when its consumer closed the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = threading.Event()
        self.produced = 0

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        try:
            while True:
                time.sleep(0.01)
                self.produced += 1
                yield "tick "
        finally:
            self.closed.set()
