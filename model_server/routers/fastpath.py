"""The infer hot path as a raw ASGI handler in front of the FastAPI app.

`POST /v2/models/{name}/infer` and `/v2/models/{name}/versions/{version}/infer` are
answered here without FastAPI's route matching and request machinery, which cost more
than the whole protocol handling (docs/model-server.md, bench/serving_overhead.py). The
FastAPI routes for the same paths stay registered: they document the API in OpenAPI and
serve when the fast path is turned off (MODEL_SERVER_INFER_FAST_PATH=false), with the same
behaviour, since both call `DataPlane.infer` (tests/unit/server/test_protocol.py checks that
they answer alike). Errors are rendered by `model_server.errors.error_response`.

Everything a request needs is resolved once, when the handler is built: the dataplane, the
body limit, the metrics of the infer endpoint and the two paths of the served model (a dict
lookup; other model names still reach the dataplane, which answers 404 with the reason).
Reading them from Starlette's `app.state` instead costs an AttributeError per read.
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


def check_declared_length(declared: bytes | str | None, limit: int) -> None:
    """Reject a body whose Content-Length is not a number or exceeds `limit` before reading."""
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise InvalidInput("Content-Length must be an integer") from None
    if size > limit:
        raise PayloadTooLarge(
            f"request body of {size} bytes exceeds the limit of {limit} bytes "
            "(MODEL_SERVER_MAX_REQUEST_BYTES)"
        )


def body_too_large(limit: int) -> PayloadTooLarge:
    """The error for a body without (or beyond) its Content-Length that outgrew `limit`."""
    return PayloadTooLarge(
        f"request body exceeds the limit of {limit} bytes (MODEL_SERVER_MAX_REQUEST_BYTES)"
    )


class InferFastPath:
    """ASGI entry of the app class (a mixin placed before FastAPI): answers infer itself.

    Every other request, and all of them until `enable_fast_path` is called, go to
    `handle`, which the app class implements as the normal FastAPI/Starlette stack. Being
    the app's own `__call__` rather than a wrapped handler saves a coroutine per request.
    """

    _fast = False

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    def enable_fast_path(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self._dataplane = dataplane
        self._limit = max_request_bytes
        self._hot = dataplane.metrics.hot
        self._stats = self._hot.endpoint("infer")
        name, version = dataplane.model_name, dataplane.model_version
        self._paths: dict[str, tuple[str, str | None]] = {
            f"{_PREFIX}{name}/infer": (name, None),
            f"{_PREFIX}{name}/versions/{version}/infer": (name, version),
        }
        self._fast = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._fast:
            await self.handle(scope, receive, send)
            return
        path = scope["path"]
        target = self._paths.get(path)
        if target is None:
            target = _match(path)
        if target is None or scope["method"] != "POST":
            await self.handle(scope, receive, send)
            return
        hot = self._hot
        perf_counter = time.perf_counter
        started = perf_counter()
        status = 200
        hot.inflight += 1
        try:
            headers = dict(scope["headers"])
            limit = self._limit
            check_declared_length(headers.get(b"content-length"), limit)
            message = await receive()
            body: bytes = message.get("body", b"")
            if len(body) > limit or message.get("more_body", False):
                body = await _read_rest(receive, message, limit)
            header_length = headers.get(b"inference-header-content-length")
            out, extra = await self._dataplane.infer(
                target[0],
                target[1],
                body,
                None if header_length is None else header_length.decode("latin-1"),
            )
            response_headers = [_JSON_HEADER, (b"content-length", b"%d" % len(out))]
            if extra:
                response_headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
            await send({"type": "http.response.start", "status": 200, "headers": response_headers})
            await send({"type": "http.response.body", "body": out})
        except ServerError as exc:
            status = exc.status_code
            await error_response(exc)(scope, receive, send)
        except BaseException:
            status = 500
            raise
        finally:
            hot.inflight -= 1
            self._stats.observe_request(status, perf_counter() - started)


async def _read_rest(receive: Any, message: dict[str, Any], limit: int) -> bytes:
    """The whole body from its first `message` on, or PayloadTooLarge past `limit` bytes."""
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise body_too_large(limit)
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
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
