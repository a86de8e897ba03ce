"""TorchScript backend: a `torch.jit.save`d module with a declared or default signature.

The model directory holds one TorchScript archive (`model.pt`, or the single `*.pt`,
`*.pth`, `*.torchscript` file) and optionally `signature.json`:

    {"inputs":  [{"name": "input",  "datatype": "FP32", "shape": [-1, 8]}],
     "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]}

Inputs are passed positionally in the listed order; the module may return a tensor, a
tuple/list of tensors (matched to outputs by position) or a dict (matched by name).
Without a signature file the default is one input `INPUT__0` FP32 [-1, -1] and one
output `OUTPUT__0` FP32 [-1, -1] (Triton's naming), any rank accepted.

`torch.jit.load` reads TorchScript code and tensors, never Python pickles of arbitrary
objects. Optimizations: float16/bfloat16 (module and inputs cast, outputs cast back to
the declared datatype) and unstructured magnitude pruning of the weight matrices.
dynamic-int8 and structured pruning need the Python module (quantize/prune before
scripting) and are refused with a message.

Load speed: a TorchScript archive cannot be memory-mapped (`torch.jit.load` has no `mmap`;
only `torch.load` of a `torch.save`d state dict does), so its tensors are read into memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_server.backends._common import (
    OIP_TO_NUMPY,
    LoadedSignature,
    invalid,
    read_signature,
)
from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.errors import ModelLoadError

DEFAULT_INPUTS = [TensorSpec("INPUT__0", "FP32", (-1, -1))]
DEFAULT_OUTPUTS = [TensorSpec("OUTPUT__0", "FP32", (-1, -1))]
ARCHIVE_SUFFIXES = (".pt", ".pth", ".torchscript")


def find_archive(model_dir: Path) -> Path:
    """The TorchScript file in `model_dir` (model.pt first); ModelLoadError otherwise."""
    if model_dir.is_file() and model_dir.suffix in ARCHIVE_SUFFIXES:
        return model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    preferred = model_dir / "model.pt"
    if preferred.is_file():
        return preferred
    found = sorted(p for p in model_dir.iterdir() if p.suffix in ARCHIVE_SUFFIXES and p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ModelLoadError(
            f"{model_dir} has {what} TorchScript files (*.pt, *.pth, *.torchscript); "
            "expected model.pt or exactly one"
        )
    return found[0]


class TorchScriptBackend(LoadedSignature, Backend):
    """A scripted/traced torch module."""

    framework = "torchscript"

    def __init__(self) -> None:
        self.module: Any = None
        self.device = "cpu"
        self.options = LoadOptions()
        self._inputs: list[TensorSpec] = list(DEFAULT_INPUTS)
        self._outputs: list[TensorSpec] = list(DEFAULT_OUTPUTS)
        self._dtype: Any = None
        self._info: BackendInfo | None = None
        self._archive: Path | None = None

    def load(self, model_dir: Path, options: LoadOptions) -> None:
        import torch

        from model_server.optimize import prune, quantize
        from model_server.optimize.device import configure_torch_threads, select_torch_device
        from model_server.optimize.stats import torch_param_stats

        model_dir = Path(model_dir)
        archive = find_archive(model_dir)
        signature = read_signature(
            (model_dir if model_dir.is_dir() else archive.parent) / "signature.json"
        )
        if signature is not None:
            self._inputs, self._outputs = signature
        if options.quantization == "dynamic-int8":
            raise ModelLoadError(
                "dynamic-int8 is not available for TorchScript: quantize the Python module "
                "with torch.ao.quantization.quantize_dynamic before scripting it"
            )
        if options.pruning_method == "structured":
            raise ModelLoadError(
                "structured pruning is not available for TorchScript (layer shapes are "
                "compiled in); prune before scripting or use the transformers backend"
            )
        configure_torch_threads(options.torch_threads)
        self.device = select_torch_device(options.device)
        try:
            with warnings.catch_warnings():  # "torch.jit is deprecated" on every load
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(archive), map_location=self.device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load TorchScript archive {archive.name}: {exc}") from exc
        module.eval()
        if options.pruning_method == "unstructured":
            prune.prune_script_module_unstructured(module, options.pruning_amount)
        elif options.pruning_method != "none":
            raise ModelLoadError(f"unknown pruning method {options.pruning_method!r}")
        if options.quantization in ("float16", "bfloat16"):
            self._dtype = quantize.torch_dtype(options.quantization)
            module = module.to(self._dtype)
        elif options.quantization != "none":
            raise ModelLoadError(f"unknown quantization {options.quantization!r}")
        self.module = module
        self.options = options
        self._archive = archive
        params, size = torch_param_stats(module)
        self._info = BackendInfo(
            framework=self.framework,
            device=self.device,
            quantization=options.quantization,
            pruning_method=options.pruning_method,
            sparsity=round(_script_sparsity(module), 6),
            parameters=params,
            size_bytes=size,
            extra={"archive": archive.name, "signature": signature is not None},
        )

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self.module is None:
            raise ModelLoadError("model not loaded")
        args = []
        for spec in self._inputs:  # validated by the server (model_server.validation)
            arr = inputs[spec.name]
            if spec.datatype == "BYTES":
                raise invalid(
                    f"input {spec.name!r}: BYTES tensors are not supported by TorchScript"
                )
            tensor = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
            if self._dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self._dtype)
            args.append(tensor)
        with torch.inference_mode():
            try:
                result = self.module(*args)
            except RuntimeError as exc:
                # shape/dtype mismatches inside the graph are the client's input
                raise invalid(f"the model rejected the input: {_first_line(exc)}") from exc
        return self._outputs_from(result)

    def _outputs_from(self, result: Any) -> dict[str, np.ndarray]:
        import torch

        if isinstance(result, torch.Tensor):
            values = [result]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        elif isinstance(result, dict):
            try:
                values = [result[spec.name] for spec in self._outputs]
            except KeyError as exc:
                raise ModelLoadError(f"the module returned no output {exc}") from exc
        else:
            raise ModelLoadError(f"the module returned {type(result).__name__}, not tensors")
        if len(values) < len(self._outputs):
            raise ModelLoadError(
                f"the module returned {len(values)} outputs, the signature declares "
                f"{len(self._outputs)}"
            )
        out: dict[str, np.ndarray] = {}
        for spec, value in zip(self._outputs, values, strict=False):
            array = (
                value.detach().float().cpu().numpy()
                if value.dtype
                in (
                    torch.float16,
                    torch.bfloat16,
                )
                else value.detach().cpu().numpy()
            )
            out[spec.name] = array.astype(OIP_TO_NUMPY[spec.datatype], copy=False)
        return out

    def export(self, out_dir: Path) -> list[str]:
        """Save the optimized module (and the signature) as a TorchScript archive."""
        import json

        import torch

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(self.module, str(out_dir / "model.pt"))
        sig = {
            key: [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
            for key, specs in (("inputs", self._inputs), ("outputs", self._outputs))
        }
        (out_dir / "signature.json").write_text(json.dumps(sig, indent=2) + "\n")
        return []


def _script_sparsity(module: Any) -> float:
    zeros = 0
    total = 0
    for param in module.parameters():
        if param.dim() >= 2 and param.dtype.is_floating_point:
            zeros += int((param == 0).sum())
            total += param.numel()
    return zeros / total if total else 0.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # TorchScript errors put the useful line last
    return text[-1] if text else type(exc).__name__
