"""Helpers shared by the framework backends: BYTES decoding, OIP dtype maps (derived from the
one table in model_server.codec) and the metadata accessors of a loaded model.

Framework-free (numpy only). Errors for bad client input are `InvalidInput` (HTTP 400,
decided in model_server.errors); errors in the model directory are `ModelLoadError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_server.backends.base import BackendInfo, TensorSpec
from model_server.codec import DTYPES, datatype_of
from model_server.errors import ModelLoadError

# the one OIP v2 datatype table (model_server.codec), as numpy scalar types
OIP_TO_NUMPY: dict[str, Any] = {name: dt.type for name, dt in DTYPES.items()}


class LoadedInfo:
    """`info()` of a backend that fills `_info` when it loads."""

    _info: BackendInfo | None

    def info(self) -> BackendInfo:
        if self._info is None:
            raise ModelLoadError("model not loaded")
        return self._info


class LoadedSignature(LoadedInfo):
    """`inputs()`, `outputs()` and `info()` of a backend that settles its tensors
    (`_inputs`, `_outputs`) and `_info` when it loads."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)


def invalid(message: str) -> Exception:
    """An InvalidInput (HTTP 400) carrying `message`."""
    from model_server.errors import InvalidInput

    return InvalidInput(message)


def oip_datatype(dtype: Any) -> str:
    """OIP v2 datatype name for a numpy dtype (BYTES for object/str arrays)."""
    dt = np.dtype(dtype)
    name = datatype_of(dt)
    if name is None:
        raise ModelLoadError(f"unsupported tensor dtype {dt}")
    return name


def _bytes_batch(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input of shape [batch] or [batch, 1] as a 1-D object array."""
    arr = np.asarray(array, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise invalid(
            f"input {name!r} must have shape [batch] or [batch, 1], got {list(arr.shape)}"
        )
    return arr


def as_strings(array: np.ndarray, name: str) -> list[str]:
    """A batch of strings from a BYTES input of shape [batch] or [batch, 1]."""
    out: list[str] = []
    for i, item in enumerate(_bytes_batch(array, name)):
        if isinstance(item, (bytes, bytearray)):
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise invalid(f"input {name!r}[{i}] is not valid UTF-8") from None
        elif isinstance(item, str):
            out.append(item)
        else:
            raise invalid(f"input {name!r}[{i}] must be a string, got {type(item).__name__}")
    return out


def as_blobs(array: np.ndarray, name: str) -> list[bytes]:
    """A batch of raw byte strings (e.g. encoded images) from a BYTES input."""
    out: list[bytes] = []
    for i, item in enumerate(_bytes_batch(array, name)):
        if isinstance(item, (bytes, bytearray)):
            out.append(bytes(item))
        elif isinstance(item, str):
            out.append(item.encode("latin-1", errors="strict"))
        else:
            raise invalid(f"input {name!r}[{i}] must be bytes, got {type(item).__name__}")
    return out


def bytes_array(values: list[str]) -> np.ndarray:
    """A 1-D numpy object array of UTF-8 bytes (an OIP BYTES tensor)."""
    arr = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        arr[i] = value.encode("utf-8")
    return arr


def check_tensor(
    array: np.ndarray, spec: TensorSpec, accept: tuple[str, ...] = (), check_shape: bool = True
) -> np.ndarray:
    """Check a numeric input against its spec (datatype and rank/fixed dims); return it.

    `accept` lists extra datatypes that are converted to the spec's datatype;
    `check_shape=False` checks the datatype only (signature-less models).
    """
    arr = np.asarray(array)
    got = oip_datatype(arr.dtype)
    if got != spec.datatype:
        if got in accept:
            arr = arr.astype(OIP_TO_NUMPY[spec.datatype])
        else:
            raise invalid(f"input {spec.name!r} must be {spec.datatype}, got {got}")
    if not check_shape:
        return arr
    if spec.shape and len(spec.shape) != arr.ndim:
        raise invalid(
            f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(arr.shape)}"
        )
    for i, (want, have) in enumerate(zip(spec.shape, arr.shape, strict=False)):
        if want != -1 and want != have:
            raise invalid(
                f"input {spec.name!r} must have shape {list(spec.shape)}, got {list(arr.shape)}"
                f" (dimension {i})"
            )
    return arr


def read_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    """Inputs/outputs from a `signature.json` sidecar, or None when there is none.

    Format: {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}.
    """
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        specs = tuple(
            [
                TensorSpec(
                    name=str(t["name"]),
                    datatype=str(t["datatype"]).upper(),
                    shape=tuple(int(d) for d in t["shape"]),
                )
                for t in doc[key]
            ]
            for key in ("inputs", "outputs")
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid signature file: {exc!r}") from exc
    for spec in (*specs[0], *specs[1]):
        if spec.datatype not in OIP_TO_NUMPY:
            raise ModelLoadError(f"{path.name}: unknown datatype {spec.datatype!r}")
    if not specs[0] or not specs[1]:
        raise ModelLoadError(f"{path.name} must list at least one input and one output")
    return specs[0], specs[1]


def dir_size(path: Path, patterns: tuple[str, ...]) -> int:
    """Total bytes of files matching `patterns` below `path`."""
    return sum(f.stat().st_size for p in patterns for f in path.rglob(p) if f.is_file())
