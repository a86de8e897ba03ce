"""The infer hot path as a raw ASGI handler in front of the FastAPI app.

`POST /v2/models/{name}/infer` and `/v2/models/{name}/versions/{version}/infer` are
answered here without FastAPI's route matching and request machinery, which cost more
than the whole protocol handling (docs/model-server.md, bench/serving_overhead.py). The
FastAPI routes for the same paths stay registered: they document the API in OpenAPI and
serve when the fast path is turned off (MODEL_SERVER_INFER_FAST_PATH=false), with the same
behaviour, since both call `DataPlane.infer` (tests/unit/server/test_protocol.py checks that
they answer alike). Errors are rendered by `model_server.errors.error_response`.
"""

from __future__ import annotations

import time
from typing import Any

from model_server.dataplane import DataPlane
from model_server.errors import InvalidInput, PayloadTooLarge, ServerError, error_response

_PREFIX = "/v2/models/"
_JSON_HEADER = (b"content-type", b"application/json")


def _match(path: str) -> tuple[str, str | None] | None:
    """(name, version) for an infer path, else None."""
    if not path.startswith(_PREFIX) or not path.endswith("/infer"):
        return None
    parts = path[len(_PREFIX) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class InferFastPath:
    """Handle infer requests directly; pass everything else to `app` (the FastAPI stack)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] != "POST" or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = _match(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        dp: DataPlane = state.dataplane
        hot = dp.metrics.hot
        perf_counter = time.perf_counter
        started = perf_counter()
        status = 200
        hot.inflight += 1
        try:
            length: bytes | None = None
            header_length: str | None = None
            for key, value in scope["headers"]:
                if key == b"content-length":
                    length = value
                elif key == b"inference-header-content-length":
                    header_length = value.decode("latin-1")
            body = await _read_body(receive, length, state.max_request_bytes)
            out, extra = await dp.infer(target[0], target[1], body, header_length)
            headers = [_JSON_HEADER, (b"content-length", b"%d" % len(out))]
            if extra:
                headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": out})
        except ServerError as exc:
            status = exc.status_code
            await error_response(exc)(scope, receive, send)
        except BaseException:
            status = 500
            raise
        finally:
            hot.inflight -= 1
            hot.observe("infer", status, perf_counter() - started)


async def _read_body(receive: Any, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length must be an integer") from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body of {size} bytes exceeds the limit of {limit} bytes "
                "(MODEL_SERVER_MAX_REQUEST_BYTES)"
            )
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {limit} bytes (MODEL_SERVER_MAX_REQUEST_BYTES)"
            )
        return body
    chunks = [body]
    total = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {limit} bytes (MODEL_SERVER_MAX_REQUEST_BYTES)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
