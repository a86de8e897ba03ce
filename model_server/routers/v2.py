"""Open Inference Protocol v2 REST routes, the generate extension and /metrics.

Handlers are thin: read the body (bounded by MODEL_SERVER_MAX_REQUEST_BYTES), decode it
(codec.decode_generate for generate), call the dataplane, wrap its answer in a Response,
count the request (`RequestTracker.track`, model_server.metrics; a stream is counted until
its last event). Infer uses `RestInfer`, the same handler the fast path calls. Returning a
`Response` makes FastAPI skip `response_model` validation, so those models only document
the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_server.codec import decode_generate
from model_server.dataplane import DataPlane
from model_server.errors import ModelNotReady, ServerError
from model_server.metrics import Tracked
from model_server.routers import schemas as s
from model_server.routers.fastpath import RestInfer, body_too_large, check_declared_length
from msv_contract.env import LIVE_PATH, READY_PATH, READY_WAIT_MAX_SECONDS, READY_WAIT_PARAM

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": s.ErrorResponse, "description": "Invalid input (names the problem)"},
    404: {"model": s.ErrorResponse, "description": "Unknown model or version"},
    413: {"model": s.ErrorResponse, "description": "Request body too large"},
    503: {"model": s.ErrorResponse, "description": "Model not ready, or queue full (Retry-After)"},
    504: {"model": s.ErrorResponse, "description": "Request timed out"},
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "Server-sent events, one `data: {text_output}` per piece",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}
JSON = "application/json"
log = logging.getLogger(__name__)

router = APIRouter()


def _dp(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    check_declared_length(declared, limit)
    if declared is not None:
        return await request.body()
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# health and metadata ---------------------------------------------------------------------
@router.get(LIVE_PATH, response_model=s.ServerLive, tags=["health"])
async def live() -> Response:
    return Response(b'{"live":true}', media_type=JSON)


@router.get(READY_PATH, response_model=s.ServerReady, responses=ERRORS, tags=["health"])
async def ready(request: Request, wait: float = Query(
        0.0, alias=READY_WAIT_PARAM, ge=0, le=READY_WAIT_MAX_SECONDS,
        description="While the model loads, answer when it is ready or after this many seconds"
        )) -> Response:
    dp = _dp(request)
    if not dp.ready and wait > 0:
        await _until_loaded(dp, wait)
    if not dp.ready:
        dp.require_ready()  # raises ModelNotReady with the state and reason
        raise ModelNotReady("the model is not ready")
    startup = dp.startup
    if startup is not None and startup.ready_at is None:
        startup.ready_seen()  # the first ready answer ends the start (model_server.startup)
    return Response(b'{"ready":true}', media_type=JSON)


READY_WAIT_POLL_SECONDS = 0.02


async def _until_loaded(dp: DataPlane, wait: float) -> None:
    """Return once the model is no longer loading (ready, failed) or after ``wait`` seconds.
    A flag read every 20 ms: the load runs in a worker thread and the loop stays free."""
    deadline = asyncio.get_running_loop().time() + wait
    while dp.model.state == "loading" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(READY_WAIT_POLL_SECONDS)


@router.get("/v2", response_model=s.ServerMetadata, tags=["metadata"])
async def server_metadata(request: Request) -> dict[str, Any]:
    return _dp(request).server_metadata()


@router.get(
    "/v2/models/{model_name}", response_model=s.ModelMetadata, responses=ERRORS, tags=["metadata"]
)
async def model_metadata(model_name: str, request: Request) -> dict[str, Any]:
    return _dp(request).model_metadata(model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    response_model=s.ModelMetadata,
    responses=ERRORS,
    tags=["metadata"],
)
async def model_version_metadata(
    model_name: str, model_version: str, request: Request
) -> dict[str, Any]:
    return _dp(request).model_metadata(model_name, model_version)


async def _model_ready(request: Request, name: str, version: str | None) -> Response:
    dp = _dp(request)
    if not dp.model_ready(name, version):
        dp.require_ready()
    return Response(b'{"name":"%s","ready":true}' % name.encode(), media_type=JSON)


@router.get(
    "/v2/models/{model_name}/ready", response_model=s.ModelReady, responses=ERRORS, tags=["health"]
)
async def model_ready(model_name: str, request: Request) -> Response:
    return await _model_ready(request, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    response_model=s.ModelReady,
    responses=ERRORS,
    tags=["health"],
)
async def model_version_ready(model_name: str, model_version: str, request: Request) -> Response:
    return await _model_ready(request, model_name, model_version)


# inference (hot path) --------------------------------------------------------------------
async def _infer(request: Request, name: str, version: str | None) -> Response:
    """The same handler as the fast path (routers/fastpath.py), behind FastAPI's routing."""
    infer: RestInfer = request.app.state.rest_infer
    status, out, headers = await infer.answer(
        name, version, dict(request.scope["headers"]), request.receive
    )
    response = Response(out, status_code=status)
    response.raw_headers = headers
    return response


