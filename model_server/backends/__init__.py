"""Backend registry: maps a framework name to its backend class, importing it lazily.

Only the module of the framework a model needs is imported, so a TensorFlow model never
pulls in torch and the other way round.
"""

from __future__ import annotations

import importlib

from model_server.backends.base import Backend
from model_server.errors import ModelLoadError

_BACKENDS: dict[str, str] = {
    "transformers": "model_server.backends.transformers_backend:TransformersBackend",
    "torchscript": "model_server.backends.torchscript_backend:TorchScriptBackend",
    "tensorflow": "model_server.backends.tensorflow_backend:TensorFlowBackend",
}

FRAMEWORKS = tuple(_BACKENDS)


def create_backend(framework: str) -> Backend:
    """Return an unloaded backend for `framework`; ModelLoadError names the known ones."""
    try:
        target = _BACKENDS[framework]
    except KeyError:
        raise ModelLoadError(
            f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"framework {framework!r} is not installed in this image ({exc}); "
            f"install modelservice[{'tensorflow' if framework == 'tensorflow' else 'torch'}]"
        ) from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls()
