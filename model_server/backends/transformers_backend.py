"""transformers backend on torch: text classification, text generation, image classification.

Follows the transformers pipelines' task semantics (tokenize / process, run, softmax and
label) but drives the model directly, so batches stay tensors and logits reach the client.

Tensors per task (the first dimension is the batch):

- text-classification: in `text` BYTES [-1];
  out `label` BYTES [-1], `score` FP32 [-1], `logits` FP32 [-1, labels].
- text-generation: in `text` BYTES [-1]; out `text_output` BYTES [-1] (the greedy
  continuation, default length); `generate()` streams one prompt and `stream_generation()`
  batches concurrent prompts into one `generate` (generation_batch), both with the
  `SamplingParams` the dataplane checked (model_server.generation).
- image-classification: in `image` BYTES [-1] (encoded PNG/JPEG; the announced input).
  `predict()` alternatively takes `pixel_values` FP32 [-1, 3, H, W] (already processed)
  or UINT8 [-1, H, W, 3] (raw pixels, processed here) instead of `image`; out `label`,
  `score`, `logits` as for text classification.

Safety: `trust_remote_code` only when the option says so; weights from safetensors when
the directory has them, otherwise transformers' `torch.load(weights_only=True)`.
Load speed: safetensors files are memory-mapped, not read into memory first (`mmap_kwargs`:
transformers maps them on the CPU unless told not to, and is told to map where it has the
option); the weights are then copied from the page cache into the model's parameters.
`.bin` checkpoints in the zip format are memory-mapped by transformers' `torch.load` too.
Optimizations run in this order at load, on the CPU the weights were loaded on: structured/
unstructured pruning, then dynamic-int8 (for the CPU: torch dynamic quantization; for CUDA:
torchao int8 weight-only) or float16/bfloat16; then the optimized model moves to the device,
so a GPU never holds more than the variant serves with (the operator's GPU-fit estimate
counts on it: msv_operator.gpufit). A model directory holding a static-int8 calibration
(optimize.static_int8, written by `model-server optimize build`) is served static int8 on the
CPU instead, with no other load-time optimization.
"""

from __future__ import annotations

import inspect
import io
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_server.backends._common import (
    LoadedInfo,
    as_blobs,
    as_strings,
    bytes_array,
    check_tensor,
    invalid,
)
from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.backends.generation_batch import GenerationBatcher, Stream
from model_server.errors import ModelLoadError
from model_server.generation import SamplingParams
from msv_contract import capabilities as caps

TASKS = caps.FRAMEWORKS["transformers"].tasks
GENERATION_MAX_BATCH = 16
"""Concurrent generation streams of the same settings batched into one `generate` call."""


def mmap_kwargs(from_pretrained: Any) -> dict[str, Any]:
    """Arguments of ``from_pretrained`` that keep safetensors memory-mapped: transformers maps
    them by default but turns mapping off on filesystems it distrusts; ``disable_mmap=False``
    where this transformers has the option (older ones always map and do not take it)."""
    try:
        params = inspect.signature(from_pretrained).parameters
    except (TypeError, ValueError):
        return {}
    return {"disable_mmap": False} if "disable_mmap" in params else {}


