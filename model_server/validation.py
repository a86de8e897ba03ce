"""Whether a decoded request fits the served model: the one place inputs are checked.

`Signature` is built once from the backend's input and output specs when the model loads;
`Signature.validate` checks a decoded `InferRequest` (from any front end) against it —
known and complete input names, datatype, rank and fixed dimensions, one batch size
across inputs, a non-empty batch, known output names — and returns the batch size.
Backends receive only requests that passed, so they convert but do not re-check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from model_server.backends.base import TensorSpec
from model_server.codec import DTYPES, InferRequest, datatype_of
from model_server.errors import InternalError, InvalidInput


class InputCheck:
    """What one model input accepts, prepared at load so a request costs a few comparisons."""

    __slots__ = ("datatype", "dtype", "fixed", "rank", "shape", "squeezed")

    def __init__(self, spec: TensorSpec) -> None:
        self.datatype = spec.datatype
        self.dtype = DTYPES.get(spec.datatype)
        self.shape = tuple(spec.shape)
        self.rank = len(self.shape)
        # (axis, size) of the non-batch axes with a fixed size
        self.fixed = tuple((i, d) for i, d in enumerate(self.shape) if i and d >= 0)
        self.squeezed = tuple(d for d in self.shape[1:] if d != 1)

    def check(self, name: str, array: np.ndarray) -> int:
        """The input's batch size (its first dimension), or InvalidInput."""
        dtype = array.dtype
        if dtype is not self.dtype and dtype != self.dtype:
            got = datatype_of(dtype)
            if got != self.datatype:
                raise InvalidInput(f"input {name!r} must be {self.datatype}, got {got}")
        shape = array.shape
        if len(shape) == self.rank:
            for axis, size in self.fixed:
                if shape[axis] != size:
                    raise self._bad_shape(name, shape)
        # [batch] and [batch, 1] are interchangeable for per-row scalars such as strings.
        elif not shape or tuple(d for d in shape[1:] if d != 1) != self.squeezed:
            raise self._bad_shape(name, shape)
        return shape[0]

    def _bad_shape(self, name: str, shape: tuple[int, ...]) -> InvalidInput:
        return InvalidInput(
            f"input {name!r} must have shape {list(self.shape)} (-1 = any), got {list(shape)}"
        )


class Signature:
    """The served model's inputs and outputs, and the checks a request must pass."""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.checks = {s.name: InputCheck(s) for s in inputs}
        self.output_names = frozenset(s.name for s in outputs)

    def validate(self, request: InferRequest) -> int:
        """The request's batch size, or InvalidInput naming the first problem."""
        checks = self.checks
        batch = -1
        for name, array in request.inputs.items():
            check = checks.get(name)
            if check is None:
                known = ", ".join(sorted(checks)) or "none"
                raise InvalidInput(f"unknown input {name!r}; the model takes: {known}")
            rows = check.check(name, array)
            if batch != rows:
                if batch >= 0:
                    raise InvalidInput(
                        f"input {name!r} has batch size {rows} but earlier inputs have {batch}"
                    )
                batch = rows
        if len(request.inputs) != len(checks):  # names are known and unique: some are missing
            missing = [n for n in checks if n not in request.inputs]
            raise InvalidInput(f"missing input(s): {', '.join(missing)}")
        if batch == 0:
            raise InvalidInput(
                "the batch is empty (the first dimension is 0); send at least one row"
            )
        if request.outputs is not None:
            for out_name in request.outputs:
                if out_name not in self.output_names:
                    known = ", ".join(sorted(self.output_names))
                    raise InvalidInput(f"unknown output {out_name!r}; the model produces: {known}")
        return batch

    def check_outputs(self, outputs: Mapping[str, Any], request: InferRequest) -> None:
        """The model produced every output the request asks for (else the model's fault)."""
        for out_name in outputs if request.outputs is None else request.outputs:
            if out_name not in outputs:
                raise InternalError(f"the model did not produce output {out_name!r}")
