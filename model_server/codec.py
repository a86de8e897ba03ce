"""The Open Inference Protocol v2 tensor codec: the one datatype table, decode and encode.

Every front end turns its wire format into an `InferRequest` (named numpy arrays plus what
the client asked of the outputs) and an output mapping back into its wire format; this
module does that for the REST JSON body, including the binary tensor data extension that
`tritonclient.http` uses by default, and owns `DTYPES`, the OIP datatype <-> numpy table the
backends and the gRPC codec share. `decode_generate` reads a generate-extension body into a
model_server.generation.GenerationRequest. It decodes only: whether the tensors fit the served
model is decided once, by `model_server.validation`. Bodies are parsed with orjson and
checked by hand, which keeps pydantic off the hot path (the pydantic models in
routers/schemas.py document the API only).
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import orjson

from model_server.errors import InternalError, InvalidInput
from model_server.generation import GenerationRequest

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""OIP v2 datatype -> numpy dtype (BYTES tensors are object arrays of `bytes`)."""
DTYPE_NAMES: dict[np.dtype[Any], str] = {dt: name for name, dt in DTYPES.items()}
# numpy kinds a JSON array may parse to, per datatype (bool → "b", ints → "i"/"u", …)
_KIND_OK: dict[str, str] = {
    name: {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(dt.kind, "")
    for name, dt in DTYPES.items()
}
# `array.array` type codes that hold exactly an OIP datatype's values (same item size). They
# refuse what the datatype cannot hold — None, strings, floats for ints, values out of range —
# so clean JSON numbers convert in one C pass; the rest takes numpy's checked path. (A list of
# JSON booleans, which `array` would read as 0/1, takes the checked path too.)
_ARRAY_CODES: dict[str, str] = {
    name: code
    for name, code in (
        ("UINT8", "B"), ("UINT16", "H"), ("UINT32", "I"), ("UINT64", "Q"),
        ("INT8", "b"), ("INT16", "h"), ("INT32", "i"), ("INT64", "q"),
        ("FP32", "f"), ("FP64", "d"),
    )
    if array(code).itemsize == DTYPES[name].itemsize
}  # fmt: skip
_MISSING = object()
_MAX_ELEMENTS = 1 << 31  # elements one input may declare
HEADER_LENGTH = "inference-header-content-length"
NO_OUTPUTS: frozenset[str] = frozenset()


def datatype_of(dtype: np.dtype[Any]) -> str | None:
    """The OIP datatype of a numpy dtype (BYTES for object/str arrays), or None."""
    name = DTYPE_NAMES.get(dtype)
    if name is not None:
        return name
    if dtype.kind in "OUS":
        return "BYTES"
    if dtype.byteorder in "<>" and dtype.newbyteorder("=") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.newbyteorder("=")]
    return None


def output_datatype(dtype: np.dtype[Any]) -> str:
    """The OIP datatype of a model output, or InternalError (the model's fault)."""
    name = DTYPE_NAMES.get(dtype) or datatype_of(dtype)
    if name is None:
        raise InternalError(f"the model produced an unsupported dtype {dtype}")
    return name


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request, whatever the front end: tensors and output wishes."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    """Output names asked for, in order (None: all the model produces)."""
    binary_outputs: AbstractSet[str] = NO_OUTPUTS
    """Outputs to return in the binary tensor data extension (REST only)."""
    all_binary: bool = False
    """`binary_data_output`: every returned output in binary."""
    id: str | None = None


def _parse_body(body: bytes, header_length: str | bytes | None) -> tuple[Any, memoryview | None]:
    """The JSON of a body, and its binary section when `header_length` is set."""
    if header_length is not None:
        return _split_body(body, header_length)
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        raise not_json(exc) from None


def decode_json(body: bytes, header_length: str | bytes | None = None) -> InferRequest:
    """The REST body (JSON, or JSON + binary section when `header_length` is set)."""
    if header_length is None:
        binary = None
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise not_json(exc) from None
    else:
        request, binary = _split_body(body, header_length)
    if type(request) is not dict:
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = request.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(raw_inputs):
        array, used = decode_tensor(tensor, index, binary, offset)
        name = tensor["name"]
        if name in arrays:
            raise InvalidInput(f"input {name!r} appears twice")
        arrays[name] = array
        offset += used
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"binary data has {len(binary)} bytes but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    if len(request) == 1:  # only "inputs": the usual request
        return InferRequest(arrays)
    return _with_options(request, arrays)


def _with_options(request: dict[str, Any], arrays: dict[str, np.ndarray]) -> InferRequest:
    """The request's id, parameters and requested outputs around its decoded inputs."""
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    req_params = request.get("parameters")
    if req_params is not None and not isinstance(req_params, dict):
        raise InvalidInput("'parameters' must be an object")
    if req_params is None and "outputs" not in request:
        return InferRequest(arrays, id=request_id)
    all_binary = bool(req_params and req_params.get("binary_data_output") is True)
    raw_outputs = request.get("outputs")
    if raw_outputs is None:
        return InferRequest(arrays, all_binary=all_binary, id=request_id)
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list of {'name': ...} objects")
    requested: list[str] = []
    chosen: set[str] = set()
    for item in raw_outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output must be an object with a 'name'")
        out_name = item["name"]
        requested.append(out_name)
        params = item.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"parameters of output {out_name!r} must be an object")
        if (params and params.get("binary_data") is True) or all_binary:
            chosen.add(out_name)
    return InferRequest(arrays, requested, chosen, False, request_id)