def infer_task(config: Any) -> str | None:
    """Guess the task from config.architectures (None when it is not one we serve)."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("LMHeadModel", "ForCausalLM")):
            return "text-generation"
        if arch.endswith("ForImageClassification"):
            return "image-classification"
    return None


class TransformersBackend(LoadedInfo, Backend):
    """One transformers model for one task, optimized at load."""

    framework = "transformers"

    def __init__(self) -> None:
        self.model: Any = None
        self.tokenizer: Any = None
        self.processor: Any = None
        self.task: str = ""
        self.device: str = "cpu"
        self.options = LoadOptions()
        self.model_dir: Path | None = None
        self._info: BackendInfo | None = None
        self._labels: list[str] = []
        self._dtype: Any = None
        self._image_size: tuple[int, int] | None = None
        self._structured_removed = 0
        self._static_int8 = False
        self._generation: GenerationBatcher | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        from model_server.optimize.device import configure_torch_threads, select_torch_device

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelLoadError(f"model directory {model_dir} does not exist")
        if not (model_dir / "config.json").is_file():
            raise ModelLoadError(
                f"{model_dir} has no config.json: not a transformers model directory "
                "(save it with save_pretrained)"
            )
        configure_torch_threads(options.torch_threads)
        self.device = select_torch_device(options.device)
        self.options = options
        self.model_dir = model_dir
        model, config = self._load_model(model_dir, options)
        model = self._apply_optimizations(model, options)  # on the CPU
        model = model.to(self.device)
        self.model = model.eval()
        self._labels = self._label_list(config)
        self._info = self._measure()

    def _load_model(self, model_dir: Path, options: LoadOptions) -> tuple[Any, Any]:
        import torch
        import transformers
        from transformers import AutoConfig

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(
                model_dir, trust_remote_code=options.trust_remote_code, local_files_only=True
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
        task = options.task or infer_task(config)
        if task not in TASKS:
            raise ModelLoadError(
                f"task {task!r} is not served by the transformers backend; "
                f"expected one of {', '.join(TASKS)}"
            )
        self.task = task
        has_safetensors = any(model_dir.glob("*.safetensors"))
        has_bin = any(model_dir.glob("*.bin"))
        if not has_safetensors and not has_bin:
            raise ModelLoadError(f"{model_dir} has no weights (*.safetensors or *.bin)")
        auto = {
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForCausalLM,
            "image-classification": transformers.AutoModelForImageClassification,
        }[task]
        try:
            model = auto.from_pretrained(
                model_dir,
                config=config,
                trust_remote_code=options.trust_remote_code,
                use_safetensors=True if has_safetensors else None,
                local_files_only=True,
                dtype=torch.float32,
                **mmap_kwargs(transformers.PreTrainedModel.from_pretrained),
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load the {task} model from {model_dir}: {exc}") from exc
        try:
            if task == "image-classification":
                from transformers import AutoImageProcessor

                self.processor = AutoImageProcessor.from_pretrained(
                    model_dir, trust_remote_code=options.trust_remote_code, local_files_only=True
                )
                self._image_size = _processor_size(self.processor)
            else:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(
                    model_dir, trust_remote_code=options.trust_remote_code, local_files_only=True
                )
                if task == "text-generation":
                    self.tokenizer.padding_side = "left"
                    if self.tokenizer.pad_token is None:
                        self.tokenizer.pad_token = self.tokenizer.eos_token
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the tokenizer/processor from {model_dir}: {exc}"
            ) from exc
        return model, config

    def _apply_optimizations(self, model: Any, options: LoadOptions) -> Any:
        from model_server.optimize import prune, quantize, static_int8

        self._dtype = None
        self._static_int8 = False
        calibration = static_int8.read_calibration(self.model_dir) if self.model_dir else None
        if calibration is not None:
            if options.quantization != "none" or options.pruning_method != "none":
                raise ModelLoadError(
                    f"this model is calibrated static int8 ({static_int8.CALIBRATION_FILE}): "
                    "serve it with quantization none and pruning none"
                )
            if self.device != "cpu":
                raise ModelLoadError(
                    f"static int8 ({static_int8.CALIBRATION_FILE}) runs on the CPU, "
                    f"not {self.device}"
                )
            self._static_int8 = True
            return static_int8.apply_calibration(model, calibration)
        if options.pruning_method == "unstructured":
            prune.prune_unstructured(model, options.pruning_amount)
        elif options.pruning_method == "structured":
            self._structured_removed = prune.prune_structured_ffn(model, options.pruning_amount)
        elif options.pruning_method != "none":
            raise ModelLoadError(f"unknown pruning method {options.pruning_method!r}")
        if options.quantization == "dynamic-int8":
            model = quantize.quantize_int8(model, self.device)
        elif options.quantization in ("float16", "bfloat16"):
            quantize.to_half(model, options.quantization)
            self._dtype = quantize.torch_dtype(options.quantization)
        elif options.quantization != "none":
            raise ModelLoadError(f"unknown quantization {options.quantization!r}")
        return model  # quantize_dynamic returns a new module

    def _label_list(self, config: Any) -> list[str]:
        id2label = getattr(config, "id2label", None) or {}
        n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]

    def _measure(self) -> BackendInfo:
        from model_server.optimize.quantize import int8_method as quantize_int8_method
        from model_server.optimize.stats import torch_param_stats, torch_sparsity

        params, size = torch_param_stats(self.model)
        extra: dict[str, Any] = {"task": self.task}
        if self.options.pruning_method == "structured":
            extra["ffn_neurons_removed"] = self._structured_removed
        if self.options.quantization == "dynamic-int8":
            extra["int8"] = quantize_int8_method(self.device)
        if self._static_int8:
            extra["int8"] = "static"
        if self.options.pruning_method == "unstructured":
            extra["note"] = "unstructured sparsity: zeros are stored densely, no speedup"
        return BackendInfo(
            framework=self.framework,
            device=self.device,
            quantization=self.options.quantization,
            pruning_method=self.options.pruning_method,
            sparsity=round(torch_sparsity(self.model), 6),
            parameters=params,
            size_bytes=size,
            extra=extra,
        )

    # -- metadata ----------------------------------------------------------------------------

    def inputs(self) -> list[TensorSpec]:
        if self.task == "image-classification":
            # Announced: encoded images. `pixel_values` is accepted by predict() too (direct
            # callers, benchmarks) but not announced, since OIP v2 inputs are all required.
            return [TensorSpec("image", "BYTES", (-1,))]
        return [TensorSpec("text", "BYTES", (-1,))]

    def _pixel_spec(self) -> TensorSpec:
        h, w = self._image_size or (-1, -1)
        return TensorSpec("pixel_values", "FP32", (-1, 3, h, w))

    def outputs(self) -> list[TensorSpec]:
        if self.task == "text-generation":
            return [TensorSpec("text_output", "BYTES", (-1,))]
        return [
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("logits", "FP32", (-1, len(self._labels))),
        ]

    # -- inference ---------------------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.model is None:
            raise ModelLoadError("model not loaded")
        # inputs were validated by the server (model_server.validation); below are only the
        # task's own rules (text must decode, images must be images)
        if self.task == "text-classification":
            texts = as_strings(_require_one(inputs, "text"), "text")
            return self._classify(self._tokenize(texts))
        if self.task == "image-classification":
            return self._classify({"pixel_values": self._pixels(inputs)})
        texts = as_strings(_require_one(inputs, "text"), "text")
        return {"text_output": bytes_array(self._generate_batch(texts, SamplingParams()))}

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def _classify(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.model(**features).logits.float()
            probs = torch.softmax(logits, dim=-1)
            score, idx = probs.max(dim=-1)
        labels = [self._labels[i] if i < len(self._labels) else f"LABEL_{i}" for i in idx.tolist()]
        return {
            "label": bytes_array(labels),
            "score": score.cpu().numpy().astype(np.float32),
            "logits": logits.cpu().numpy().astype(np.float32),
        }

    def _pixels(self, inputs: Mapping[str, np.ndarray]) -> Any:
        import torch

        has_image = "image" in inputs
        has_pixels = "pixel_values" in inputs
        if has_image == has_pixels:
            raise invalid("send exactly one of the inputs 'image' (BYTES) or 'pixel_values'")
        if has_image:
            from PIL import Image, UnidentifiedImageError

            images = []
            for i, blob in enumerate(as_blobs(inputs["image"], "image")):
                try:
                    images.append(Image.open(io.BytesIO(blob)).convert("RGB"))
                except (UnidentifiedImageError, OSError, ValueError):
                    raise invalid(f"input 'image'[{i}] is not a decodable PNG/JPEG image") from None
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            arr = np.asarray(inputs["pixel_values"])
            if arr.dtype == np.uint8:
                if arr.ndim != 4 or arr.shape[-1] != 3:
                    raise invalid(
                        "UINT8 'pixel_values' must be raw images [batch, H, W, 3], "
                        f"got {list(arr.shape)}"
                    )
                pixels = self.processor(images=list(arr), return_tensors="pt")["pixel_values"]
            else:
                arr = check_tensor(arr, self._pixel_spec(), accept=("FP64", "FP16"))
                pixels = torch.from_numpy(np.ascontiguousarray(arr))
        dtype = self._dtype or torch.float32
        return pixels.to(self.device, dtype=dtype)

    # -- generation --------------------------------------------------------------------------

    def supports_generate(self) -> bool:
        return self.task == "text-generation"

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The tokenizer's chat template when the model ships one, else the plain transcript."""
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    list(messages), tokenize=False, add_generation_prompt=True
                )
            )
        return super().chat_prompt(messages)

    def count_tokens(self, text: str) -> int | None:
        ids = self.token_ids(text)
        return None if ids is None else len(ids)

    def token_ids(self, text: str) -> list[int] | None:
        if self.tokenizer is None:
            return None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _gen_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        """`generate` keyword arguments of checked settings (model_server.generation)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": params.do_sample,
        }
        if params.do_sample:
            kwargs["temperature"] = params.temperature
            if params.top_p is not None:
                kwargs["top_p"] = params.top_p
            if params.top_k is not None:
                kwargs["top_k"] = params.top_k
        return kwargs

    @staticmethod
    def _apply_seed(params: SamplingParams) -> None:
        if params.seed is not None:
            import torch

            torch.manual_seed(params.seed)

    def _generate_batch(self, texts: list[str], params: SamplingParams) -> list[str]:
        import torch

        kwargs = self._gen_kwargs(params)
        self._apply_seed(params)
        enc = self._tokenize(texts)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Stream the continuation of `prompt` piece by piece (TextIteratorStreamer)."""
        if not self.supports_generate():
            raise invalid(f"model task {self.task!r} does not support generate")
        import torch
        from transformers import TextIteratorStreamer

        kwargs = self._gen_kwargs(params)
        self._apply_seed(params)
        enc = self._tokenize([prompt])
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60.0
        )
        errors: list[BaseException] = []
        stop = threading.Event()  # set when the consumer closes this generator early

        def run() -> None:
            from transformers import StoppingCriteria, StoppingCriteriaList

            class Stopped(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> bool:
                    return stop.is_set()

            try:
                with torch.inference_mode():
                    self.model.generate(
                        **enc,
                        **kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Stopped()]),
                    )
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()  # a client that went away frees the model within one token
        thread.join()
        if errors:
            raise errors[0]

    def stream_generation(self, prompt: str, params: SamplingParams) -> Stream:
        """Queue `prompt` for batched generation; pieces arrive on this loop."""
        if not self.supports_generate():
            raise invalid(f"model task {self.task!r} does not support generate")
        kwargs = self._gen_kwargs(params)
        max_new = int(kwargs.pop("max_new_tokens"))
        if self._generation is None:
            self._generation = GenerationBatcher(self._run_generation_batch,
                                                 max_batch=GENERATION_MAX_BATCH)
        return self._generation.submit(prompt, kwargs, max_new_tokens=max_new, seed=params.seed)

    def _run_generation_batch(self, streams: list[Stream]) -> None:
        """One `generate` call for every stream of a batch (same settings), rows fed apart."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if streams[0].seed is not None:
            torch.manual_seed(streams[0].seed)
        rows = _RowStreamer(self.tokenizer, streams, self._eos_ids())

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.tensor(rows.done, dtype=torch.bool, device=input_ids.device)

        enc = self._tokenize([s.prompt for s in streams])
        with torch.inference_mode():
            self.model.generate(
                **enc,
                **streams[0].kwargs,
                max_new_tokens=max(s.max_new_tokens for s in streams),
                streamer=rows,
                stopping_criteria=StoppingCriteriaList([RowsDone()]),
            )
        rows.end()

    def _eos_ids(self) -> set[int]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def close(self) -> None:
        if self._generation is not None:
            self._generation.close()

    # -- export (offline optimize) -----------------------------------------------------------

    def export(self, out_dir: Path) -> list[str]:
        """Write a loadable artifact of the optimized model; returns notes for the report.

        Pruned and half-precision models are saved with save_pretrained (safetensors). The
        dynamic-int8 packed weights have no safetensors form: the (pruned) float weights are
        written and int8 is re-applied at load with MODEL_SERVER_QUANTIZATION=dynamic-int8,
        which takes well under a second per 100M parameters.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        model = self.model
        if self.options.quantization == "dynamic-int8":
            model = self._float_model_for_export()
            notes.append(
                "dynamic-int8 is applied at load: serve with MODEL_SERVER_QUANTIZATION=dynamic-int8"
            )
        model.save_pretrained(out_dir, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)
        if self.processor is not None:
            self.processor.save_pretrained(out_dir)
        return notes

    def _float_model_for_export(self) -> Any:
        assert self.model_dir is not None
        reload = TransformersBackend()
        reload.load(
            self.model_dir,
            LoadOptions(
                task=self.task,
                device="cpu",
                pruning_method=self.options.pruning_method,
                pruning_amount=self.options.pruning_amount,
                trust_remote_code=self.options.trust_remote_code,
            ),
        )
        return reload.model


