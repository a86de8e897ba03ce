"""The model server's error vocabulary: one exception per HTTP status and one handler each.

This is the only place where HTTP status codes for failures are decided (and, through
`GRPC_CODES`, the gRPC status codes of the same failures). Every layer below
the routers (dataplane, batcher, backends) raises one of these classes with a message that
names the problem; the handlers registered by `install_handlers` turn them into
`{"error": "<message>"}` bodies, which is what Open Inference Protocol v2 clients (for
example `tritonclient.http`) read. A client's mistake is always a 4xx; only a genuine
server fault becomes a 500.

`ModelLoadError` is the one error that never answers a request: backends and
model_server.optimize raise it while a model loads (the dataplane turns it into the 503
reason; `model-server serve` exits 4 with it). It lives here, at the bottom of the server's
layers, so both can raise it without `optimize` importing `backends`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response


class ServerError(Exception):
    """Base class: carries the HTTP status and a message for the client."""

    status_code: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str] | None:
        """Extra response headers (Retry-After for load shedding)."""
        return None


class InvalidInput(ServerError):
    """400: malformed body, wrong shape, datatype or name, missing input."""

    status_code = 400


class InvalidParameter(InvalidInput):
    """400 for one named request parameter (OpenAI's error `param`; the message names it too)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(ServerError):
    """404: the model name or version is not served by this process."""

    status_code = 404


class PayloadTooLarge(ServerError):
    """413: the request body exceeds MODEL_SERVER_MAX_REQUEST_BYTES."""

    status_code = 413


class InternalError(ServerError):
    """500: the model failed on input it accepted (a server fault, logged with a traceback)."""

    status_code = 500


class ModelNotReady(ServerError):
    """503: the model is still loading or failed to load (the message says which and why)."""

    status_code = 503


class ServerBusy(ServerError):
    """503 + Retry-After: the batching queue is full; the client should retry later."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Timeout(ServerError):
    """504: the request did not finish within MODEL_SERVER_REQUEST_TIMEOUT_S."""

    status_code = 504


class ModelLoadError(Exception):
    """The model could not be loaded: missing files, corrupt weights, unsupported format."""


ERROR_CLASSES: tuple[type[ServerError], ...] = (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    InternalError,
    ModelNotReady,
    ServerBusy,
    Timeout,
)


def error_body(exc: ServerError) -> bytes:
    """`{"error": message}`: what OIP v2 clients read from a failed request."""
    return orjson.dumps({"error": exc.message})


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception answers with (500 for anything not ours)."""
    return exc.status_code if isinstance(exc, ServerError) else 500


GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""The gRPC status code (a `grpc.StatusCode` name) of each HTTP status, for the gRPC front end."""


OPENAI_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "server_busy",
    504: "timeout",
}


def openai_error_response(exc: ServerError, param: str | None = None) -> Response:
    """The same failure in the OpenAI API's error shape, for the /v1 routes."""
    error = {
        "message": exc.message,
        "type": OPENAI_ERROR_TYPES.get(exc.status_code, "server_error"),
        "param": param,
        "code": None,
    }
    return Response(
        orjson.dumps({"error": error}),
        status_code=exc.status_code,
        headers=exc.headers(),
        media_type="application/json",
    )


def error_response(exc: ServerError) -> Response:
    """The response for one of our exceptions: `{"error": message}` with its status."""
    return Response(
        error_body(exc),
        status_code=exc.status_code,
        headers=exc.headers(),
        media_type="application/json",
    )


async def _server_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServerError)
    return error_response(exc)


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's request validation (path/query parameters) → 400 with a precise message."""
    errors: list[Any] = getattr(exc, "errors", lambda: [])()
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    message = "; ".join(parts) or "invalid request"
    return error_response(InvalidInput(message))


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (unknown route 404, wrong method 405) in our body format."""
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", "") or "error")
    headers = getattr(exc, "headers", None)
    return Response(
        orjson.dumps({"error": detail}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def install_handlers(app: Any) -> None:
    """Register one handler per exception class (plus framework validation) on `app`."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    for cls in ERROR_CLASSES:
        app.add_exception_handler(cls, _server_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
