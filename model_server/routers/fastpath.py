"""The REST entry: every HTTP request passes authentication here, then infer takes a short cut.

`RestEntry` is the ASGI `__call__` of the app class. For each HTTP request it first applies
the bearer-token check (model_server.auth) — so no route, fast or not, can skip it — and
then answers `POST /v2/models/{name}[/versions/{v}]/infer` itself with `RestInfer`, without
FastAPI's route matching and request machinery, which cost more than the whole protocol
handling (docs/model-server.md, bench/serving_overhead.py). Everything else goes to
`handle`, the normal FastAPI/Starlette stack.

The FastAPI routes for infer stay registered and call the same `RestInfer.answer`: they
document the API in OpenAPI and serve when the short cut is off
(MODEL_SERVER_INFER_FAST_PATH=false) — or when anyone adds an ASGI middleware to the app,
since the short cut would bypass it: `add_middleware` turns the short cut off.

`RestInfer` is the one infer handler of the REST front end: bounded body read, codec
decode, the dataplane's infer (`admit`, then `run_now`/`run_queued`: `DataPlane.run`
without its coroutine), codec encode, accounting (`RequestTracker.track`,
model_server.metrics) and the error body (model_server.errors).
"""

from __future__ import annotations

import logging
from typing import Any

from model_server.auth import TokenAuth
from model_server.codec import decode_json, encode_json
from model_server.dataplane import DataPlane
from model_server.errors import InvalidInput, PayloadTooLarge, ServerError, error_body
from model_server.mirror import AUTHORIZATION

log = logging.getLogger(__name__)

_PREFIX = "/v2/models/"
_JSON_HEADER = (b"content-type", b"application/json")
Headers = list[tuple[bytes, bytes]]


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


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole ASGI request body, or PayloadTooLarge past `limit` bytes."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body
    return await read_rest(receive, message, limit)


async def read_rest(receive: Any, message: dict[str, Any], limit: int) -> bytes:
    """The body from its first ASGI `message` on (one more coroutine only when it is needed)."""
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


class RestInfer:
    """OIP v2 REST infer: request bytes in, (status, body, headers) out; never raises ours."""

    __slots__ = ("_digits", "_dp", "_limit", "_tracker")

    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self._dp = dataplane
        self._limit = max_request_bytes
        self._digits = len(str(max_request_bytes))  # fewer digits: a length under the limit
        self._tracker = dataplane.metrics.tracker("infer")

    async def answer(
        self, name: str, version: str | None, headers: dict[bytes, bytes], receive: Any
    ) -> tuple[int, bytes, Headers]:
        with self._tracker.track() as tracked:
            try:
                dp = self._dp
                batcher = dp.admit(name, version)  # unknown model or not ready: before parsing
                limit = self._limit
                declared = headers.get(b"content-length")
                if declared is not None and not (
                    declared.isdigit() and len(declared) < self._digits
                ):
                    check_declared_length(declared, limit)  # over the limit, or not a number
                message = await receive()  # inline: the whole body, nearly always
                body: bytes = message.get("body", b"")
                if message.get("more_body", False) or len(body) > limit:
                    body = await read_rest(receive, message, limit)
                request = decode_json(body, headers.get(b"inference-header-content-length"))
                outputs = dp.run_now(batcher, request)  # `dp.run` without its coroutine
                if outputs is None:
                    outputs = await dp.run_queued(batcher, request)
                out, extra = encode_json(
                    dp.model_name, dp.model_version, outputs, request, dp.variant
                )
                response_headers = [_JSON_HEADER, (b"content-length", b"%d" % len(out))]
                if extra:
                    response_headers.extend(
                        (k.lower().encode(), v.encode()) for k, v in extra.items()
                    )
                return 200, out, response_headers
            except ServerError as exc:
                status = tracked.status = exc.status_code
                out = error_body(exc)
                response_headers = [_JSON_HEADER, (b"content-length", b"%d" % len(out))]
                for key, value in (exc.headers() or {}).items():
                    response_headers.append((key.lower().encode(), value.encode()))
                return status, out, response_headers


class RestEntry:
    """ASGI entry of the app class (a mixin placed before FastAPI): auth, then infer, then FastAPI.

    Every other request, and infer too until `enable_fast_path` is called, go to `handle`,
    which the app class implements as the normal FastAPI/Starlette stack. Being the app's
    own `__call__` rather than a wrapped handler saves a coroutine per request.
    """

    _auth: TokenAuth | None = None
    _infer: RestInfer | None = None

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    def enable_auth(self, auth: TokenAuth) -> None:
        self._auth = auth

    def enable_fast_path(self, infer: RestInfer, model_name: str, model_version: str) -> None:
        if getattr(self, "user_middleware", None):
            log.warning("The infer fast path is off: the app has ASGI middleware it would skip")
            return
        self._infer = infer
        self._paths: dict[str, tuple[str, str | None]] = {
            f"{_PREFIX}{model_name}/infer": (model_name, None),
            f"{_PREFIX}{model_name}/versions/{model_version}/infer": (model_name, model_version),
        }

    def add_middleware(self, *args: Any, **kwargs: Any) -> None:
        """Added middleware must see every request: the infer short cut goes."""
        self._infer = None
        super().add_middleware(*args, **kwargs)  # type: ignore[misc]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.handle(scope, receive, send)
            return
        auth = self._auth
        if auth is not None and scope["path"] not in auth.exempt:
            authorization = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    authorization = value
                    break
            if not auth.valid(authorization):
                body, headers = auth.asgi_denial(authorization)
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            AUTHORIZATION.set(authorization)  # this request's task only: for the mirror
        infer = self._infer
        if infer is not None and scope["method"] == "POST":
            path = scope["path"]
            target = self._paths.get(path) or _match(path)
            if target is not None:
                status, out, headers = await infer.answer(
                    target[0], target[1], dict(scope["headers"]), receive
                )
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": out})
                return
        await self.handle(scope, receive, send)