class _RowStreamer:
    """A `generate` streamer for a batch: turns each step's tokens into text per row.

    Text is released up to the last space (as transformers' TextStreamer does, so a word
    split over tokens is never sent half-decoded), the rest when the row ends: at an EOS
    token, at the row's own `max_new_tokens`, or when its client went away.
    """

    def __init__(self, tokenizer: Any, streams: list[Stream], eos: set[int]) -> None:
        self.tokenizer = tokenizer
        self.streams = streams
        self.eos = eos
        self.tokens: list[list[int]] = [[] for _ in streams]
        self.sent = [0] * len(streams)
        self.done = [False] * len(streams)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate hands over the prompt first
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if self.done[i]:
                continue
            stream = self.streams[i]
            if stream.cancelled or token in self.eos:
                self._end_row(i)
                continue
            self.tokens[i].append(int(token))
            stream.tokens += 1
            if len(self.tokens[i]) >= stream.max_new_tokens:
                self._end_row(i)
            else:
                self._release(i, final=False)

    def end(self) -> None:
        for i in range(len(self.streams)):
            if not self.done[i]:
                self._end_row(i)

    def _release(self, i: int, final: bool) -> None:
        text = str(self.tokenizer.decode(self.tokens[i], skip_special_tokens=True))
        upto = len(text) if final or text.endswith("\n") else text.rfind(" ") + 1
        if upto > self.sent[i]:
            self.streams[i].push(text[self.sent[i]:upto])
            self.sent[i] = upto

    def _end_row(self, i: int) -> None:
        self.done[i] = True
        if not self.streams[i].cancelled:
            self._release(i, final=True)
        self.streams[i].finish()


def _require_one(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in inputs:
        got = ", ".join(sorted(inputs)) or "none"
        raise invalid(f"missing input {name!r} (got: {got})")
    return inputs[name]


def _processor_size(processor: Any) -> tuple[int, int] | None:
    size = getattr(processor, "size", None)
    if isinstance(size, Mapping) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    height = getattr(size, "height", None)
    width = getattr(size, "width", None)
    if height and width:
        return int(height), int(width)
    return None
