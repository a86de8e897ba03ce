"""OpenAI-compatible routes for text-generation models: /v1/models, /v1/completions and
/v1/chat/completions (with server-sent-event streaming), over the same dataplane.

A body is decoded here into a model_server.generation.GenerationRequest, strictly: a
model name, a string prompt or a list of text messages, `stream` a boolean, and the
parameters the server implements (`max_tokens`/`max_completion_tokens`, `temperature`,
`top_p`, `seed`, `stop`); any other parameter with a non-default value answers 400 naming
it, rather than being ignored silently. The dataplane (`DataPlane.generate`/`stream`)
checks the model and the parameter values with the same rules as the generate extension,
applies the chat template and counts the usage; this module shapes the answer. Errors use
the OpenAI error shape (model_server.errors.openai_error_response). Requests are accounted
like every front end's (`RequestTracker.track`; endpoints `openai_completions`,
`openai_chat`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from model_server.dataplane import DataPlane
from model_server.errors import (
    InvalidInput,
    InvalidParameter,
    ServerError,
    openai_error_response,
)
from model_server.generation import ChatMessage, Generation, GenerationRequest
from model_server.metrics import Tracked
from model_server.routers import schemas as s
from model_server.routers.fastpath import read_body

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])
JSON = "application/json"

# accepted when absent or at these values (what "not used" means for each)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "functions": (None, []),
    "function_call": (None, "none"),
}
# decoded into the GenerationRequest (sampling values checked by the dataplane), or unused
_USED = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "seed", "stop", "stream", "stream_options", "user", "store",
         "metadata"}  # fmt: skip
_ROLES = {"system", "developer", "user", "assistant"}
_COMPLETIONS_MAX_TOKENS = 16  # the API's default for completions (chat: the server's)


def _dp(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


def _model_card(dp: DataPlane) -> dict[str, Any]:
    return {"id": dp.model_name, "object": "model", "created": 0, "owned_by": "modelservice"}


@router.get("/models")
async def list_models(request: Request) -> Response:
    body = {"object": "list", "data": [_model_card(_dp(request))]}
    return Response(orjson.dumps(body), media_type=JSON)


@router.get("/models/{model_id}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    dp = _dp(request)
    try:
        dp.check_model(model_id, None)
    except ServerError as exc:
        return openai_error_response(exc)
    return Response(orjson.dumps(_model_card(dp)), media_type=JSON)


def _decode(body: bytes, chat: bool) -> tuple[str, GenerationRequest, bool]:
    """(model, generation request, include usage in the stream) of a body, or a 4xx.

    Only the body's shape is checked here: an object, no parameter this server would have
    to ignore, the model a string, a prompt or text messages, `stream` a boolean."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvalidInput("the request body must be a JSON object")
    for key, value in request.items():
        if key in _USED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise InvalidParameter(key, f"parameter {key!r} is not supported by this server")
            continue
        raise InvalidParameter(key, f"unknown parameter {key!r}")
    model = request.get("model")
    if not isinstance(model, str):
        raise InvalidParameter("model", "'model' must be a string naming the served model")
    generation = GenerationRequest(
        temperature=request.get("temperature"),
        top_p=request.get("top_p"),
        seed=request.get("seed"),
        stop=request.get("stop"),
    )
    if chat:
        generation.messages = _messages(request.get("messages"))
        if "max_completion_tokens" in request:
            generation.max_tokens_param = "max_completion_tokens"
            generation.max_tokens = request["max_completion_tokens"]
        else:
            generation.max_tokens = request.get("max_tokens")
    else:
        generation.prompt = _prompt(request.get("prompt"))
        generation.max_tokens = request.get("max_tokens", _COMPLETIONS_MAX_TOKENS)
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParameter("stream", "'stream' must be a boolean")
    generation.stream = stream
    options = request.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise InvalidParameter("stream_options", "only stream_options.include_usage is supported")
    return model, generation, bool((options or {}).get("include_usage"))


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidParameter("prompt", "'prompt' must be a string (or a list of one string)")
    return value


def _messages(messages: Any) -> list[ChatMessage]:
    if not isinstance(messages, list) or not messages:
        raise InvalidParameter("messages", "'messages' must be a non-empty list")
    plain: list[ChatMessage] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidParameter(
                "messages", f"messages[{i}] needs a role: {', '.join(sorted(_ROLES))}"
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidParameter(
                        "messages", f"messages[{i}]: only text content is supported"
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise InvalidParameter("messages", f"messages[{i}].content must be a string")
        plain.append({"role": role, "content": content})
    return plain


async def _complete(request: Request, chat: bool) -> Response:
    dp = _dp(request)
    with dp.metrics.tracker("openai_chat" if chat else "openai_completions").track() as tracked:
        try:
            body = await read_body(request.receive, request.app.state.max_request_bytes)
            model, generation, include_usage = _decode(body, chat)
            reply = _Reply(dp.model_name, chat)
            if generation.stream:
                answer, pieces = dp.stream(model, None, generation)
                # counted in flight until the last event is sent or the client goes away
                events = reply.events(answer, pieces, include_usage, tracked.defer())
                return StreamingResponse(events, media_type="text/event-stream")
            answer = await dp.generate(model, None, generation)
            return Response(orjson.dumps(reply.whole(answer)), media_type=JSON)
        except ServerError as exc:
            tracked.status = exc.status_code
            return openai_error_response(exc, getattr(exc, "param", None))


class _Reply:
    """The response objects of one completion, whole or as stream chunks."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _object(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + ".chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def whole(self, answer: Generation) -> dict[str, Any]:
        text = answer.text
        usage = answer.usage()
        reason = answer.finish_reason(usage)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        out = self._object([choice], chunk=False)
        if usage is not None:
            out["usage"] = usage.as_dict()
        return out

    def _chunk(self, piece: str | None, reason: str | None, first: bool) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"content": piece} if piece is not None else {}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": reason}
        return b"data: " + orjson.dumps(self._object([choice], chunk=True)) + b"\n\n"

    async def events(
        self,
        answer: Generation,
        pieces: AsyncIterator[str],
        include_usage: bool,
        tracked: Tracked,
    ) -> AsyncIterator[bytes]:
        """SSE chunks, a last chunk with finish_reason, optional usage, then [DONE]."""
        with tracked:
            try:
                first = True
                async for piece in pieces:
                    yield self._chunk(piece, None, first=first)
                    first = False
                usage = answer.usage()
                yield self._chunk(None, answer.finish_reason(usage), first=first)
                if include_usage:
                    last = self._object([], chunk=True)
                    last["usage"] = None if usage is None else usage.as_dict()
                    yield b"data: " + orjson.dumps(last) + b"\n\n"
                yield b"data: [DONE]\n\n"
            except ServerError as exc:
                tracked.status = exc.status_code
                yield b"data: " + orjson.dumps({"error": {"message": exc.message}}) + b"\n\n"
            except Exception as exc:
                tracked.status = 500
                log.exception("Generation failed")
                error = {"error": {"message": f"generation failed: {type(exc).__name__}"}}
                yield b"data: " + orjson.dumps(error) + b"\n\n"
            finally:
                close = getattr(pieces, "aclose", None)
                if close is not None:
                    await close()  # a client that went away stops the generation at once


@router.post("/completions", openapi_extra=s.body_ref(s.CompletionRequest))
async def completions(request: Request) -> Response:
    return await _complete(request, chat=False)


@router.post("/chat/completions", openapi_extra=s.body_ref(s.ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _complete(request, chat=True)
