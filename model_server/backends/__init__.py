"""Backend registry: maps a framework name to its backend class, importing it lazily.

The frameworks, their backend classes and the pip extra that installs each come from the
capability table (`msv_contract.capabilities`). Only the module of the framework a model
needs is imported, so a TensorFlow model never pulls in torch and the other way round.
"""

from __future__ import annotations

import importlib

from model_server.backends.base import Backend
from model_server.errors import ModelLoadError
from msv_contract import capabilities as caps

FRAMEWORKS = caps.FRAMEWORK_NAMES


def create_backend(framework: str) -> Backend:
    """Return an unloaded backend for `framework`; ModelLoadError names the known ones."""
    try:
        record = caps.FRAMEWORKS[framework]
    except KeyError:
        raise ModelLoadError(
            f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}"
        ) from None
    module_name, _, class_name = record.backend.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"framework {framework!r} is not installed in this image ({exc}); "
            f"install modelservice[{record.extra}]"
        ) from exc
    cls: type[Backend] = getattr(module, class_name)
    return cls()
