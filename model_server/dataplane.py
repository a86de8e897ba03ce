"""The dataplane: model lifecycle, metadata, and `infer`/`generate` on decoded requests.

Front ends (REST in model_server.routers: fastpath.RestInfer, v2 and openai; gRPC in
model_server.grpc_api.service) decode their wire format into an `InferRequest` (with
model_server.codec or grpc_api.codec) or a `generation.GenerationRequest`, call the
dataplane, and encode what it returns; none of them touches the backend. For infer the
dataplane checks the request once against the model's `Signature`
(model_server.validation), hands it to the batcher and gives back the outputs. For
generation (`generate`, `stream`) it checks the parameters with the one set of rules
(`generation.sampling`), renders chat messages with the model's chat template, runs the
backend (batched, or an exclusive turn on the model) and returns a `generation.Generation`
that counts its usage. It knows nothing of HTTP, gRPC or JSON.

The model loads in a worker thread (`load`); until it succeeds `ready` is False and every
inference raises ModelNotReady with the state and, after a failure, the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.batching import Batcher
from model_server.codec import InferRequest
from model_server.errors import InvalidInput, ModelNotFound, ModelNotReady
from model_server.generation import Generation, GenerationRequest, SamplingParams, sampling
from model_server.validation import Signature
from msv_contract import capabilities as caps

if TYPE_CHECKING:
    from model_server.mirror.sender import Mirror
    from model_server.startup import StartupClock

log = logging.getLogger(__name__)

SERVER_NAME = "modelservice"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "generate", "metrics"]

PLATFORMS = {name: fw.platform for name, fw in caps.FRAMEWORKS.items()}
"""OIP v2 metadata `platform` per framework (from the capability table)."""


class ModelState:
    """Where the model is in its life: loading → ready, or loading → failed (with reason)."""

    def __init__(self) -> None:
        self.state = "loading"
        self.reason = ""
        self.backend: Backend | None = None
        self.info: BackendInfo | None = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.load_seconds = 0.0
        self.artifact_bytes = 0


class DataPlane:
    """The served model and everything between request bytes and the batcher."""

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        variant: str,
        framework: str,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        metrics: Any = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.variant = variant
        self.framework = framework
        self.metrics = metrics
        self.model = ModelState()
        self._batcher_args = {
            "max_batch_size": max_batch_size,
            "max_delay_s": max_delay_s,
            "max_queue": max_queue,
            "timeout_s": timeout_s,
        }
        self.batcher: Batcher | None = None
        self.signature = Signature([], [])
        self.mirror: Mirror | None = None
        """Set while a rollout mirrors this server's answered requests to its candidate."""
        self.startup: StartupClock | None = None
        """The start's phases (set by the app): in the model metadata as ``startup``."""

    # lifecycle ---------------------------------------------------------------------------
    def load(
        self, make_backend: Callable[[], Backend], model_dir: Any, options: LoadOptions
    ) -> None:
        """Create and load the backend (blocking: call from a worker thread)."""
        started = time.perf_counter()
        try:
            backend = make_backend()
            self.framework = backend.framework or self.framework
            backend.load(model_dir, options)
            inputs, outputs, info = backend.inputs(), backend.outputs(), backend.info()
        except Exception as exc:
            self.model.state = "failed"
            self.model.reason = f"{type(exc).__name__}: {exc}"
            log.error(
                "Failed to load model %s: %s",
                self.model_name,
                self.model.reason,
                extra={"model": self.model_name, "variant": self.variant},
                exc_info=not isinstance(exc, (OSError, ValueError)),
            )
            return
        self.model.load_seconds = time.perf_counter() - started
        self.model.artifact_bytes = artifact_bytes(model_dir)
        self.model.backend = backend
        self.model.info = info
        self.model.inputs = inputs
        self.model.outputs = outputs
        self.signature = Signature(inputs, outputs)
        if self.metrics is not None:
            self.metrics.load_seconds.set(self.model.load_seconds)
            self.metrics.artifact_bytes.set(self.model.artifact_bytes)
            self.metrics.set_model_info(
                framework=info.framework,
                device=info.device,
                quantization=info.quantization,
                pruning_method=info.pruning_method,
                sparsity=info.sparsity,
                parameters=info.parameters,
                size_bytes=info.size_bytes,
            )
        log.info(
            "Loaded model %s in %.2f s",
            self.model_name,
            self.model.load_seconds,
            extra={
                "model": self.model_name,
                "variant": self.variant,
                "framework": info.framework,
                "device": info.device,
                "quantization": info.quantization,
                "sparsity": info.sparsity,
                "size_bytes": info.size_bytes,
            },
        )

    def start_serving(self) -> None:
        """Start the batcher on the running loop and flip to ready (after a good load)."""
        backend = self.model.backend
        if backend is None:
            return
        args = dict(self._batcher_args)
        hint = backend.max_batch_size_hint
        if hint is not None:
            args["max_batch_size"] = max(1, min(int(args["max_batch_size"]), hint))
        metrics = self.metrics
        self.batcher = Batcher(
            backend.predict,
            on_batch=metrics.observe_batch if metrics is not None else None,
            on_queue_depth=metrics.set_queue_depth if metrics is not None else None,
            **args,  # type: ignore[arg-type]
        )
        self.batcher.start()
        self.model.state = "ready"
        if metrics is not None:
            metrics.ready.set(1)

    async def stop(self) -> None:
        self.model.state = "stopping"
        if self.metrics is not None:
            self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.model.backend is not None:
            self.model.backend.close()

    # health and metadata -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model.state == "ready"

    @property
    def task(self) -> str | None:
        """The loaded model's task (transformers), else None (raw tensors)."""
        info = self.model.info
        task = info.extra.get("task") if info is not None else None
        return str(task) if task else None

    def tokens(self, text: str) -> list[Any]:
        """`text` as the model's token ids, or its words when the model has no tokenizer."""
        backend = self.model.backend
        ids = backend.token_ids(text) if backend is not None else None
        return ids if ids is not None else text.split()

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.model_name:
            raise ModelNotFound(
                f"model {name!r} is not served here (this server serves {self.model_name!r})"
            )
        if version is not None and version != self.model_version:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} "
                f"(served version: {self.model_version!r})"
            )

    def require_ready(self) -> Batcher:
        if self.model.state == "ready" and self.batcher is not None:
            return self.batcher
        if self.model.state == "failed":
            raise ModelNotReady(f"model {self.model_name!r} failed to load: {self.model.reason}")
        raise ModelNotReady(f"model {self.model_name!r} is {self.model.state}")

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self.check_model(name, version)
        info = self.model.info
        params: dict[str, Any] = {
            "variant": self.variant,
            "state": self.model.state,
            "framework": info.framework if info else self.framework,
        }
        if self.model.reason:
            params["reason"] = self.model.reason
        if info is not None:
            params.update(
                {
                    "device": info.device,
                    "quantization": info.quantization,
                    "pruning_method": info.pruning_method,
                    "sparsity": info.sparsity,
                    "parameters": info.parameters,
                    "size_bytes": info.size_bytes,
                    "artifact_bytes": self.model.artifact_bytes,
                    "load_seconds": round(self.model.load_seconds, 3),
                    "supports_generate": bool(
                        self.model.backend and self.model.backend.supports_generate()
                    ),
                }
            )
            for key, value in info.extra.items():
                params.setdefault(key, value)
        if self.startup is not None:
            params["startup"] = self.startup.to_json()
        framework = str(params["framework"])
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": PLATFORMS.get(framework, framework),
            "inputs": [_spec(s) for s in self.model.inputs],
            "outputs": [_spec(s) for s in self.model.outputs],
            "parameters": params,
        }

    def model_ready(self, name: str, version: str | None) -> bool:
        self.check_model(name, version)
        return self.ready

    # inference ---------------------------------------------------------------------------
    def admit(self, name: str, version: str | None) -> Batcher:
        """The batcher, if `name`/`version` is the served model and it is ready (else the
        error): front ends call this before decoding, so a wrong model is a 404 first."""
        if name == self.model_name and version is None and self.model.state == "ready":
            batcher = self.batcher  # the usual case in one test; else the checks say why
            if batcher is not None:
                return batcher
        self.check_model(name, version)
        return self.require_ready()

    async def infer(
        self, name: str, version: str | None, request: InferRequest
    ) -> Mapping[str, np.ndarray]:
        """Validate a decoded request, run it (batched) and return the outputs it asks for."""
        return await self.run(self.admit(name, version), request)

    async def run(self, batcher: Batcher, request: InferRequest) -> Mapping[str, np.ndarray]:
        """`infer` after `admit`: validate once, run (batched), check the outputs."""
        outputs = self.run_now(batcher, request)
        if outputs is None:
            outputs = await self.run_queued(batcher, request)
        return outputs

    def run_now(self, batcher: Batcher, request: InferRequest) -> Mapping[str, np.ndarray] | None:
        """The first half of `run`, without a coroutine: validate, and answer at once when
        the batcher runs the model inline (`Batcher.run_now`); None: await `run_queued`."""
        rows = self.signature.validate(request)
        outputs = batcher.run_now(request.inputs, rows)
        return None if outputs is None else self._answered(request, outputs)

    async def run_queued(self, batcher: Batcher, request: InferRequest) -> Mapping[str, np.ndarray]:
        """The second half of `run`: a validated request through the batcher's queue."""
        return self._answered(request, await batcher.enqueue(request.inputs))

    def _answered(self, request: InferRequest, outputs: Mapping[str, np.ndarray]
                  ) -> Mapping[str, np.ndarray]:
        """The model's answer: the requested outputs checked, then offered to the mirror."""
        if request.outputs is not None:
            self.signature.check_outputs(outputs, request)
        mirror = self.mirror
        if mirror is not None:
            mirror.offer_infer(request, outputs)
        return outputs

    # generation --------------------------------------------------------------------------
    def _generation(
        self, name: str, version: str | None, request: GenerationRequest
    ) -> tuple[Backend, Generation]:
        """Check a decoded generation request and render its prompt (before any response
        starts): the model (404), its parameters (400, model_server.generation.sampling),
        readiness (503), that the model generates (400); chat messages through the model's
        chat template."""
        self.check_model(name, version)
        params = sampling(request)
        self.require_ready()
        backend = self.model.backend
        assert backend is not None
        if not backend.supports_generate():
            raise InvalidInput(
                f"model {name!r} does not support generate (framework {self.framework}); use /infer"
            )
        messages = request.messages
        prompt = request.prompt if messages is None else backend.chat_prompt(messages)
        return backend, Generation(prompt, params, backend.count_tokens)

    async def generate(
        self, name: str, version: str | None, request: GenerationRequest
    ) -> Generation:
        """The whole continuation of the request's prompt: batched with concurrent requests
        when the backend batches generation, else one exclusive turn on the model."""
        backend, generation = self._generation(name, version, request)
        batched = backend.stream_generation(generation.prompt, generation.params)
        if batched is not None:
            async for piece in _closing(batched):
                generation.pieces.append(piece)
        else:
            assert self.batcher is not None
            text = await self.batcher.run_exclusive(
                _join_generate, backend, generation.prompt, generation.params
            )
            generation.pieces.append(text)
        self._generated(generation, request)
        return generation

    def stream(
        self, name: str, version: str | None, request: GenerationRequest
    ) -> tuple[Generation, AsyncIterator[str]]:
        """Check now (errors raise before a response starts); then the generation (its
        usage once the pieces ended) and its text pieces. Closing the pieces early (the
        client went away) stops the generation."""
        backend, generation = self._generation(name, version, request)
        batched = backend.stream_generation(generation.prompt, generation.params)
        source = batched if batched is not None else self._pieces(backend, generation)
        return generation, self._streamed(source, generation, request)

    async def _streamed(
        self, source: AsyncIterator[str], generation: Generation, request: GenerationRequest
    ) -> AsyncIterator[str]:
        """Pass the pieces on and keep them; a stream that ended normally is answered."""
        try:
            async for piece in source:
                generation.pieces.append(piece)
                yield piece
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()  # ended or abandoned: the generation stops at once
        self._generated(generation, request)

    def _generated(self, generation: Generation, request: GenerationRequest) -> None:
        """A generation answered in full: offered to the mirror (which keeps greedy ones)."""
        mirror = self.mirror
        if mirror is not None:
            mirror.offer_generate(generation, request)

    async def _pieces(self, backend: Backend, generation: Generation) -> AsyncIterator[str]:
        """`Backend.generate` driven on the model thread, one `next` per piece."""
        batcher = self.batcher
        assert batcher is not None
        sentinel = object()
        pieces: Iterator[str] = backend.generate(generation.prompt, generation.params)
        try:
            while True:
                piece = await batcher.run_exclusive(next, pieces, sentinel)
                if piece is sentinel:
                    return
                yield piece
        finally:
            # ended or abandoned (the client went away): let the backend stop generating,
            # on the model thread, after any `next` still running there
            close = getattr(pieces, "close", None)
            if close is not None:
                batcher.run_later(close)


async def _closing(pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield from a batched stream; ended or abandoned, its row stops generating."""
    try:
        async for piece in pieces:
            yield piece
    finally:
        close = getattr(pieces, "aclose", None)
        if close is not None:
            await close()


def artifact_bytes(model_dir: Any) -> int:
    """Bytes of the model artifact on disk (every file under `model_dir`, or the file)."""
    try:
        path = Path(model_dir)
        if path.is_file():
            return path.stat().st_size
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except (OSError, TypeError):
        return 0


def _join_generate(backend: Backend, prompt: str, params: SamplingParams) -> str:
    return "".join(backend.generate(prompt, params))


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
