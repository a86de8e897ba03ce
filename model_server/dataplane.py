"""Protocol-independent serving logic: model state, tensor decoding/encoding, validation.

The routers hand the dataplane raw request bytes and path parameters; it returns response
bytes (or raises an exception from model_server.errors). It knows the Open Inference
Protocol v2 JSON tensor format, including the binary tensor data extension that
`tritonclient.http` uses by default, but nothing of HTTP frameworks. Bodies are parsed with
orjson and validated by hand here, which keeps pydantic off the hot path (the pydantic
models in routers/schemas.py exist for the OpenAPI document only).

The model loads in a worker thread (`load`); until it succeeds `ready` is False and every
inference answers 503 with the state and, after a failure, the reason.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import orjson

from model_server.backends.base import Backend, BackendInfo, LoadOptions, TensorSpec
from model_server.batching import Batcher
from model_server.errors import InternalError, InvalidInput, ModelNotFound, ModelNotReady

log = logging.getLogger(__name__)

SERVER_NAME = "modelservice"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "generate", "metrics"]

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
# numpy kinds a JSON array may parse to, per datatype (bool → "b", ints → "i"/"u", …)
_KIND_OK: dict[str, str] = {
    name: {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(dt.kind, "")
    for name, dt in DTYPES.items()
}
_MISSING = object()
PLATFORMS = {
    "transformers": "pytorch_transformers",
    "torchscript": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
}
HEADER_LENGTH = "inference-header-content-length"


_DTYPE_NAMES: dict[np.dtype[Any], str] = {dt: name for name, dt in DTYPES.items()}
_NO_OUTPUTS: frozenset[str] = frozenset()  # no output asked for in binary


def _oip_datatype(dtype: np.dtype[Any]) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is not None:
        return name
    if dtype.kind in "OUS":
        return "BYTES"
    if dtype.byteorder in "<>" and dtype.newbyteorder("=") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.newbyteorder("=")]
    raise InternalError(f"the model produced an unsupported dtype {dtype}")


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
        self._input_checks: dict[str, _InputCheck] = {}
        self._output_names: set[str] = set()

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
        self.model.backend = backend
        self.model.info = info
        self.model.inputs = inputs
        self.model.outputs = outputs
        self._input_checks = {s.name: _InputCheck(s) for s in inputs}
        self._output_names = {s.name for s in outputs}
        if self.metrics is not None:
            self.metrics.load_seconds.set(self.model.load_seconds)
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

    # health and metadata -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model.state == "ready"

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
                    "load_seconds": round(self.model.load_seconds, 3),
                    "supports_generate": bool(
                        self.model.backend and self.model.backend.supports_generate()
                    ),
                }
            )
            for key, value in info.extra.items():
                params.setdefault(key, value)
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
    async def infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        header_length: str | None = None,
    ) -> tuple[bytes, dict[str, str] | None]:
        """Run one OIP v2 inference request; returns the response body and extra headers."""
        self.check_model(name, version)
        batcher = self.require_ready()
        if header_length is None:
            binary = None
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise _not_json(exc) from None
        else:
            request, binary = _split_body(body, header_length)
        inputs, rows, requested, binary_out, request_id = self._decode(request, binary)
        outputs = batcher.run_now(inputs, rows)
        if outputs is None:
            outputs = await batcher.enqueue(inputs)
        return self._encode(outputs, requested, binary_out, request_id)

    def _decode(
        self, request: Any, binary: memoryview | None
    ) -> tuple[dict[str, np.ndarray], int, list[str] | None, AbstractSet[str], Any]:
        """(inputs, batch rows, requested outputs or None, binary outputs, request id)."""
        if not isinstance(request, dict):
            raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
        raw_inputs = request.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise InvalidInput("'inputs' must be a non-empty list of tensors")
        request_id = request.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInput("'id' must be a string")
        req_params = request.get("parameters")
        if req_params is not None and not isinstance(req_params, dict):
            raise InvalidInput("'parameters' must be an object")
        checks = self._input_checks
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        batch = -1
        for index, tensor in enumerate(raw_inputs):
            array, used = _decode_tensor(tensor, index, binary, offset)
            offset += used
            name = tensor["name"]
            if name in arrays:
                raise InvalidInput(f"input {name!r} appears twice")
            check = checks.get(name)
            if check is None:
                known = ", ".join(sorted(checks)) or "none"
                raise InvalidInput(f"unknown input {name!r}; the model takes: {known}")
            shape = array.shape
            check.check(name, tensor["datatype"], shape)
            if batch != shape[0]:
                if batch >= 0:
                    raise InvalidInput(
                        f"input {name!r} has batch size {shape[0]} but earlier inputs have {batch}"
                    )
                batch = shape[0]
            arrays[name] = array
        if binary is not None and offset != len(binary):
            raise InvalidInput(
                f"binary data has {len(binary)} bytes but the inputs' "
                f"binary_data_size add up to {offset}"
            )
        if len(arrays) != len(checks):  # names are known and unique: so some are missing
            missing = [n for n in checks if n not in arrays]
            raise InvalidInput(f"missing input(s): {', '.join(missing)}")
        if req_params is None and "outputs" not in request:
            return arrays, batch, None, _NO_OUTPUTS, request_id
        requested: list[str] | None = None
        binary_out: AbstractSet[str] = _NO_OUTPUTS
        all_binary = bool(req_params and req_params.get("binary_data_output") is True)
        raw_outputs = request.get("outputs")
        if raw_outputs is not None:
            if not isinstance(raw_outputs, list):
                raise InvalidInput("'outputs' must be a list of {'name': ...} objects")
            requested = []
            chosen: set[str] = set()
            for item in raw_outputs:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise InvalidInput("each requested output must be an object with a 'name'")
                out_name = item["name"]
                if out_name not in self._output_names:
                    known = ", ".join(sorted(self._output_names))
                    raise InvalidInput(f"unknown output {out_name!r}; the model produces: {known}")
                requested.append(out_name)
                params = item.get("parameters")
                if params is not None and not isinstance(params, dict):
                    raise InvalidInput(f"parameters of output {out_name!r} must be an object")
                if (params and params.get("binary_data") is True) or all_binary:
                    chosen.add(out_name)
            binary_out = chosen
        elif all_binary:
            binary_out = self._output_names
        return arrays, batch, requested, binary_out, request_id

    def _encode(
        self,
        outputs: Mapping[str, np.ndarray],
        requested: list[str] | None,
        binary_out: AbstractSet[str],
        request_id: Any,
    ) -> tuple[bytes, dict[str, str] | None]:
        out_json: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        for out_name in outputs if requested is None else requested:
            if out_name not in outputs:
                raise InvalidInput(f"the model did not produce output {out_name!r}")
            arr = outputs[out_name]
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            datatype = _DTYPE_NAMES.get(arr.dtype) or _oip_datatype(arr.dtype)
            entry: dict[str, Any] = {
                "name": out_name,
                "datatype": datatype,
                "shape": list(arr.shape),
            }
            if out_name in binary_out:
                raw = _to_binary(arr, datatype)
                chunks.append(raw)
                entry["parameters"] = {"binary_data_size": len(raw)}
            else:
                entry["data"] = _to_json_data(arr, datatype)
            out_json.append(entry)
        response: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": out_json,
        }
        if request_id is not None:
            response["id"] = request_id
        header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        if not chunks:
            return header, None
        return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}

    # generate extension ------------------------------------------------------------------
    def _generate_args(
        self, name: str, version: str | None, body: bytes
    ) -> tuple[Backend, str, dict[str, Any]]:
        self.check_model(name, version)
        self.require_ready()
        backend = self.model.backend
        assert backend is not None
        if not backend.supports_generate():
            raise InvalidInput(
                f"model {name!r} does not support generate (framework {self.framework}); use /infer"
            )
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _not_json(exc) from None
        if not isinstance(request, dict):
            raise InvalidInput("the request body must be a JSON object with 'text_input'")
        prompt = request.get("text_input")
        if not isinstance(prompt, str):
            raise InvalidInput("'text_input' must be a string")
        params = request.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidInput("'parameters' must be an object")
        # Triton's generate extension also accepts parameters at the top level.
        merged = {k: v for k, v in request.items() if k not in ("text_input", "parameters", "id")}
        merged.update(params)
        merged.pop("stream", None)
        return backend, prompt, merged

    async def generate(self, name: str, version: str | None, body: bytes) -> bytes:
        backend, prompt, params = self._generate_args(name, version, body)
        assert self.batcher is not None
        text = await self.batcher.run_exclusive(_join_generate, backend, prompt, params)
        return orjson.dumps(
            {
                "model_name": self.model_name,
                "model_version": self.model_version,
                "text_output": text,
            }
        )

    def open_stream(self, name: str, version: str | None, body: bytes) -> AsyncIterator[bytes]:
        """Validate now (errors become HTTP statuses), then stream SSE events."""
        backend, prompt, params = self._generate_args(name, version, body)
        return self._stream(backend, prompt, params)

    async def _stream(
        self, backend: Backend, prompt: str, params: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        batcher = self.batcher
        assert batcher is not None
        sentinel = object()
        try:
            pieces: Iterator[str] = await batcher.run_exclusive(backend.generate, prompt, params)
            while True:
                piece = await batcher.run_exclusive(next, pieces, sentinel)
                if piece is sentinel:
                    break
                event = {
                    "model_name": self.model_name,
                    "model_version": self.model_version,
                    "text_output": piece,
                }
                yield b"data: " + orjson.dumps(event) + b"\n\n"
        except InvalidInput as exc:
            yield b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n"
        except Exception as exc:
            log.exception("Generation failed")
            yield (
                b"data: "
                + orjson.dumps({"error": f"generation failed: {type(exc).__name__}"})
                + b"\n\n"
            )


def _join_generate(backend: Backend, prompt: str, params: Mapping[str, Any]) -> str:
    return "".join(backend.generate(prompt, params))


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


# wire format helpers ---------------------------------------------------------------------
def _split_body(body: bytes, header_length: str) -> tuple[Any, memoryview]:
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
        raise _not_json(exc) from None


def _not_json(exc: orjson.JSONDecodeError) -> InvalidInput:
    return InvalidInput(f"the request body is not valid JSON: {exc}")


def _decode_tensor(
    tensor: Any, index: int, binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """One input tensor as a numpy array (+ bytes consumed from the binary section)."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] needs a non-empty string 'name'")
    shape = tensor.get("shape")
    if type(shape) is not list or not shape:
        raise _bad_dims(name)
    for d in shape:
        if type(d) is not int or d < 0:
            raise _bad_dims(name)
    datatype: Any = tensor.get("datatype")
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r}; "
            f"expected one of {', '.join(DTYPES)}"
        )
    count = math.prod(shape)
    if count > 1 << 31:
        raise InvalidInput(f"input {name!r}: shape {shape} is too large")
    params = tensor.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if binary is None:
                raise InvalidInput(
                    f"input {name!r} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} exceeds the binary data"
                )
            raw = binary[offset : offset + size]
            return _from_binary(name, raw, datatype, dtype, shape, count), size
    data = tensor.get("data", _MISSING)
    if data is _MISSING:
        raise InvalidInput(f"input {name!r} has no 'data'")
    if not isinstance(data, list):
        data = [data]
    if data and isinstance(data[0], list):
        data = _flatten(data)
    if len(data) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} elements but 'data' has {len(data)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        for i, item in enumerate(data):
            if isinstance(item, str):
                arr[i] = item.encode("utf-8")
            else:
                raise InvalidInput(f"input {name!r}: BYTES data must be strings, got {item!r:.40}")
        return arr.reshape(shape), 0
    if not data:
        return np.empty(shape, dtype=dtype), 0
    try:
        parsed = np.array(data)  # one C pass; its kind says what the JSON values were
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: {datatype} data is malformed: {exc}") from None
    kinds = _KIND_OK[datatype]
    if parsed.ndim != 1 or parsed.dtype.kind not in kinds:
        ok: tuple[type, ...] = {"b": (bool,), "i": (int,), "u": (int,)}.get(
            dtype.kind, (int, float)
        )
        bad = next((x for x in data if type(x) not in ok), data[0])
        raise InvalidInput(f"input {name!r}: {datatype} data cannot hold {bad!r:.40}")
    if kinds == "iu" and parsed.dtype != dtype:  # an integer type: check the range
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise InvalidInput(
                f"input {name!r}: values outside the {datatype} range [{info.min}, {info.max}]"
            )
    return parsed.astype(dtype, copy=False).reshape(shape), 0


def _bad_dims(name: str) -> InvalidInput:
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


def _from_binary(
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


class _InputCheck:
    """What one model input accepts, prepared at load so a request costs a few comparisons."""

    __slots__ = ("datatype", "fixed", "rank", "shape", "squeezed")

    def __init__(self, spec: TensorSpec) -> None:
        self.datatype = spec.datatype
        self.shape = tuple(spec.shape)
        self.rank = len(self.shape)
        # (axis, size) of the non-batch axes with a fixed size
        self.fixed = tuple((i, d) for i, d in enumerate(self.shape) if i and d >= 0)
        self.squeezed = tuple(d for d in self.shape[1:] if d != 1)

    def check(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        if datatype != self.datatype:
            raise InvalidInput(f"input {name!r} must be {self.datatype}, got {datatype}")
        if len(shape) == self.rank:
            for axis, size in self.fixed:
                if shape[axis] != size:
                    raise self._bad_shape(name, shape)
        # [batch] and [batch, 1] are interchangeable for per-row scalars such as strings.
        elif tuple(d for d in shape[1:] if d != 1) != self.squeezed:
            raise self._bad_shape(name, shape)

    def _bad_shape(self, name: str, shape: tuple[int, ...]) -> InvalidInput:
        return InvalidInput(
            f"input {name!r} must have shape {list(self.shape)} (-1 = any), got {list(shape)}"
        )


def _to_json_data(arr: np.ndarray, datatype: str) -> Any:
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


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for x in arr.ravel().tolist():
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)
