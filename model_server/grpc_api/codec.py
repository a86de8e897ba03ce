"""OIP v2 gRPC messages <-> the dataplane's `InferRequest` and output arrays.

Inputs come as typed `contents` or, as `tritonclient.grpc` sends them, as
`raw_input_contents` (little-endian bytes; BYTES elements with a 4-byte length prefix —
the same layout as the REST binary extension, so both use model_server.codec). Outputs
always go back raw, which every OIP client reads and which costs no per-element copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from model_server.codec import (
    InferRequest,
    bad_dims,
    element_count,
    from_binary,
    output_datatype,
    tensor_dtype,
    to_binary,
)
from model_server.errors import InvalidInput
from model_server.grpc_api.schema import message

ModelInferResponse = message("ModelInferResponse")

# the typed contents field of each datatype (FP16 travels only as raw bytes)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer(request: Any) -> InferRequest:
    """A ModelInferRequest as an InferRequest (validation against the model comes later)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    if not request.inputs:
        raise InvalidInput("'inputs' must list at least one tensor")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}] needs a non-empty name")
        shape = list(tensor.shape)
        if not shape or min(shape) < 0:
            raise bad_dims(name)
        datatype = tensor.datatype
        dtype = tensor_dtype(name, datatype)
        count = element_count(name, shape)
        if raw:
            array = from_binary(name, memoryview(raw[index]), datatype, dtype, shape, count)
        else:
            array = _from_contents(name, tensor, datatype, dtype, shape, count)
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        arrays[name] = array
    outputs = [o.name for o in request.outputs] or None
    return InferRequest(arrays, outputs, id=request.id or None)


def _from_contents(
    name: str, tensor: Any, datatype: str, dtype: np.dtype[Any], shape: list[int], count: int
) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements but {field} has {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError:
        info = np.iinfo(dtype)
        raise InvalidInput(
            f"input {name!r}: values outside the {datatype} range [{info.min}, {info.max}]"
        ) from None


def encode_infer(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    variant: str = "",
) -> Any:
    """The ModelInferResponse for the outputs the request asked for (all, by default), with
    ``parameters["variant"]`` naming the variant that answered."""
    response = ModelInferResponse(model_name=model_name, model_version=model_version)
    if variant:
        response.parameters["variant"].string_param = variant
    if request.id:
        response.id = request.id
    for name in outputs if request.outputs is None else request.outputs:
        arr = outputs[name]
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        datatype = output_datatype(arr.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        response.raw_output_contents.append(to_binary(arr, datatype))
    return response