def decode_generate(body: bytes, stream: bool = False) -> GenerationRequest:
    """The request of a generate-extension body (`text_input`, `parameters`, and Triton's
    top-level parameters too); the parameter values are checked by the dataplane
    (model_server.generation.sampling), only the body's shape here."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise not_json(exc) from None
    if not isinstance(request, dict):
        raise InvalidInput("the request body must be a JSON object with 'text_input'")
    prompt = request.get("text_input")
    if not isinstance(prompt, str):
        raise InvalidInput("'text_input' must be a string")
    params = request.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    merged = {k: v for k, v in request.items() if k not in ("text_input", "parameters", "id")}
    merged.update(params)
    merged.pop("stream", None)  # the endpoint decides
    return GenerationRequest.from_parameters(prompt, merged, stream=stream)


def encode_json(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
    variant: str = "",
) -> tuple[bytes, dict[str, str] | None]:
    """The REST response body (+ Inference-Header-Content-Length when any output is binary).

    ``parameters.variant`` names the ModelService variant that answered, so a client behind
    the stable Service (or a traffic split) can tell which one served it.
    """
    out_json: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    binary_out = request.binary_outputs
    all_binary = request.all_binary
    for out_name in outputs if request.outputs is None else request.outputs:
        arr = outputs[out_name]
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        datatype = DTYPE_NAMES.get(arr.dtype)  # the table's dtypes are native-endian
        if all_binary or out_name in binary_out:
            datatype = datatype or output_datatype(arr.dtype)
            raw = to_binary(arr, datatype)
            chunks.append(raw)
            entry: dict[str, Any] = {
                "name": out_name,
                "datatype": datatype,
                "shape": arr.shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        elif datatype is None or datatype == "BYTES":
            datatype = datatype or output_datatype(arr.dtype)
            data = to_json_data(arr, datatype)
            entry = {"name": out_name, "datatype": datatype, "shape": arr.shape, "data": data}
        else:  # native numbers: orjson writes the flat array itself
            data = arr.ravel()
            entry = {"name": out_name, "datatype": datatype, "shape": arr.shape, "data": data}
        out_json.append(entry)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": out_json,
    }
    if variant:
        response["parameters"] = _variant_parameters(variant)
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def encode_request(inputs: Mapping[str, np.ndarray], outputs: Iterable[str]) -> tuple[bytes, int]:
    """An infer request body for another OIP v2 server (the mirror's candidate): every
    input and asked-for output in the binary tensor data extension, so tensors travel
    bit-exact. Returns (body, Inference-Header-Content-Length)."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, arr in inputs.items():
        datatype = output_datatype(arr.dtype)
        raw = to_binary(arr, datatype)
        chunks.append(raw)
        entries.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    wanted = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    header = orjson.dumps({"inputs": entries, "outputs": wanted})
    return header + b"".join(chunks), len(header)


def decode_response(body: bytes, header_length: str | bytes | None) -> dict[str, np.ndarray]:
    """The outputs of another OIP v2 server's infer response (JSON or binary), by name.

    Raises InvalidInput when the body is not an infer response."""
    response, binary = _parse_body(body, header_length)
    raw_outputs = response.get("outputs") if isinstance(response, dict) else None
    if not isinstance(raw_outputs, list):
        raise InvalidInput("the response has no 'outputs' list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(raw_outputs):
        array, used = decode_tensor(tensor, index, binary, offset)
        offset += used
        arrays[tensor["name"]] = array
    return arrays


@cache
def _variant_parameters(variant: str) -> dict[str, str]:
    """The response's `parameters` for a variant, built once (it is only serialized)."""
    return {"variant": variant}


def _split_body(body: bytes, header_length: str | bytes) -> tuple[Any, memoryview]:
    """The JSON header and the binary section of a binary tensor data request."""
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
    if n < 0 or n > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
        )
    try:
        return orjson.loads(body[:n]), memoryview(body)[n:]
    except orjson.JSONDecodeError as exc:
        raise not_json(exc) from None


def not_json(exc: orjson.JSONDecodeError) -> InvalidInput:
    return InvalidInput(f"the request body is not valid JSON: {exc}")


def decode_tensor(
    tensor: Any, index: int, binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """One input tensor as a numpy array (+ bytes consumed from the binary section)."""
    if type(tensor) is not dict:
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = tensor.get("name")
    if type(name) is not str or not name:
        raise InvalidInput(f"inputs[{index}] needs a non-empty string 'name'")
    shape = tensor.get("shape")
    if type(shape) is not list or not shape:
        raise bad_dims(name)
    for d in shape:
        if type(d) is not int or d < 0:
            raise bad_dims(name)
    datatype: Any = tensor.get("datatype")
    dtype = DTYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        dtype = tensor_dtype(name, datatype)  # the error naming the known datatypes
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        element_count(name, shape)  # the error
    if "parameters" in tensor:
        params = tensor["parameters"]
        if params is not None:
            raw = _binary_part(name, params, binary, offset)
            if raw is not None:
                return from_binary(name, raw, datatype, dtype, shape, count), len(raw)
    data = tensor.get("data", _MISSING)
    if type(data) is not list:
        if data is _MISSING:
            raise InvalidInput(f"input {name!r} has no 'data'")
        data = [data]
    elif data and type(data[0]) is list:
        data = _flatten(data)
    if len(data) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements but 'data' has {len(data)}"
        )
    if not count or datatype == "BYTES":
        return _bytes_or_empty(name, data, datatype, dtype, shape), 0
    code = _ARRAY_CODES.get(datatype)
    if code is not None and type(data[0]) is not bool:
        try:  # numbers that fit: C-typed at once (ints into ints, ints or floats into floats)
            return np.frombuffer(array(code, data), dtype).reshape(shape), 0
        except (TypeError, OverflowError):
            pass  # anything else (None, strings, floats for ints, out of range): the checks
    try:
        parsed = np.array(data)  # one C pass; its kind says what the JSON values were
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: {datatype} data is malformed: {exc}") from None
    parsed_dtype = parsed.dtype
    if parsed_dtype is not dtype:
        kinds = _KIND_OK[datatype]
        if parsed_dtype.kind not in kinds or parsed.ndim != 1:
            _wrong_values(name, datatype, dtype, data)  # the error
        if kinds == "iu":  # an integer type: check the range
            info = np.iinfo(dtype)
            if parsed.min() < info.min or parsed.max() > info.max:
                raise InvalidInput(
                    f"input {name!r}: values outside the {datatype} range [{info.min}, {info.max}]"
                )
        parsed = parsed.astype(dtype)  # astype without keywords: cheaper to call
    elif parsed.ndim != 1:
        _wrong_values(name, datatype, dtype, data)
    return parsed.reshape(shape), 0


def _binary_part(
    name: str, params: Any, binary: memoryview | None, offset: int
) -> memoryview | None:
    """The input's bytes of the binary section (None: it has no binary_data_size)."""
    if not isinstance(params, dict):
        raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if binary is None:
        raise InvalidInput(
            f"input {name!r} has binary_data_size but the request has no "
            "Inference-Header-Content-Length header"
        )
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise InvalidInput(f"input {name!r}: binary_data_size {size!r} exceeds the binary data")
    return binary[offset : offset + size]


def _bytes_or_empty(
    name: str, data: list[Any], datatype: str, dtype: np.dtype[Any], shape: list[int]
) -> np.ndarray:
    """A BYTES input (JSON strings as UTF-8), or an input with no elements."""
    if datatype != "BYTES":
        return np.empty(shape, dtype=dtype)
    arr = np.empty(len(data), dtype=object)
    for i, item in enumerate(data):
        if isinstance(item, str):
            arr[i] = item.encode("utf-8")
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {item!r:.40}")
    return arr.reshape(shape)


def _wrong_values(name: str, datatype: str, dtype: np.dtype[Any], data: list[Any]) -> None:
    """Raise the error naming the first JSON value a `datatype` input cannot hold."""
    ok: tuple[type, ...] = {"b": (bool,), "i": (int,), "u": (int,)}.get(dtype.kind, (int, float))
    bad = next((x for x in data if type(x) not in ok), data[0])
    raise InvalidInput(f"input {name!r}: {datatype} data cannot hold {bad!r:.40}")


def tensor_dtype(name: str, datatype: Any) -> np.dtype[Any]:
    """The numpy dtype of an input's OIP datatype, or InvalidInput listing the known ones."""
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r}; "
            f"expected one of {', '.join(DTYPES)}"
        )
    return dtype


def element_count(name: str, shape: list[int]) -> int:
    """The elements of a (checked, non-negative) shape, bounded so no request can ask for
    an absurd allocation."""
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    return count


def bad_dims(name: str) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: 'shape' must be a non-empty list of non-negative integers "
        "(the first dimension is the batch)"
    )


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def from_binary(
    name: str, raw: memoryview, datatype: str, dtype: np.dtype[Any], shape: list[int], count: int
) -> np.ndarray:
    if datatype != "BYTES":
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes, "
                f"got {len(raw)}"
            )
        return (
            np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            .astype(dtype, copy=False)
            .reshape(shape)
        )
    items: list[bytes] = []
    pos = 0
    n = len(raw)
    while pos < n:
        if pos + 4 > n:
            raise InvalidInput(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > n:
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        items.append(bytes(raw[pos : pos + length]))
        pos += length
    if len(items) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements, got {len(items)}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def to_json_data(arr: np.ndarray, datatype: str) -> Any:
    """Flat row-major data; orjson writes numeric arrays natively (NaN/Inf become null)."""
    if datatype == "BYTES":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in arr.ravel().tolist()
        ]
    flat = arr.ravel()  # always C-contiguous, as orjson needs
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat


def to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for x in arr.ravel().tolist():
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)
