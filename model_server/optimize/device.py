"""Run-time device selection: CUDA when present (or asked for), else CPU.

Backends call these once at load; nothing here runs at import.
"""

from __future__ import annotations

from model_server.errors import ModelLoadError


def select_torch_device(requested: str) -> str:
    """Map the `device` option to a torch device string ("cuda" or "cpu").

    "auto" picks CUDA when torch sees one; "cuda" without a device is a load error with a
    clear message instead of a crash on the first request.
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ModelLoadError(f"device must be auto, cpu or cuda, not {requested!r}")
    has_cuda = bool(torch.cuda.is_available())
    if requested == "cuda" and not has_cuda:
        raise ModelLoadError("device 'cuda' requested but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def select_tf_device(requested: str) -> str:
    """Map the `device` option to a TensorFlow device name ("/GPU:0" or "/CPU:0")."""
    import tensorflow as tf

    if requested not in ("auto", "cpu", "cuda"):
        raise ModelLoadError(f"device must be auto, cpu or cuda, not {requested!r}")
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "cuda" and not has_gpu:
        raise ModelLoadError("device 'cuda' requested but TensorFlow sees no GPU")
    if requested == "cpu" or not has_gpu:
        return "/CPU:0"
    return "/GPU:0"


def configure_torch_threads(threads: int | None) -> None:
    """Set torch intra-op threads when given (None keeps torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ModelLoadError(f"torch_threads must be >= 1, not {threads}")
    import torch

    torch.set_num_threads(threads)