@router.post(
    "/v2/models/{model_name}/infer",
    response_model=s.InferenceResponse,
    responses=ERRORS,
    openapi_extra=s.body_ref(s.InferenceRequest),
    tags=["inference"],
)
async def infer(model_name: str, request: Request) -> Response:
    return await _infer(request, model_name, None)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    response_model=s.InferenceResponse,
    responses=ERRORS,
    openapi_extra=s.body_ref(s.InferenceRequest),
    tags=["inference"],
)
async def infer_version(model_name: str, model_version: str, request: Request) -> Response:
    return await _infer(request, model_name, model_version)


# generate extension ----------------------------------------------------------------------
async def _generate(request: Request, name: str, version: str | None, stream: bool) -> Response:
    state = request.app.state
    dp: DataPlane = state.dataplane
    with dp.metrics.tracker("generate_stream" if stream else "generate").track() as tracked:
        body = await read_body(request, state.max_request_bytes)
        generation = decode_generate(body, stream)
        head = {"model_name": dp.model_name, "model_version": dp.model_version}
        if stream:
            _, pieces = dp.stream(name, version, generation)
            # counted in flight until the last event is sent or the client goes away
            return StreamingResponse(
                _events(pieces, head, tracked.defer()), media_type="text/event-stream"
            )
        answer = await dp.generate(name, version, generation)
        return Response(orjson.dumps({**head, "text_output": answer.text}), media_type=JSON)


async def _events(
    pieces: AsyncIterator[str], head: dict[str, str], tracked: Tracked
) -> AsyncIterator[bytes]:
    """SSE `data: {text_output}` per piece; a failure mid-stream becomes an error event."""
    with tracked:
        try:
            async for piece in pieces:
                yield b"data: " + orjson.dumps({**head, "text_output": piece}) + b"\n\n"
        except ServerError as exc:
            tracked.status = exc.status_code
            yield b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n"
        except Exception as exc:
            tracked.status = 500
            log.exception("Generation failed")
            error = {"error": f"generation failed: {type(exc).__name__}"}
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        finally:
            await _aclose(pieces)


async def _aclose(pieces: AsyncIterator[str]) -> None:
    """Close the dataplane's stream at once (a client that went away stops the model)."""
    close = getattr(pieces, "aclose", None)
    if close is not None:
        await close()


@router.post(
    "/v2/models/{model_name}/generate",
    response_model=s.GenerateResponse,
    responses=ERRORS,
    openapi_extra=s.body_ref(s.GenerateRequest),
    tags=["generate"],
)
async def generate(model_name: str, request: Request) -> Response:
    return await _generate(request, model_name, None, stream=False)


@router.post(
    "/v2/models/{model_name}/generate_stream",
    responses=STREAM_RESPONSES,
    openapi_extra=s.body_ref(s.GenerateRequest),
    tags=["generate"],
)
async def generate_stream(model_name: str, request: Request) -> Response:
    return await _generate(request, model_name, None, stream=True)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/generate",
    response_model=s.GenerateResponse,
    responses=ERRORS,
    openapi_extra=s.body_ref(s.GenerateRequest),
    tags=["generate"],
)
async def generate_version(model_name: str, model_version: str, request: Request) -> Response:
    return await _generate(request, model_name, model_version, stream=False)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/generate_stream",
    responses=STREAM_RESPONSES,
    openapi_extra=s.body_ref(s.GenerateRequest),
    tags=["generate"],
)
async def generate_stream_version(
    model_name: str, model_version: str, request: Request
) -> Response:
    return await _generate(request, model_name, model_version, stream=True)


# metrics ---------------------------------------------------------------------------------
@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    tags=["metrics"],
)
async def metrics(request: Request) -> Response:
    registry = _dp(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
